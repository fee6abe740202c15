"""Atomic checkpoints with manifests, rotation, fallback from a corrupt newest checkpoint, and pickle-free
files whose round trip restores the training exactly."""

import json
import os
import random

import numpy as np
import pytest
import torch

from modeling_minigpt.training.checkpoints import (
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
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
    assert load_checkpoint(accelerator, chosen) == {"step": 2, "tokens": 20}
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


def _training(accelerator):
    """A dropout model, fused AdamW, transformers' cosine schedule and 2-step accumulation, prepared."""
    from transformers import get_scheduler

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=2, num_training_steps=20,
                              scheduler_specific_kwargs={"min_lr_rate": 0.1})
    return accelerator.prepare(model, optimizer, scheduler)


def _micro_steps(accelerator, model, optimizer, scheduler, n):
    """``n`` micro-batches drawn from every global generator (python, numpy, torch); the update lands only on
    the micro-batches where accelerate's step counter says the accumulation syncs."""
    for _ in range(n):
        with accelerator.accumulate(model):
            scale = random.random() + float(np.random.rand())
            accelerator.backward(model(scale * torch.randn(2, 4)).square().sum())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()] + [torch.tensor(scheduler.get_last_lr())]


def test_checkpoint_holds_no_pickle_and_restores_the_training_exactly(tmp_path, fresh_accelerate):
    from accelerate import Accelerator
    from safetensors.torch import load_file

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, optimizer, scheduler = _training(accelerator)
    _micro_steps(accelerator, model, optimizer, scheduler, 4)  # saved at a sync: no accumulated gradient
    path = save_checkpoint(accelerator, str(tmp_path), {"step": 2})
    without_reload = _micro_steps(accelerator, model, optimizer, scheduler, 4)

    names = sorted(os.listdir(path))
    assert names == ["manifest.json", "model.safetensors", "optimizer.json", "optimizer.safetensors",
                     "random_states_0.json", "random_states_0.safetensors", "scheduler.json"]
    for name in names:  # each file parses as what its name says; no torch.save zip or pickle stream
        with open(os.path.join(path, name), "rb") as f:
            head = f.read(2)
        assert head[:1] != b"\x80" and head != b"PK", name
        if name.endswith(".json"):
            json.loads((tmp_path / "checkpoint-2" / name).read_text())
        else:
            assert load_file(os.path.join(path, name))
    assert set(load_file(os.path.join(path, "optimizer.safetensors"))) == {
        f"optimizer.state.{i}.{key}" for i in range(4) for key in ("step", "exp_avg", "exp_avg_sq")}

    _micro_steps(accelerator, model, optimizer, scheduler, 2)  # move every state away from the checkpoint
    random.random(), np.random.rand(), torch.rand(1)
    accelerator.step = 1  # off by one micro-batch: every sync would move if the counter were not restored
    assert load_checkpoint(accelerator, path) == {"step": 2}
    assert accelerator.step == 4
    after_reload = _micro_steps(accelerator, model, optimizer, scheduler, 4)
    for got, want in zip(after_reload, without_reload, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_save_state_folder_is_refused_not_unpickled(tmp_path, fresh_accelerate):
    accelerator, _, _ = _prepared(fresh_accelerate)
    accelerator.save_state(str(tmp_path), safe_serialization=True)  # optimizer.bin, random_states_0.pkl
    with pytest.raises(ValueError, match="has no optimizer.json: not a checkpoint written by save_checkpoint"):
        load_checkpoint(accelerator, str(tmp_path))
