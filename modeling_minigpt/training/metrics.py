"""Run metrics: ``metrics.jsonl`` (one JSON object per logged step), the loss plot, and throughput/MFU.

Train rows: ``step``, ``loss``, ``lr``, ``tokens`` (seen so far, all processes), ``tokens_per_second``, ``mfu``.
Eval rows: ``step``, ``tokens``, ``eval_loss``, ``eval_perplexity``, ``eval_bits_per_byte`` (null for objectives
whose loss is not a likelihood of the text, i.e. masked LM and span corruption).
"""

import json
import math
import os
import time

# Dense bf16 tensor-core peak FLOP/s by device-name fragment (vendor data sheets; SXM parts where both exist).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A800": 312e12,
    "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12,
    "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


class MetricsWriter:
    """Append rows to ``output_dir/metrics.jsonl`` (main process only); on resume, drop rows after the step."""

    def __init__(self, output_dir: str, enabled: bool = True, resume_step: int | None = None):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.enabled = enabled
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            rows = read_metrics(self.path) if resume_step is not None else []
            with open(self.path, "w") as f:  # rewrite: keeps rows up to the checkpoint, drops a torn last line
                f.writelines(json.dumps(row) + "\n" for row in rows if row.get("step", 0) <= resume_step)

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl; a line torn by a crash is skipped."""
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows


def bits_per_byte(loss_nats: float, tokens: int, n_bytes: int) -> float:
    """Mean loss per token (nats) -> bits per byte of raw text: loss * tokens / (bytes * ln 2)."""
    return loss_nats * tokens / (n_bytes * math.log(2))


def plot_loss(metrics_path: str, png_path: str, title: str = "") -> None:
    """Train and eval loss against tokens seen, written with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["tokens"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["tokens"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss", ms=3)
    ax.set(xlabel="tokens seen", ylabel="loss (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)


def peak_flops(device) -> float | None:
    """Peak FLOP/s of ``device``: the bf16 table for known GPUs, a measured fp32 matmul rate on CPU."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, flops in PEAK_BF16_FLOPS.items():
            if fragment in name:
                return flops
        return None
    if device.type == "cpu":
        return measure_matmul_flops()
    return None


def measure_matmul_flops(n: int = 512, seconds: float = 0.3) -> float:
    """fp32 matmul FLOP/s of this CPU (all threads torch uses); the denominator of MFU on CPU."""
    import torch

    generator = torch.Generator().manual_seed(0)  # never touch the global RNG: resume must stay bit-identical
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)
