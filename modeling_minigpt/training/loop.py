"""The training loop: accelerate, AdamW, warmup + cosine, accumulation, clipping, eval, checkpoints, resume.

``args`` is any object with TrainingArguments-named attributes (``recipes/pretrain.py``'s dataclasses):
output_dir, max_steps, per_device_train_batch_size, per_device_eval_batch_size, gradient_accumulation_steps,
learning_rate, weight_decay, adam_beta1, adam_beta2, adam_epsilon, max_grad_norm, lr_scheduler_type,
lr_scheduler_kwargs, warmup_steps, logging_steps, eval_steps, save_steps, save_total_limit, seed,
max_nonfinite_steps, dataloader_num_workers.

Resume is bit-identical (SIGKILL + relaunch gives the same final loss as one uninterrupted run, dropout on; masks
are seeded by batch content, ``data.collators.ContentSeededCollator``, since the collator runs a batch ahead): the
sampler is accelerate's seedable one, the DataLoader owns its generator, the model, optimizer, scheduler, RNG
states and step counters go into the checkpoint (safetensors + JSON, see ``checkpoints``), and the data position
is restored with ``set_epoch`` + ``skip_first_batches``. A streamed train split is split across ranks with
``split_dataset_by_node`` (each rank reads its own part) and its position is the ``datasets`` state dict of every
rank, kept in the manifest: a resume continues the stream where it stopped instead of replaying it.
"""

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from .checkpoints import latest_valid_checkpoint, load_checkpoint, save_checkpoint
from .metrics import MetricsWriter, bits_per_byte, peak_flops
from .signals import GracefulStop, isolated_rng

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """The loop's counters; checkpoints keep them in their JSON manifest (see ``save_checkpoint``)."""

    step: int = 0
    tokens: int = 0

    def state_dict(self):
        return {"step": self.step, "tokens": self.tokens}

    def load_state_dict(self, state):
        self.step, self.tokens = int(state["step"]), int(state["tokens"])


@dataclass
class Objective:
    """What the loop needs to know about the task: causal (labels shift inside the model), mlm or span."""

    name: str  # "causal" | "mlm" | "span"
    tokens_per_sample: int  # raw text tokens one training sample holds (the packed block)
    eval_tokens_per_byte: float | None = None  # validation tokens / validation bytes, for bits per byte
    flops_per_token: float | None = None  # forward + backward, for MFU


