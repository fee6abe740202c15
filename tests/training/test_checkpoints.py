"""Atomic checkpoints with manifests, rotation, and fallback from a corrupt newest checkpoint."""

import json
import os

import torch

from modeling_minigpt.training.checkpoints import (
    latest_valid_checkpoint,
    list_checkpoints,
    read_state,
    save_checkpoint,
    verify_checkpoint,
)


def _prepared(fresh):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _step(model, optimizer):
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_rotate_verify_and_fall_back(tmp_path, fresh_accelerate, caplog):
    accelerator, model, optimizer = _prepared(fresh_accelerate)
    weights = {}
    for step in (1, 2, 3):
        _step(model, optimizer)
        weights[step] = model.weight.detach().clone()
        save_checkpoint(accelerator, str(tmp_path), {"step": step, "tokens": 10 * step}, total_limit=2)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2, 3]
    newest = tmp_path / "checkpoint-3"
    manifest = json.loads((newest / "manifest.json").read_text())
    assert manifest["step"] == 3 and "model.safetensors" in manifest["files"]
    assert verify_checkpoint(str(newest)) is None
    assert read_state(str(newest)) == {"step": 3, "tokens": 30}
    assert not list(newest.glob("custom_checkpoint_*")), "nothing that accelerate reloads with a full unpickler"

    with open(newest / "model.safetensors", "r+b") as f:  # a torn write: same name, fewer bytes
        f.truncate(os.path.getsize(newest / "model.safetensors") // 2)
    assert "model.safetensors" in verify_checkpoint(str(newest))
    os.makedirs(tmp_path / "tmp-checkpoint-4")  # a crash mid-save leaves a temp folder: ignored
    with caplog.at_level("WARNING", logger="modeling_minigpt.training.checkpoints"):
        chosen = latest_valid_checkpoint(str(tmp_path))
    assert chosen == str(tmp_path / "checkpoint-2")
    assert "checkpoint-3 is corrupt" in caplog.text

    _step(model, optimizer)
    accelerator.load_state(chosen)
    torch.testing.assert_close(model.weight, weights[2], rtol=0, atol=0)


def test_missing_or_extra_files_invalidate(tmp_path, fresh_accelerate):
    accelerator, _, _ = _prepared(fresh_accelerate)
    path = save_checkpoint(accelerator, str(tmp_path), {"step": 5})
    (tmp_path / "checkpoint-5" / "stray.bin").write_bytes(b"x")
    assert verify_checkpoint(path) == "the files differ from the manifest"
    os.remove(tmp_path / "checkpoint-5" / "stray.bin")
    os.remove(tmp_path / "checkpoint-5" / "manifest.json")
    assert "unreadable manifest.json" in verify_checkpoint(path)
    assert latest_valid_checkpoint(str(tmp_path)) is None
    assert latest_valid_checkpoint(str(tmp_path / "nothing-here")) is None
