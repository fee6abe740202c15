"""metrics.jsonl writing and resume truncation, bits per byte, the loss plot."""

import json
import math

from modeling_minigpt.training.metrics import MetricsWriter, bits_per_byte, plot_loss, read_metrics


def test_bits_per_byte():
    # ln 2 nats per token and one token per byte is one bit per byte
    assert math.isclose(bits_per_byte(math.log(2), 100, 100), 1.0)
    assert math.isclose(bits_per_byte(2.0, 1, 4), 2.0 / (4 * math.log(2)))


def test_resume_drops_rows_after_the_checkpoint_and_torn_lines(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in (5, 10, 15):
        writer.write({"step": step, "loss": 1.0, "lr": 0.1, "tokens": step * 10})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 20, "lo')  # killed mid-write
    MetricsWriter(str(tmp_path), resume_step=10)
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [5, 10]
    MetricsWriter(str(tmp_path / "off"), enabled=False).write({"step": 1})
    assert not (tmp_path / "off" / "metrics.jsonl").exists()


def test_plot_loss_writes_a_png(tmp_path):
    rows = [{"step": s, "loss": 5 - s / 10, "lr": 1e-3, "tokens": s * 64} for s in range(1, 11)]
    rows.append({"step": 10, "tokens": 640, "eval_loss": 4.2, "eval_bits_per_byte": 2.0, "eval_perplexity": 66.7})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_loss(str(tmp_path / "metrics.jsonl"), str(tmp_path / "loss.png"), title="t")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
