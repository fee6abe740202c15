"""The loop on its own: a non-finite loss skips the update, too many in a row stop the run; fused AdamW; a streamed
train split resumes from its saved position instead of replaying the stream."""

import copy
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from modeling_minigpt.training.checkpoints import list_checkpoints
from modeling_minigpt.training.loop import (
    Objective,
    TrainingDivergedError,
    build_dataloaders,
    build_optimizer,
    micro_batches,
    train,
)
from modeling_minigpt.training.metrics import read_metrics
from modeling_minigpt.training.pretrain import causal_collator


class TurnsNaN(torch.nn.Module):
    """A bigram LM whose loss becomes NaN after ``good`` forward passes."""

    def __init__(self, good: int):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 16)
        self.calls, self.good = 0, good

    def forward(self, input_ids, labels):
        self.calls += 1
        logits = self.embed(input_ids[:, :-1])  # (B, T-1, V)
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
        return SimpleNamespace(loss=loss * float("nan") if self.calls > self.good else loss)


def loop_args(output_dir, **overrides):
    args = dict(output_dir=str(output_dir), max_steps=20, per_device_train_batch_size=4,
                per_device_eval_batch_size=4, gradient_accumulation_steps=1, learning_rate=0.1, weight_decay=0.0,
                adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8, max_grad_norm=1.0,
                lr_scheduler_type="constant", lr_scheduler_kwargs=None, warmup_steps=0, logging_steps=1,
                eval_steps=100, save_steps=2, save_total_limit=3, seed=0, max_nonfinite_steps=5,
                dataloader_num_workers=0, report_to="none")
    return SimpleNamespace(**{**args, **overrides})


def blocks(n=64, length=8):
    generator = torch.Generator().manual_seed(0)
    return Dataset.from_dict({"input_ids": torch.randint(0, 16, (n, length), generator=generator).tolist()})


def test_non_finite_losses_skip_updates_then_stop(tmp_path, fresh_accelerate):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = TurnsNaN(good=3)
    with pytest.raises(TrainingDivergedError, match="not finite for 5 steps in a row"):
        train(accelerator, model, blocks(), None, causal_collator, Objective("causal", 8), loop_args(tmp_path))
    # steps 1-3 trained; 4-8 were skipped (no update) and made no checkpoint; the run stopped at step 8
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [2]
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 8))  # the row of step 8 is never reached
    assert all(r["loss"] is None for r in rows[3:]) and all(r["loss"] > 0 for r in rows[:3])


def test_weights_do_not_move_on_a_skipped_step(tmp_path, fresh_accelerate):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = TurnsNaN(good=2)
    snapshot = {}

    class Spy(torch.nn.Module):  # records the weights before each forward
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, **batch):
            snapshot[model.calls] = model.embed.weight.detach().clone()
            return model(**batch)

    with pytest.raises(TrainingDivergedError):
        train(accelerator, Spy(), blocks(), None, causal_collator, Objective("causal", 8),
              loop_args(tmp_path, max_nonfinite_steps=3))
    assert not torch.equal(snapshot[0], snapshot[1])  # a good step updates
    torch.testing.assert_close(snapshot[2], snapshot[3], rtol=0, atol=0)  # after the first NaN: no update
    torch.testing.assert_close(snapshot[3], snapshot[4], rtol=0, atol=0)


def test_too_little_data_for_one_batch_is_a_clear_error(tmp_path, fresh_accelerate):
    from accelerate import Accelerator

    with pytest.raises(ValueError, match="the train split has 3 blocks, fewer than one batch"):
        train(Accelerator(cpu=True), TurnsNaN(good=10), blocks(n=3), None, causal_collator,
              Objective("causal", 8), loop_args(tmp_path))


def test_adamw_is_fused_where_torch_has_the_kernel_and_steps_like_the_unfused_one():
    # float64: the two differ only by rounding, which Adam amplifies in float32 where a gradient changes sign
    fused_model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).double()
    plain_model, initial = copy.deepcopy(fused_model), copy.deepcopy(fused_model)
    args = loop_args("unused", weight_decay=0.1, learning_rate=1e-2)
    fused = build_optimizer(fused_model, args, torch.device("cpu"))
    plain = build_optimizer(plain_model, args, torch.device("meta"))  # a device without the kernel
    assert [group["fused"] for group in fused.param_groups] == [True, True]
    assert not any(group["fused"] for group in plain.param_groups)
    x = torch.randn(16, 8, dtype=torch.float64)
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b, before in zip(fused_model.parameters(), plain_model.parameters(), initial.parameters(), strict=True):
        assert (a - before).abs().mean() > 1e-2  # the steps moved every tensor
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def counted_stream(reads: list, n=64, length=8):
    """The blocks as a 4-shard ``datasets`` stream; every row it produces appends to ``reads``."""
    def count(row):
        reads.append(row["input_ids"][0])
        return row

    return blocks(n, length).to_iterable_dataset(num_shards=4).map(count)


