"""End-to-end runs of recipes/pretrain.py as a script: the Hub-ready folder, bit-identical resume after SIGKILL,
SIGTERM, a corrupt newest checkpoint, clear errors, and 2-process CPU DDP. Tiny model, 20 KB of text."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "intermediate_size": 64, "hidden_dropout": 0.1, "attention_dropout": 0.1}
MAX_STEPS = 40


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    text = (REPO / "recipes" / "data" / "tinyshakespeare.txt").read_text()[:20_000]
    (root / "corpus.txt").write_text(text)
    return root


def recipe_args(workdir, output_dir, **overrides):
    # 20 KB -> ~7k tokens -> ~200 blocks of 32 -> ~25 batches of 8 per epoch: the runs cross epoch boundaries
    fields = {"data_files": str(workdir / "corpus.txt"), "vocab_size": 320, "block_size": 32,
              "model_config": json.dumps(TINY_MODEL), "per_device_train_batch_size": 8,
              "per_device_eval_batch_size": 64, "max_steps": MAX_STEPS, "save_steps": 10, "eval_steps": 20,
              "logging_steps": 5, "warmup_steps": 5, "learning_rate": 2e-3,  # pinned: the yaml's are tuned
              "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": json.dumps({"min_lr_rate": 0.1}),
              "dataset_cache_dir": str(workdir / "packed"),
              "output_dir": str(output_dir), **overrides}
    family = overrides.pop("family", "gpt")
    args = ["--config", f"recipes/configs/{family}/tiny_pretrain.yaml"]
    for key, value in fields.items():
        args += [f"--{key}", str(value)]
    return args


def env(workdir):
    return {**os.environ, "HF_DATASETS_CACHE": str(workdir / "hf"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def run(workdir, args, launcher=(sys.executable,), timeout=240):
    return subprocess.run([*launcher, "recipes/pretrain.py", *args], cwd=REPO, env=env(workdir),
                          capture_output=True, text=True, check=False, timeout=timeout)


def start(workdir, args, log):
    return subprocess.Popen([sys.executable, "recipes/pretrain.py", *args], cwd=REPO, env=env(workdir),
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def rows(output_dir):
    path = Path(output_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_step(proc, output_dir, step, timeout=240):
    """Block until metrics.jsonl has a row at or past ``step`` (the run is then past that checkpoint)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["step"] >= step for r in rows(output_dir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc={proc.returncode}) before step {step}")
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def final_losses(output_dir):
    data = rows(output_dir)
    last_train = [r for r in data if r.get("loss") is not None][-1]
    last_eval = [r for r in data if "eval_loss" in r][-1]
    return last_train["step"], last_train["loss"], last_eval["eval_loss"]


