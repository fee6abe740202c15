"""The GPU accelerate profiles end to end on one GPU: bf16 training, MFU in metrics.jsonl, checkpoint and resume
(sharded for FSDP2), and a Hub-ready folder. Marked ``gpu``; the CPU profiles are covered in tests/recipes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from test_pretrain_recipe import REPO, TINY_MODEL, env, recipe_args, rows

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
MAX_RESUMED = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-pretrain")
    (root / "corpus.txt").write_text((REPO / "recipes" / "data" / "tinyshakespeare.txt").read_text()[:200_000])
    return root


def launch(workdir, profile, output_dir, **overrides):
    args = recipe_args(workdir, output_dir, model_config=json.dumps({**TINY_MODEL, "hidden_dropout": 0.0,
                                                                     "attention_dropout": 0.0}), **overrides)
    return subprocess.run(["accelerate", "launch", "--config_file", f"recipes/accelerate/{profile}.yaml",
                           "--num_processes", "1", "recipes/pretrain.py", *args], cwd=REPO, env=env(workdir),
                          capture_output=True, text=True, check=False, timeout=600)


@pytest.mark.parametrize("profile,distributed", [("single_gpu", "NO"), ("multi_gpu", "MULTI_GPU"), ("fsdp", "FSDP")])
def test_gpu_profile_trains_in_bf16_checkpoints_and_resumes(workdir, profile, distributed):
    output_dir = workdir / profile
    first = launch(workdir, profile, output_dir, max_steps=20, save_steps=10, eval_steps=20)
    assert first.returncode == 0, first.stderr[-4000:]
    assert f"distributed_type={distributed} mixed_precision=bf16 device=cuda" in first.stderr
    assert (output_dir / "checkpoint-20" / "manifest.json").is_file()
    resumed = launch(workdir, profile, output_dir, max_steps=MAX_RESUMED, save_steps=10, eval_steps=20)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr and "checkpoint-20" in resumed.stderr
    data = rows(output_dir)
    train = [r for r in data if r.get("loss") is not None]
    assert train[-1]["step"] == MAX_RESUMED and train[-1]["loss"] < train[0]["loss"]
    assert all(0 < r["mfu"] < 1 for r in train)  # a known GPU: MFU against its bf16 peak
    assert [r["step"] for r in data if "eval_loss" in r] == [20, 40]

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True).to("cuda")
    ids = torch.randint(0, 320, (1, 8), device="cuda")
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape == (1, 12)