@pytest.mark.parametrize("resume_at", [10, 20])  # 16 batches per epoch: mid-epoch 0, and inside epoch 1
def test_a_streamed_split_resumes_where_it_stopped_without_replaying(tmp_path, fresh_accelerate, resume_at):
    from accelerate import Accelerator

    def run(output_dir, reads):
        torch.manual_seed(0)
        model = TurnsNaN(good=10**9)
        train(Accelerator(cpu=True), model, counted_stream(reads), None, causal_collator, Objective("causal", 8),
              loop_args(output_dir, max_steps=24, save_steps=10))
        return model.embed.weight.detach()

    reference_reads, resumed_reads = [], []
    reference = run(tmp_path / "reference", reference_reads)
    assert len(reference_reads) == 24 * 4
    checkpoint = tmp_path / "reference" / f"checkpoint-{resume_at}"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["stream"][0]["epoch"] == resume_at * 4 // 64  # one position per rank, JSON in the manifest
    shutil.copytree(checkpoint, tmp_path / "resumed" / checkpoint.name)
    resumed = run(tmp_path / "resumed", resumed_reads)
    assert resumed_reads == reference_reads[resume_at * 4:]  # only the rest of the stream is read, in order
    torch.testing.assert_close(resumed, reference, rtol=0, atol=0)


def test_a_stream_position_from_another_world_size_replays_with_a_warning(fresh_accelerate, caplog):
    from accelerate import Accelerator

    reads = []
    train_dl, _ = build_dataloaders(counted_stream(reads), None, causal_collator, loop_args("unused"))
    batches = micro_batches(Accelerator(cpu=True), train_dl, 3, positions=[{"epoch": 0}, {"epoch": 0}])
    first = next(batches)
    assert "saved by 2 processes (now 1" in caplog.text
    assert len(reads) == 4 * 4  # three batches replayed, then the fourth
    torch.testing.assert_close(first["input_ids"], torch.tensor(blocks()["input_ids"][12:16]))


def test_deepspeed_gets_the_micro_batch_size_a_stream_cannot_give_it():
    """A streamed split's DataLoader is not prepared, so DeepSpeed's "auto" micro-batch size comes from the args."""
    from modeling_minigpt.training.loop import _set_deepspeed_batch_size

    def accelerator(config):
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))

    auto, fixed = {"train_micro_batch_size_per_gpu": "auto"}, {"train_micro_batch_size_per_gpu": 2}
    _set_deepspeed_batch_size(accelerator(auto), loop_args("unused", per_device_train_batch_size=6))
    _set_deepspeed_batch_size(accelerator(fixed), loop_args("unused", per_device_train_batch_size=6))
    assert auto["train_micro_batch_size_per_gpu"] == 6 and fixed["train_micro_batch_size_per_gpu"] == 2
    _set_deepspeed_batch_size(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)), loop_args("unused"))


def test_resuming_with_another_batch_size_warns_that_the_data_position_is_estimated(tmp_path, fresh_accelerate,
                                                                                    caplog):
    from accelerate import Accelerator

    good = TurnsNaN(good=10**9)
    train(Accelerator(cpu=True), good, blocks(), None, causal_collator, Objective("causal", 8),
          loop_args(tmp_path, max_steps=4))
    with caplog.at_level("WARNING", logger="modeling_minigpt.training.loop"):
        train(Accelerator(cpu=True), good, blocks(), None, causal_collator, Objective("causal", 8),
              loop_args(tmp_path, max_steps=6))  # the same batch: an exact resume, no warning
        assert "tokens a step" not in caplog.text
        train(Accelerator(cpu=True), good, blocks(), None, causal_collator, Objective("causal", 8),
              loop_args(tmp_path, max_steps=8, per_device_train_batch_size=2))
    assert "the checkpoint trained 32 tokens a step, this launch 16" in caplog.text
