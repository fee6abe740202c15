#!/usr/bin/env python
"""A/B one performance lever of MiniGPT at the bench shape: the same model, lever off then on, alternating.

    python bench/levers.py fused-loss              # training step, Llama shape
    python bench/levers.py rope --family llama --rounds 10
    python bench/levers.py split-gemv --family gpt2 --threads 2
    python bench/levers.py split-floor --preset tiny --threads 2   # a preset's own shape instead of the bench's

"off" restores the implementation the lever replaced (kept below as the reference), so each number in
bench/README.md can be re-measured. Prints tokens/s per round and the median of the per-round on/off ratios.
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_gpt import GEN, SHAPE, build_hf  # noqa: E402

from modeling_minigpt import MiniGPTConfig, MiniGPTForCausalLM, convert_from_hf, minigpt_linear  # noqa: E402
from modeling_minigpt import minigpt_layers as layers  # noqa: E402
from modeling_minigpt import modeling_minigpt_gpt as gpt  # noqa: E402

# ------------------------------------------------------------------------------------------------ the references


def _rotary_reference_forward(self, hidden_states, position_ids):
    inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
    return hidden_states, (emb.cos(), emb.sin())


def _apply_rotary_reference(q, k, cos, sin):
    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def _rmsnorm_reference_forward(self, x):
    return torch.nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)


def _linear_reference(module, x):
    return module(x)


@contextlib.contextmanager
def patched(obj, **attrs):
    saved = {name: getattr(obj, name) for name in attrs}
    for name, value in attrs.items():
        setattr(obj, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(obj, name, value)


# ------------------------------------------------------------------------------------------------ the levers


def train_arms(model, lever):
    """(off, on) no-argument training steps."""
    ids = torch.randint(0, SHAPE["vocab"], (SHAPE["batch"], SHAPE["seq"]), generator=torch.Generator().manual_seed(1))
    model.train()

    def make(forward_kwargs=None, optimizer_kwargs=None, context=contextlib.nullcontext, run=model):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **(optimizer_kwargs or {}))

        def step():
            with context():
                run(input_ids=ids, labels=ids, **(forward_kwargs or {})).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    if lever == "fused-loss":
        return make({"skip_logits": False}), make({"skip_logits": True})
    if lever == "fused-adamw":
        return make(), make(optimizer_kwargs={"fused": True})
    if lever == "rope":
        off = lambda: _stack(patched(layers.RotaryEmbedding, forward=_rotary_reference_forward),  # noqa: E731
                             patched(layers, apply_rotary=_apply_rotary_reference))
        return make(context=off), make()
    if lever == "rmsnorm":
        return make(context=lambda: patched(layers.RMSNorm, forward=_rmsnorm_reference_forward)), make()
    if lever == "compile":
        return make(), make(run=torch.compile(model))
    raise ValueError(f"lever={lever!r} is not a training lever")


@contextlib.contextmanager
def _stack(*contexts):
    with contextlib.ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        yield


def generate_arms(model, lever):
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, GEN["prompt"]), generator=torch.Generator().manual_seed(2))
    n = GEN["new_tokens"]

    def make(context=contextlib.nullcontext):
        def gen():
            with context(), torch.inference_mode():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)
        return gen

    if lever == "rope-decode":
        off = lambda: _stack(patched(layers.RotaryEmbedding, forward=_rotary_reference_forward),  # noqa: E731
                             patched(layers, apply_rotary=_apply_rotary_reference))
        return make(off), make()
    if lever == "split-gemv":  # needs --threads 2 or more: one thread never splits
        off = lambda: _stack(patched(layers, linear=_linear_reference), patched(gpt, linear=_linear_reference))  # noqa: E731
        return make(off), make()
    if lever == "split-floor":  # off: split every weight, however small
        return make(lambda: patched(minigpt_linear, MIN_SPLIT_WEIGHT=0)), make()
    raise ValueError(f"lever={lever!r} is not a generation lever")


TRAIN_LEVERS = ("fused-loss", "fused-adamw", "rope", "rmsnorm", "compile")
GENERATE_LEVERS = ("rope-decode", "split-gemv", "split-floor")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lever", choices=TRAIN_LEVERS + GENERATE_LEVERS)
    parser.add_argument("--family", default="llama", choices=["llama", "gpt2"])
    parser.add_argument("--preset", help="generation levers: a MiniGPT preset with random weights "
                        "instead of the bench shape")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=SHAPE["threads"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = args.lever in TRAIN_LEVERS
    if args.preset and not train:
        torch.manual_seed(0)
        model = MiniGPTForCausalLM(MiniGPTConfig.from_preset(args.preset))
    else:
        model = convert_from_hf(build_hf(args.family))
    off, on = train_arms(model, args.lever) if train else generate_arms(model, args.lever)
    tokens = SHAPE["batch"] * SHAPE["seq"] if train else GEN["new_tokens"]
    for arm in (off, on):
        arm()
        arm()
    rates = {"off": [], "on": []}
    for r in range(args.rounds):
        for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
            start = time.perf_counter()
            (off if name == "off" else on)()
            rates[name].append(tokens / (time.perf_counter() - start))
        print(f"round {r + 1}: off {rates['off'][-1]:8.1f}  on {rates['on'][-1]:8.1f} tokens/s", flush=True)
    ratio = statistics.median(b / a for a, b in zip(rates["off"], rates["on"]))
    print(f"{args.lever} ({args.preset or args.family}): off {statistics.median(rates['off']):.1f}, on "
          f"{statistics.median(rates['on']):.1f} tokens/s; on/off {ratio:.3f} (median of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
