#!/usr/bin/env python
"""Sample efficiency: the gpt tiny recipe on Tiny Shakespeare, end to end, against the issue's targets.

Runs ``recipes/pretrain.py`` as a subprocess exactly as a user would (tokenizer training, packing, training,
evaluation, the final Hub folder), times it with a wall clock, and reads the final ``eval_bits_per_byte``
(validation: the last 10% of the text, nanoGPT's split) from ``metrics.jsonl``. Targets: <= 2.45 bits/byte in
<= 180 s of wall time on 2 CPU cores. nanoGPT's CPU recipe (4 x 128, 2000 iterations) reaches 2.72 bits/byte
(1.886 nats/char) in about 3 minutes on the same kind of machine.

    python bench/bench_sample_efficiency.py                                  # cpu.yaml (2 DDP processes)
    python bench/bench_sample_efficiency.py --processes 1                    # one process, 2 torch threads
    python bench/bench_sample_efficiency.py --json out.json -- --max_steps 300 --learning_rate 3e-3

Arguments after ``--`` (or any unknown ones) go to the recipe as overrides. The output folder must be new (a
non-empty one would resume); packing is cached inside it, so every run pays for tokenizing. Load averages
before, during and after are printed: other jobs on the same cores distort wall time (CPU time less so).
Exit status: 0 when both targets are met, 1 when one is missed, 2 when the run itself failed.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_BPB, TARGET_WALL_S = 2.45, 180.0
NANOGPT = {"bits_per_byte": 2.72, "nats_per_char": 1.886, "wall_s": 180.0,
           "recipe": "nanoGPT shakespeare_char CPU recipe: 4 layers x 128, block 64, batch 12, 2000 iterations"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="recipes/configs/gpt/tiny_pretrain.yaml", help="recipe YAML")
    parser.add_argument("--output-dir", help="a new folder for the run (default: a fresh temp folder)")
    parser.add_argument("--processes", type=int, default=None,
                        help="1: plain python (one process, all torch threads); N>1: accelerate launch with "
                             "--launch-config and --num_processes N; default: the profile's own count")
    parser.add_argument("--launch-config", default="recipes/accelerate/cpu.yaml", help="accelerate profile")
    parser.add_argument("--json", help="also write the results here")
    args, overrides = parser.parse_known_args(argv)
    args.overrides = [o for o in overrides if o != "--"]
    return args


def command(args, output_dir: str) -> list[str]:
    recipe = ["recipes/pretrain.py", "--config", args.config, "--output_dir", output_dir,
              "--dataset_cache_dir", os.path.join(output_dir, "packed-cache"), *args.overrides]
    if args.processes == 1:
        return [sys.executable, *recipe]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.launch_config]
    if args.processes:
        launch += ["--num_processes", str(args.processes)]
    return [*launch, *recipe]


class LoadSampler(threading.Thread):
    """The 1-minute load average every few seconds while the run goes (the run itself adds about 2)."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stopped = every, [], threading.Event()

    def run(self):
        while not self.stopped.wait(self.every):
            self.samples.append(os.getloadavg()[0])


def run_recipe(cmd: list[str]) -> dict:
    """Run ``cmd`` from the repo root; wall time, CPU time of all its descendants, load averages."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    before_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    sampler = LoadSampler()
    sampler.start()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    wall = time.perf_counter() - start
    sampler.stopped.set()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited descendants: torchrun's workers included
    user, sys_ = usage.ru_utime - before_usage.ru_utime, usage.ru_stime - before_usage.ru_stime
    return {"returncode": proc.returncode, "wall_s": wall, "user_s": user, "sys_s": sys_, "cpu_s": user + sys_,
            "load_before": list(load_before), "load_after": list(os.getloadavg()),
            "load_during_max": max(sampler.samples, default=None),
            "load_during_mean": sum(sampler.samples) / len(sampler.samples) if sampler.samples else None}


def final_eval(output_dir: str) -> dict:
    """The last eval row of metrics.jsonl, and what run.json says about the run."""
    rows = [json.loads(line) for line in Path(output_dir, "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("eval_bits_per_byte") is not None]
    if not evals:
        raise ValueError(f"{output_dir}/metrics.jsonl has no eval_bits_per_byte row")
    info = json.loads(Path(output_dir, "run.json").read_text())
    return {"bits_per_byte": evals[-1]["eval_bits_per_byte"], "eval_loss": evals[-1]["eval_loss"],
            "step": evals[-1]["step"], "tokens": evals[-1]["tokens"], "world_size": info["world_size"]}


def fmt(load) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def report(result: dict) -> None:
    during = result["load_during_max"]
    print(f"\ncommand      {' '.join(result['command'])}")
    print(f"load avg     before {fmt(result['load_before'])} | during max "
          f"{during if during is None else f'{during:.2f}'} (this run adds ~2) | after {fmt(result['load_after'])}")
    print(f"processes    {result['world_size']}; {result['step']} steps, {result['tokens']:,} training tokens")
    print(f"wall time    {result['wall_s']:.1f} s   (CPU time {result['cpu_s']:.1f} s = user {result['user_s']:.1f}"
          f" + sys {result['sys_s']:.1f})")
    print(f"bits/byte    {result['bits_per_byte']:.4f}   (eval loss {result['eval_loss']:.4f} nats/token)")
    print(f"nanoGPT      {NANOGPT['bits_per_byte']} bits/byte in ~{NANOGPT['wall_s']:.0f} s ({NANOGPT['recipe']})")
    print(f"ratios       bits/byte {result['bits_per_byte'] / NANOGPT['bits_per_byte']:.3f} x nanoGPT, "
          f"wall {result['wall_s'] / NANOGPT['wall_s']:.3f} x nanoGPT")
    for name, value, target, unit in (("bits/byte", result["bits_per_byte"], TARGET_BPB, ""),
                                      ("wall time", result["wall_s"], TARGET_WALL_S, " s")):
        verdict = "PASS" if value <= target else "FAIL"
        print(f"{verdict:12} {name} {value:.3f}{unit} <= {target}{unit} (margin {target - value:+.3f}{unit})")


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="minigpt-se-")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        print(f"error: --output-dir {output_dir} is not empty (the recipe would resume from it)", file=sys.stderr)
        return 2
    cmd = command(args, output_dir)
    result = {"command": cmd, "output_dir": output_dir, **run_recipe(cmd)}
    if result["returncode"] != 0:
        print(f"error: the recipe exited with {result['returncode']} after {result['wall_s']:.1f} s", file=sys.stderr)
        return 2
    result.update(final_eval(output_dir))
    result["pass"] = {"bits_per_byte": result["bits_per_byte"] <= TARGET_BPB,
                      "wall_s": result["wall_s"] <= TARGET_WALL_S}
    result["nanogpt"] = NANOGPT
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["pass"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