@pytest.fixture(scope="module")
def reference(workdir):
    """One uninterrupted run; the tokenizer is trained as part of it."""
    output_dir = workdir / "reference"
    proc = run(workdir, recipe_args(workdir, output_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output_dir, proc


@pytest.mark.slow
def test_run_writes_metrics_plot_checkpoints_and_a_hub_ready_folder(reference):
    output_dir, proc = reference
    assert "world_size=1 distributed_type=NO" in proc.stderr
    data = rows(output_dir)
    train_rows = [r for r in data if "loss" in r]
    eval_rows = [r for r in data if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == list(range(5, MAX_STEPS + 1, 5))
    assert [r["step"] for r in eval_rows] == [20, 40]
    for row in train_rows:
        assert {"step", "loss", "lr", "tokens"} <= set(row) and math.isfinite(row["loss"])
        assert row["tokens"] == row["step"] * 8 * 32  # steps x batch x block, one process
    for row in eval_rows:
        assert row["eval_perplexity"] == pytest.approx(math.exp(row["eval_loss"]))
        assert 0 < row["eval_bits_per_byte"] < row["eval_loss"] / math.log(2)  # a token holds > 1 byte
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert train_rows[-1]["lr"] == pytest.approx(2e-3 * 0.1)  # cosine down to min_lr_rate at the last step
    assert (output_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in sorted(output_dir.glob("checkpoint-*"))] == ["checkpoint-30", "checkpoint-40"]
    assert {p.suffix for p in (output_dir / "checkpoint-40").iterdir()} == {".json", ".safetensors"}  # no pickle
    assert not list(output_dir.glob("tmp-*")) and not list(output_dir.glob(".tmp-*"))
    run_info = json.loads((output_dir / "run.json").read_text())
    assert run_info["world_size"] == 1 and run_info["data_stats"]["validation"]["bytes"] == 2_000


@pytest.mark.slow
def test_hub_folder_loads_with_auto_classes(reference):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir, _ = reference
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_minigpt_gpt.MiniGPTForCausalLM"
    for name in ("modeling_minigpt_gpt.py", "minigpt_layers.py", "configuration_minigpt.py", "model.safetensors",
                 "tokenizer.json"):
        assert (output_dir / name).is_file()
    model = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(output_dir, trust_remote_code=True)
    assert len(tokenizer) <= model.config.vocab_size == 320
    ids = tokenizer("ROMEO:", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


@pytest.mark.slow
def test_kill_9_and_relaunch_matches_the_uninterrupted_run(workdir, reference):
    output_dir = workdir / "killed"
    args = recipe_args(workdir, output_dir)
    with open(workdir / "killed.log", "w") as log:
        proc = start(workdir, args, log)
        wait_for_step(proc, output_dir, 15)  # checkpoint-10 exists; the run is between checkpoints
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (output_dir / "config.json").exists()  # no final folder from the killed run
    resumed = run(workdir, args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed from \S+checkpoint-[123]0 ", resumed.stderr)
    ref_step, ref_loss, ref_eval = final_losses(reference[0])
    step, loss, eval_loss = final_losses(output_dir)
    assert step == ref_step == MAX_STEPS
    assert abs(loss - ref_loss) <= 1e-5 and abs(eval_loss - ref_eval) <= 1e-5
    assert [r["step"] for r in rows(output_dir)] == [r["step"] for r in rows(reference[0])]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "t5"])
def test_masked_objectives_resume_to_the_uninterrupted_losses(workdir, family):
    # Their masks come from the collator, which accelerate runs a batch ahead of the step: seeded by each batch's
    # content, a resumed run still masks every batch as the uninterrupted run did (global-RNG masks did not).
    kw = dict(family=family, vocab_size=400, max_steps=12, save_steps=4, eval_steps=12, logging_steps=1)
    whole = run(workdir, recipe_args(workdir, workdir / f"{family}-whole", **kw))
    assert whole.returncode == 0, whole.stderr[-3000:]
    output_dir = workdir / f"{family}-killed"
    args = recipe_args(workdir, output_dir, **kw)
    with open(workdir / f"{family}-killed.log", "w") as log:
        proc = start(workdir, args, log)
        wait_for_step(proc, output_dir, 6)  # checkpoint-4 exists; the run is past it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    resumed = run(workdir, args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed from \S+checkpoint-(4|8) ", resumed.stderr)

    def losses(folder):
        return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows(folder) if r["step"] > 8]

    assert losses(output_dir) == losses(workdir / f"{family}-whole") and len(losses(output_dir)) >= 4


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_a_corrupt_newest_checkpoint_falls_back(workdir, reference):
    output_dir = workdir / "terminated"
    args = recipe_args(workdir, output_dir, save_total_limit=3)
    with open(workdir / "terminated.log", "w") as log:
        proc = start(workdir, args, log)
        wait_for_step(proc, output_dir, 15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    log = (workdir / "terminated.log").read_text()
    match = re.search(r"stopping on signal 15 at step (\d+); checkpoint saved", log)
    stopped_at = int(match.group(1))
    assert 15 <= stopped_at < MAX_STEPS
    assert (output_dir / f"checkpoint-{stopped_at}" / "manifest.json").is_file()  # saved at the step boundary
    assert not (output_dir / "config.json").exists()  # stopped early: no final folder

    newest = output_dir / f"checkpoint-{stopped_at}" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:-10])  # corrupt it: the relaunch must warn and use an older one
    resumed = run(workdir, args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint-{stopped_at} is corrupt" in resumed.stderr
    assert "resumed from" in resumed.stderr
    _, loss, eval_loss = final_losses(output_dir)
    _, ref_loss, ref_eval = final_losses(reference[0])
    assert abs(loss - ref_loss) <= 1e-5 and abs(eval_loss - ref_eval) <= 1e-5


@pytest.mark.slow
def test_tokenizer_larger_than_the_model_is_an_error_before_training(workdir, reference):
    output_dir = workdir / "mismatch"
    small = {**TINY_MODEL, "vocab_size": 100}
    proc = run(workdir, recipe_args(workdir, output_dir, tokenizer_name_or_path=reference[0],
                                    model_config=json.dumps(small)))
    assert proc.returncode == 2
    assert "the tokenizer has 320 tokens but the model's vocab_size=100" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (output_dir / "metrics.jsonl").exists()


@pytest.mark.slow
def test_relaunch_into_the_folder_of_another_run_is_an_error_that_changes_nothing(workdir, reference):
    output_dir = workdir / "another"
    shutil.copytree(reference[0], output_dir)
    (workdir / "other.txt").write_text((REPO / "recipes" / "data" / "tinyshakespeare.txt").read_text()[20_000:40_000])
    before = {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()}
    proc = run(workdir, recipe_args(workdir, output_dir, data_files=workdir / "other.txt"))
    assert proc.returncode == 2 and "holds another run (data_files=" in proc.stderr and "other.txt" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()} == before


@pytest.mark.slow
def test_a_launch_that_failed_before_training_is_started_over(workdir):
    # A failed launch leaves run.json and its tokenizer; a corrected relaunch must not reuse that tokenizer.
    output_dir = workdir / "typo"
    typo = json.dumps({**TINY_MODEL, "num_hidden_layer": 1})
    proc = run(workdir, recipe_args(workdir, output_dir, model_config=typo))
    assert proc.returncode == 2 and "has no field 'num_hidden_layer'" in proc.stderr
    assert (output_dir / "tokenizer.json").exists() and not (output_dir / "metrics.jsonl").exists()
    proc = run(workdir, recipe_args(workdir, output_dir, vocab_size=300, max_steps=2, eval_steps=2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "never trained" in proc.stderr
    assert json.loads((output_dir / "config.json").read_text())["vocab_size"] == 300


@pytest.mark.slow
def test_cpu_profile_forms_a_two_process_group(workdir, reference):
    """recipes/accelerate/cpu.yaml alone (no ACCELERATE_USE_CPU): the recipe turns it into real CPU DDP."""
    output_dir = workdir / "profile"
    args = recipe_args(workdir, output_dir, max_steps=2, logging_steps=1, eval_steps=2, save_steps=2,
                       tokenizer_name_or_path=reference[0])
    clean_env = {k: v for k, v in env(workdir).items() if k != "ACCELERATE_USE_CPU"}
    proc = subprocess.run(["accelerate", "launch", "--config_file", "recipes/accelerate/cpu.yaml",
                           "recipes/pretrain.py", *args], cwd=REPO, env=clean_env, capture_output=True, text=True,
                          check=False, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2 distributed_type=MULTI_CPU" in proc.stderr
    assert [r["tokens"] for r in rows(output_dir) if "loss" in r] == [8 * 32 * 2, 2 * 8 * 32 * 2]


@pytest.mark.slow
def test_two_process_cpu_ddp(workdir, reference):
    output_dir = workdir / "ddp"
    launcher = ("accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no")
    args = recipe_args(workdir, output_dir, max_steps=6, logging_steps=3, eval_steps=6, save_steps=6,
                       tokenizer_name_or_path=reference[0])
    proc = subprocess.run([*launcher, "recipes/pretrain.py", *args], cwd=REPO,
                          env={**env(workdir), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, check=False,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2 distributed_type=MULTI_CPU" in proc.stderr
    data = rows(output_dir)
    assert [r["tokens"] for r in data if "loss" in r] == [3 * 8 * 32 * 2, 6 * 8 * 32 * 2]  # both processes
    assert json.loads((output_dir / "run.json").read_text())["distributed_type"] == "MULTI_CPU"
    saved = {p.name for p in (output_dir / "checkpoint-6").iterdir()}
    assert {"random_states_0.safetensors", "random_states_1.safetensors", "optimizer.safetensors"} <= saved
    assert {name.rsplit(".", 1)[1] for name in saved} == {"json", "safetensors"}  # no pickle under DDP either
    # the sharded eval (repeated samples dropped) equals a one-process eval of the saved model
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modeling_minigpt.data.packing import load_corpus, pack_corpus
    from modeling_minigpt.training.loop import per_sample_loss

    tokenizer = AutoTokenizer.from_pretrained(reference[0], trust_remote_code=True)
    corpus = load_corpus(data_files=[str(workdir / "corpus.txt")], split_by="tail", cache_dir=str(workdir / "hf"))
    ids = pack_corpus(corpus, tokenizer, 32, cache_dir=str(workdir / "packed")).splits["validation"][:]["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(output_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        loss_sum, count = per_sample_loss(model(input_ids=ids).logits, ids, causal=True).sum(0).tolist()
    assert count == ids.shape[0] * 31
    assert loss_sum / count == pytest.approx(final_losses(output_dir)[2], rel=1e-5)


@pytest.mark.slow
def test_two_process_streamed_run_resumes_from_its_stream_position(workdir, reference):
    """dataset_streaming under 2-process DDP: each rank reads its part of the stream, the checkpoint keeps both
    positions, and a relaunch continues from them to the uninterrupted run's exact losses."""
    text = (workdir / "corpus.txt").read_text()
    corpus = workdir / "paragraphs.jsonl"
    corpus.write_text("".join(json.dumps({"text": p}) + "\n" for p in text.split("\n\n") if p.strip()))
    launcher = ("accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no")

    def launch(output_dir):
        args = recipe_args(workdir, output_dir, data_files=corpus, dataset_streaming="true",
                           streaming_validation_documents=10, max_steps=8, save_steps=4, eval_steps=8,
                           logging_steps=2, save_total_limit=3, tokenizer_name_or_path=reference[0])
        proc = subprocess.run([*launcher, "recipes/pretrain.py", *args], cwd=REPO, timeout=240, text=True,
                              env={**env(workdir), "ACCELERATE_USE_CPU": "1"}, capture_output=True, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    whole = workdir / "stream-whole"
    launch(whole)
    manifest = json.loads((whole / "checkpoint-4" / "manifest.json").read_text())
    assert len(manifest["stream"]) == 2  # one position per rank
    resumed = workdir / "stream-resumed"
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-4", resumed / "checkpoint-4")
    shutil.copy(whole / "run.json", resumed / "run.json")  # an interrupted run's folder holds its run.json
    proc = launch(resumed)
    assert re.search(r"resumed from \S+checkpoint-4 ", proc.stderr) and "replaying" not in proc.stderr

    def losses(output_dir):
        return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows(output_dir)]

    assert losses(resumed)[-3:] == losses(whole)[-3:]  # steps 6 and 8 and the final eval, exactly
