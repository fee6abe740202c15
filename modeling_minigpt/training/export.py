"""Write the Hub-ready folder (config with auto_map, model code, safetensors, tokenizer) without ever leaving a
loadable half-written one: everything goes to a temp folder first, then moves into place with config.json last.

A folder is loadable only when it has ``config.json``; the old one is removed before any file is replaced and
the new one arrives last, so a crash in between leaves an unloadable folder, never a mix of two models.
"""

import os
import shutil
import uuid


def replace_files(src: str, dst: str, last: str) -> None:
    """Move every file of ``src`` into ``dst`` (atomic renames, same filesystem), ``last`` after the others."""
    os.makedirs(dst, exist_ok=True)
    if os.path.exists(os.path.join(dst, last)):
        os.remove(os.path.join(dst, last))
    names = sorted(os.listdir(src), key=lambda name: name == last)
    for name in names:
        target = os.path.join(dst, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(src, name), target)
    shutil.rmtree(src, ignore_errors=True)


def save_tokenizer(tokenizer, output_dir: str) -> None:
    """Save a tokenizer into ``output_dir`` (tokenizer.json arrives last: it marks a complete save)."""
    tmp = os.path.join(output_dir, f".tmp-tokenizer-{uuid.uuid4().hex[:8]}")
    tokenizer.save_pretrained(tmp)
    replace_files(tmp, output_dir, last="tokenizer.json")


def save_hub_folder(accelerator, model, tokenizer, output_dir: str) -> None:
    """Save the trained model and tokenizer into ``output_dir``; call on every rank (sharded states gather)."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tmp = os.path.join(output_dir, f".tmp-final-{uuid.uuid4().hex[:8]}")
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        unwrapped.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        replace_files(tmp, output_dir, last="config.json")
    accelerator.wait_for_everyone()