def fused_adamw_supported(params, device) -> bool:
    """Whether torch has a fused AdamW kernel for floating-point ``params`` trained on ``device`` (CUDA, and CPU
    since torch 2.4). torch checks only at the first step, so ask before choosing it."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
        devices = _get_fused_kernels_supported_devices()
    except ImportError:  # a private helper: should it move, keep to the device that has always had the kernel
        devices = ["cuda"]
    return device.type in devices and all(p.is_floating_point() for p in params)


def build_optimizer(model, args, device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases), fused kernels where the device has them
    (on CPU, about a third of the unfused step time for the tiny model)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, fused=fused_adamw_supported(decay + no_decay, device))


def build_scheduler(optimizer, args):
    from transformers import get_scheduler

    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                         num_training_steps=args.max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})


def build_dataloaders(train_ds, eval_ds, collator, args, accelerator=None):
    from datasets import IterableDataset

    streaming = isinstance(train_ds, IterableDataset)
    if streaming and accelerator is not None and accelerator.num_processes > 1:  # each rank its own part
        from datasets.distributed import split_dataset_by_node
        train_ds = split_dataset_by_node(train_ds, accelerator.process_index, accelerator.num_processes)
    train_dl = DataLoader(train_ds, batch_size=args.per_device_train_batch_size, shuffle=not streaming,
                          drop_last=True, collate_fn=collator, num_workers=args.dataloader_num_workers,
                          generator=torch.Generator().manual_seed(args.seed))  # own generator: see module doc
    eval_dl = DataLoader(eval_ds, batch_size=args.per_device_eval_batch_size, collate_fn=collator) \
        if eval_ds is not None else None
    return train_dl, eval_dl


def _stream(dataloader):
    """The streamed (``datasets.IterableDataset``) train split a plain DataLoader reads, else None."""
    from datasets import IterableDataset

    dataset = getattr(dataloader, "dataset", None)
    return dataset if isinstance(dataset, IterableDataset) else None


def stream_position(accelerator, dataloader) -> dict:
    """``{"stream": [datasets state dict of each rank]}`` for a streamed train split, else ``{}``. A collective.

    Exact at a step boundary because the DataLoader reads in this process (no workers, no prefetch); with
    ``dataloader_num_workers`` > 0 the position lives in the workers, so a resume replays the stream instead.
    """
    from accelerate.utils import gather_object

    stream = _stream(dataloader)
    if stream is None or dataloader.num_workers:
        return {}
    return {"stream": gather_object([stream.state_dict()])}


def micro_batches(accelerator, dataloader, start: int, positions=None):
    """Micro-batches from ``start`` (batches already taken by this process) on, epoch after epoch.

    A streamed split restarts from this rank's entry of ``positions`` (``stream_position``); without a usable
    one (an older checkpoint, another number of processes, DataLoader workers) it skips ``start`` batches.
    """
    from accelerate.utils import send_to_device

    stream = _stream(dataloader)
    try:
        per_epoch = len(dataloader)
    except TypeError:  # streaming: no length, so skip from the beginning of the stream
        per_epoch = None
    epoch, skip = divmod(start, per_epoch) if per_epoch else (0, start)
    if stream is not None and positions:
        if len(positions) == accelerator.num_processes and not dataloader.num_workers:
            position = positions[accelerator.process_index]
            stream.load_state_dict(position)
            epoch, skip = position["epoch"], 0
        else:
            logger.warning("the checkpoint's stream position was saved by %d processes (now %d, %d dataloader "
                           "workers): replaying the stream to batch %d", len(positions),
                           accelerator.num_processes, dataloader.num_workers, start)
    while True:
        (stream or dataloader).set_epoch(epoch)
        yielded = 0
        for batch in accelerator.skip_first_batches(dataloader, skip) if skip else dataloader:
            yielded += 1
            yield send_to_device(batch, accelerator.device) if stream is not None else batch
        if not yielded and not skip:
            raise ValueError("the training dataloader yielded no batch: the train split is smaller than one batch"
                             + (" (streamed data: the first streaming_validation_documents documents go to "
                                "validation, not train)" if stream is not None else ""))
        epoch, skip = epoch + 1, 0


def evaluate(accelerator, model, eval_dl, objective: Objective, seed: int) -> dict:
    """Token-weighted mean loss over the whole validation split, perplexity and bits per byte.

    Per-sample sums go through ``gather_for_metrics``, which drops the samples accelerate repeats to give every
    rank the same number of batches (so sharded models run the same forwards everywhere).
    """
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # (loss sum, tokens)
    with torch.no_grad(), isolated_rng(seed):  # masks of MLM/span eval are fixed; training RNG is untouched
        for batch in eval_dl:
            logits = model(**batch).logits
            stats = accelerator.gather_for_metrics(per_sample_loss(logits, batch["labels"], objective.name == "causal"))
            totals += stats.sum(0)
    model.train()
    loss = (totals[0] / totals[1].clamp(min=1)).item()
    bpb = None
    if objective.name == "causal" and objective.eval_tokens_per_byte:
        bpb = bits_per_byte(loss, objective.eval_tokens_per_byte, 1.0)
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0)), "eval_bits_per_byte": bpb}


def per_sample_loss(logits, labels, causal: bool) -> torch.Tensor:
    """(B, 2) float64: summed cross-entropy (nats) and number of scored tokens of each sample."""
    if causal:  # position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                            reduction="none").view(labels.shape)  # (B, T)
    scored = labels != -100
    return torch.stack([(nll * scored).sum(1), scored.sum(1)], dim=1).double()


def train(accelerator, model, train_ds, eval_ds, collator, objective: Objective, args) -> dict:
    """Train ``model`` for ``args.max_steps`` optimizer steps, resuming from the newest valid checkpoint.

    Returns ``{"step", "tokens", "eval", "stopped_by"}``; ``stopped_by`` is the signal number when SIGTERM/SIGINT
    ended the run early (a checkpoint was saved), else None. Raises ``TrainingDivergedError`` after
    ``args.max_nonfinite_steps`` non-finite losses in a row (each one skips its update).
    """
    from accelerate.utils import broadcast_object_list

    optimizer = build_optimizer(model, args, accelerator.device)
    scheduler = build_scheduler(optimizer, args)
    train_dl, eval_dl = build_dataloaders(train_ds, eval_ds, collator, args, accelerator)
    _check_enough_data(train_ds, args, accelerator.num_processes)
    if _stream(train_dl) is None:
        model, optimizer, train_dl, scheduler = accelerator.prepare(model, optimizer, train_dl, scheduler)
    else:  # a stream stays a plain DataLoader over this rank's part: its position is the dataset's state
        _set_deepspeed_batch_size(accelerator, args)
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    eval_dl = accelerator.prepare(eval_dl) if eval_dl is not None else None
    state = TrainState()
    resume = [latest_valid_checkpoint(args.output_dir) if accelerator.is_main_process else None]
    resume = broadcast_object_list(resume)[0]
    saved = {}
    if resume:
        saved = load_checkpoint(accelerator, resume)
        state.load_state_dict(saved)
        logger.info("resumed from %s (step %d, %d tokens)", resume, state.step, state.tokens)
    metrics = MetricsWriter(args.output_dir, accelerator.is_main_process, state.step if resume else None)
    batches = micro_batches(accelerator, train_dl, state.step * args.gradient_accumulation_steps, saved.get("stream"))
    tokens_per_step = (args.gradient_accumulation_steps * args.per_device_train_batch_size
                       * objective.tokens_per_sample * accelerator.num_processes)
    if resume and state.step and state.tokens != state.step * tokens_per_step:
        logger.warning("the checkpoint trained %d tokens a step, this launch %d (other processes, batch size or "
                       "accumulation): the data position is an estimate, and some samples are seen twice or not at "
                       "all until the next epoch", state.tokens // state.step, tokens_per_step)
    meter = _Meter(accelerator, objective)
    result = {"eval": None, "stopped_by": None}
    with GracefulStop() as stop, _progress(accelerator, args.max_steps, state.step) as bar:
        while state.step < args.max_steps:
            start = time.perf_counter()
            loss, bad, halt = _train_step(accelerator, model, optimizer, scheduler, batches, args, stop)
            state.step += 1
            state.tokens += tokens_per_step
            meter.add(loss, bad, time.perf_counter() - start, tokens_per_step, args.max_nonfinite_steps, state.step)
            bar.update(1)
            if state.step % args.logging_steps == 0 or state.step == args.max_steps:
                row = meter.row(state, scheduler.get_last_lr()[0])
                metrics.write(row)
                _report(accelerator, args, row, bar)
            if eval_dl is not None and (state.step % args.eval_steps == 0 or state.step == args.max_steps):
                result["eval"] = evaluate(accelerator, model, eval_dl, objective, args.seed)
                row = {"step": state.step, "tokens": state.tokens, **result["eval"]}
                metrics.write(row)
                _report(accelerator, args, row, bar)
            scheduled = state.step % args.save_steps == 0 or state.step == args.max_steps
            if halt or scheduled and meter.bad_in_a_row == 0:  # no checkpoint mid-streak: keep the good ones
                position = stream_position(accelerator, train_dl)  # {} unless the train split is streamed
                save_checkpoint(accelerator, args.output_dir, {**state.state_dict(), **position}, args.save_total_limit)
            if halt:
                result["stopped_by"] = stop.signum or 15
                logger.warning("stopping on signal %s at step %d; checkpoint saved", result["stopped_by"], state.step)
                break
    return {"step": state.step, "tokens": state.tokens, **result, "model": model}


def _set_deepspeed_batch_size(accelerator, args) -> None:
    """DeepSpeed reads an "auto" micro-batch size from a prepared DataLoader; a stream's is not prepared."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size


