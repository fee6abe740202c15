"""Crash-safe checkpoints: ``output_dir/checkpoint-<step>/`` written atomically, verified before resuming.

Every rank writes the training state into a temp folder (each rank its own RNG files); the main process then
writes ``manifest.json`` (size and sha256 of every file) and renames the folder into place. A crash leaves at
worst a ``tmp-checkpoint-*`` folder, which is ignored and cleaned up by the next save. Resuming takes the newest
folder whose manifest matches its files; a corrupt one is reported and skipped.

Formats: single process and DDP (``distributed_type`` NO, MULTI_CPU, MULTI_GPU) write safetensors and JSON only,
no pickle (``state_files``: model, optimizer, scheduler, RNG states). FSDP and DeepSpeed (and the other engines)
keep ``accelerator.save_state``/``load_state``: their sharded formats belong to them, and their optimizer,
scheduler and RNG files are torch.save pickles that accelerate reloads with ``weights_only=True``.
"""

import hashlib
import json
import logging
import os
import re
import shutil

from .state_files import is_unsharded, load_training_state, save_training_state

logger = logging.getLogger(__name__)

PREFIX = "checkpoint-"
TMP_PREFIX = "tmp-checkpoint-"
MANIFEST = "manifest.json"


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every ``checkpoint-<step>`` folder, oldest first (valid or not)."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{PREFIX}(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names if name != MANIFEST)


def write_manifest(folder: str, state: dict) -> None:
    """Sizes and hashes of every file, plus the loop's counters ``state`` (JSON: nothing here is unpickled)."""
    files = {rel: {"size": os.path.getsize(os.path.join(folder, rel)), "sha256": _sha256(os.path.join(folder, rel))}
             for rel in _files(folder)}
    path = os.path.join(folder, MANIFEST)
    with open(path, "w") as f:
        json.dump({**state, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(folder: str) -> str | None:
    """None when every file matches the manifest, else the reason the checkpoint cannot be used."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            manifest = json.load(f)
        expected = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({err})"
    if sorted(expected) != _files(folder):
        return "the files differ from the manifest"
    for rel, meta in expected.items():
        path = os.path.join(folder, rel)
        if os.path.getsize(path) != meta["size"] or _sha256(path) != meta["sha256"]:
            return f"{rel} does not match its size or sha256 in the manifest"
    return None


def latest_valid_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint that passes ``verify_checkpoint``; warns about each newer one that fails."""
    for _, path in reversed(list_checkpoints(output_dir)):
        reason = verify_checkpoint(path)
        if reason is None:
            return path
        logger.warning("checkpoint %s is corrupt (%s); falling back to an older one", path, reason)
    return None


def read_state(folder: str) -> dict:
    """The counters ``save_checkpoint`` stored in a (verified) checkpoint's manifest."""
    with open(os.path.join(folder, MANIFEST)) as f:
        return {k: v for k, v in json.load(f).items() if k != "files"}


def save_checkpoint(accelerator, output_dir: str, state: dict, total_limit: int | None = None) -> str:
    """Save the full training state at ``state["step"]``; call on every rank. Returns the final folder.

    The loop's own counters go in the JSON manifest rather than through ``register_for_checkpointing``, whose
    objects accelerate would pickle.
    """
    step = state["step"]
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}{step}")
    if accelerator.is_main_process:
        _remove_stale_temps(output_dir)
        os.makedirs(output_dir, exist_ok=True)
    accelerator.wait_for_everyone()
    if is_unsharded(accelerator):
        os.makedirs(tmp, exist_ok=True)
        save_training_state(accelerator, tmp)
    else:
        accelerator.save_state(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(tmp, state)
        if os.path.isdir(final):  # re-saving a step (e.g. after a resume): replace the old copy
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(output_dir)
        if total_limit:
            rotate_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: str) -> dict:
    """Restore the training state ``save_checkpoint`` wrote into the prepared objects; returns the counters
    from the manifest. Call on every rank, with a folder ``latest_valid_checkpoint`` chose."""
    if is_unsharded(accelerator):
        load_training_state(accelerator, folder)
    else:
        accelerator.load_state(folder)
    return read_state(folder)


def rotate_checkpoints(output_dir: str, total_limit: int) -> None:
    """Keep the newest ``total_limit`` checkpoints."""
    for _, path in list_checkpoints(output_dir)[:-total_limit]:
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale_temps(output_dir: str) -> None:
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