def _check_enough_data(train_ds, args, num_processes: int) -> None:
    if hasattr(train_ds, "__len__") and len(train_ds) < args.per_device_train_batch_size * num_processes:
        raise ValueError(f"the train split has {len(train_ds)} blocks, fewer than one batch "
                         f"(per_device_train_batch_size={args.per_device_train_batch_size} x {num_processes} "
                         "processes): max_steps cannot be reached; use more text or smaller batches/blocks")


def _train_step(accelerator, model, optimizer, scheduler, batches, args, stop):
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; skips the update on a bad loss."""
    losses = []
    for _ in range(args.gradient_accumulation_steps):
        batch = next(batches)
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
        losses.append(loss.detach().float())
    loss = torch.stack(losses).mean()
    # One collective per step: every rank agrees on skipping (a non-finite loss anywhere) and on stopping.
    flags = torch.stack([(~torch.isfinite(loss)).float(), torch.tensor(float(stop.requested), device=loss.device)])
    bad, halt = (accelerator.reduce(flags, "max") if accelerator.num_processes > 1 else flags).tolist()
    if not bad:
        if args.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), bool(bad), bool(halt)


class _Meter:
    """Loss average and throughput over the current logging window; counts non-finite steps in a row."""

    def __init__(self, accelerator, objective):
        self.accelerator, self.objective = accelerator, objective
        self.peak = peak_flops(accelerator.device) if objective.flops_per_token else None
        self.bad_in_a_row = 0
        self._reset()

    def _reset(self):
        self.loss_sum, self.steps, self.tokens, self.seconds = 0.0, 0, 0, 0.0

    def add(self, loss, bad: bool, seconds: float, tokens: int, limit: int, step: int):
        self.tokens += tokens
        self.seconds += seconds
        if bad:
            self.bad_in_a_row += 1
            logger.warning("non-finite loss at step %d: update skipped (%d in a row)", step, self.bad_in_a_row)
            if self.bad_in_a_row >= limit:
                raise TrainingDivergedError(
                    f"the loss was not finite for {self.bad_in_a_row} steps in a row (last at step {step}); "
                    "training stopped and the last good checkpoint is kept: lower learning_rate or check the data")
            return
        self.bad_in_a_row = 0
        self.loss_sum += loss
        self.steps += 1

    def row(self, state, lr) -> dict:
        """The train row for metrics.jsonl (a collective: every rank calls it at the same step)."""
        loss = None
        if self.steps:  # every rank has the same count: skipped steps are agreed on
            local = torch.tensor(self.loss_sum / self.steps, device=self.accelerator.device)
            loss = self.accelerator.reduce(local, "mean").item()
        tps = self.tokens / max(self.seconds, 1e-9)
        row = {"step": state.step, "loss": loss, "lr": lr, "tokens": state.tokens, "tokens_per_second": round(tps, 1)}
        if self.peak:
            mfu = tps * self.objective.flops_per_token / (self.peak * self.accelerator.num_processes)
            row["mfu"] = float(f"{mfu:.4g}")  # significant digits: a tiny model on a big GPU is at 1e-5
        self._reset()
        return row


@contextlib.contextmanager
def _progress(accelerator, total: int, initial: int):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process)
    try:
        yield bar
    finally:
        bar.close()


def _report(accelerator, args, row: dict, bar) -> None:
    """Show a row on the progress bar and send it to the trackers (TensorBoard, trackio) when enabled."""
    shown = {k: row[k] for k in ("loss", "eval_loss", "eval_bits_per_byte", "tokens_per_second", "mfu")
             if row.get(k) is not None}
    bar.set_postfix({k.replace("tokens_per_second", "tok/s"): f"{v:.4g}" for k, v in shown.items()}, refresh=False)
    if accelerator.is_main_process and "loss" not in row:
        bar.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if getattr(args, "report_to", "none") not in (None, "none", []):
        accelerator.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"])
