#!/usr/bin/env python
"""MiniGPT against transformers' LlamaForCausalLM and GPT2LMHeadModel, same shape and same weights.

The HF models are built at the issue's shape and converted with ``convert_from_hf``, so every pair shares its
weights. One run measures everything, round by round (A/B alternation, warmup excluded, contender order rotated
each round), and prints medians and per-round ratios; it is a script that prints numbers, not a timed test:

    python bench/bench_gpt.py                       # the full run: about 4 minutes on 2 cores
    python bench/bench_gpt.py --quick               # one round, fewer steps: a smoke run
    python bench/bench_gpt.py --rounds 5 --json out.json --compile
    python bench/bench_gpt.py --only generate      # the generate rows alone: under a minute

Contenders (training: forward + backward + AdamW step on (batch, seq) random tokens with labels):
  hf-default    the HF model, eager, ``torch.optim.AdamW`` with its defaults
  ours-eager    MiniGPT, eager, the same optimizer as hf-default (model against model)
  ours-default  MiniGPT as recommended: ``MiniGPTForCausalLM`` (chunked lm_head + CE when labels are given) and
                ``AdamW(fused=True)``
  *-compiled    ``torch.compile(model)`` for both, default optimizer each (only with --compile: about 90 s of
                compiling per model on 2 cores, and it bought MiniGPT nothing, see bench/README.md)
  gemm-floor    the step's GEMMs (forward and both backward ones per weight) and attention kernels alone, at the
                same shapes: no other op, no framework. It bounds what any implementation on these kernels reaches
Generation: ``generate()`` at batch 1, greedy, KV cache, a 64-token prompt and 128 new tokens (prefill included);
with --compile also compiled decoding (static cache + compile config, about 15 s of compiling per model).

MFU = tokens/s x planning.flops_per_token(config, seq) / the best fp32 matmul rate of the run (2048^3
``torch.mm``); "MFU gemm" divides by the best rate on the model's own forward GEMM shapes instead. A short matmul
runs between neighbouring contenders, and a contender's round counts only when the rates around it stayed within
80% of the best (another job on the cores shows up there first). Use --threads 1 on a machine shared with other jobs:
two OpenMP threads wait on each other whenever one core is taken, which swamps every difference between the
contenders.
"""

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from modeling_minigpt import convert_from_hf  # noqa: E402
from modeling_minigpt.minigpt_linear import linear  # noqa: E402
from modeling_minigpt.planning import flops_per_token  # noqa: E402

SHAPE = dict(vocab=8192, hidden=384, layers=6, heads=6, llama_intermediate=1024, seq=256, batch=8, threads=2)
GEN = dict(prompt=64, new_tokens=128)
TARGETS = {  # the targets: ratio or MFU name -> minimum
    "train llama ours-default/hf-default": 1.2,
    "train gpt2 ours-default/hf-default": 2.0,
    "MFU llama ours-default": 0.8,
    "generate gpt2 ours/hf": 1.5,
}


def build_hf(family: str):
    """Llama: MHA (6 query and 6 key/value heads), SwiGLU 1024, untied head. GPT-2: learned positions, tied head.
    Dropout is 0 in both so the two families do the same work as MiniGPT's converted copy."""
    import transformers as tf

    tf.logging.set_verbosity_error()
    s = SHAPE
    torch.manual_seed(0)
    if family == "llama":
        config = tf.LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                                num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                                intermediate_size=s["llama_intermediate"], max_position_embeddings=512,
                                tie_word_embeddings=False, attn_implementation="sdpa")
        return tf.LlamaForCausalLM(config)
    config = tf.GPT2Config(vocab_size=s["vocab"], n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"],
                           n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                           eos_token_id=None, attn_implementation="sdpa")
    return tf.GPT2LMHeadModel(config)


def matmul_rate(shapes, min_seconds=0.25) -> float:
    """GFLOP/s of fp32 ``torch.mm`` over ``shapes`` [(m, k, n), ...], repeated for at least ``min_seconds``."""
    mats = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in mats:
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for a, b in mats:
            a @ b
        reps += 1
    return reps * flops / (time.perf_counter() - start) / 1e9


def gemm_shapes(config, tokens: int):
    """The forward GEMMs of one layer plus the LM head, as (m, k, n)."""
    d, f = config.hidden_size, config.intermediate_size
    mlp = [(tokens, d, f)] * (3 if config.mlp_gated else 1) + [(tokens, f, d)]
    return [(tokens, d, d)] * 4 + mlp + [(tokens, d, config.vocab_size)]


@dataclass
class Contender:
    kind: str  # "train" | "generate"
    run: object  # a no-argument callable
    tokens: int  # tokens per call
    warmup: int  # calls before timing
    flops_per_token: float = 0.0  # training FLOPs per token; 0 for generation


def make_train_step(model, optimizer_kwargs, compiled=False):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **optimizer_kwargs)
    run = torch.compile(model) if compiled else model
    ids = torch.randint(0, SHAPE["vocab"], (SHAPE["batch"], SHAPE["seq"]), generator=torch.Generator().manual_seed(1))

    def step():
        loss = run(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def make_generate(model, compiled=False):
    """Batch-1 greedy ``generate()``; ``compiled``: transformers' compiled decoding (a static cache and a compile
    config; on CPU generate() compiles only when the config says ``_compile_all_devices``)."""
    model.eval()
    ids = torch.randint(0, SHAPE["vocab"], (1, GEN["prompt"]), generator=torch.Generator().manual_seed(2))
    n = GEN["new_tokens"]
    kwargs = {}
    if compiled:
        from transformers import CompileConfig

        kwargs = {"cache_implementation": "static", "compile_config": CompileConfig(fullgraph=True, dynamic=False)}
        kwargs["compile_config"]._compile_all_devices = True

    def gen():
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0, **kwargs)
        if out.shape[1] != ids.shape[1] + n:
            raise RuntimeError(f"generate() returned {out.shape[1] - ids.shape[1]} new tokens, expected {n}")
    return gen


def _weight_matrices(model):
    """The model's weight matrices as (out, in) tensors. Embeddings are lookups, not GEMMs: a tied one is listed
    once, as the token embedding, and stands for the head."""
    lookups = ("embed_positions",) + (() if model.config.tie_word_embeddings else ("embed_tokens",))
    return [p.detach() for name, p in model.named_parameters() if p.dim() == 2 and not any(k in name for k in lookups)]


def make_weight_floor(model, tokens=16):
    """One decoding step's GEMVs and nothing else: every weight matrix times one row, ``tokens`` times, run as the
    model runs them (``minigpt_linear.linear``: split over the threads at batch 1). At batch 1 a step must stream
    all the weights from memory, so this bounds the generation speed of any implementation that uses these GEMVs."""
    mats = _weight_matrices(model)
    layers = []
    for m in mats:
        layer = torch.nn.Linear(m.shape[1], m.shape[0], bias=False)
        layer.weight = torch.nn.Parameter(m, requires_grad=False)  # shares the model's weight
        layers.append(layer)
    x = {m.shape[1]: torch.randn(1, m.shape[1]) for m in mats}

    def run():
        with torch.inference_mode():
            for _ in range(tokens):
                for layer in layers:
                    linear(layer, x[layer.in_features])
    return run


def make_train_floor(model):
    """One training step's GEMMs and attention kernels and nothing else: for every weight, the forward GEMM and
    the two backward ones (input and weight gradients) at the step's shape, and per layer the causal
    ``scaled_dot_product_attention`` forward and backward. No norm, activation, loss, optimizer or framework
    overhead, so this bounds the training speed of any implementation built on these kernels: a ratio to HF above
    this floor's cannot be reached on this machine."""
    config, (b, t) = model.config, (SHAPE["batch"], SHAPE["seq"])
    mats = _weight_matrices(model)
    xs = {m.shape[1]: torch.randn(b * t, m.shape[1]) for m in mats}  # layer inputs
    gs = {m.shape[0]: torch.randn(b * t, m.shape[0]) for m in mats}  # output gradients
    heads, head_dim = config.num_attention_heads, config.head_dim
    q, k, v = (torch.randn(b, heads, t, head_dim, requires_grad=True) for _ in range(3))
    grad = torch.randn(b, heads, t, head_dim)

    def run():
        for w in mats:
            x, g = xs[w.shape[1]], gs[w.shape[0]]
            x @ w.t(), g @ w, g.t() @ x
        for _ in range(config.num_hidden_layers):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(out, (q, k, v), grad)
    return run


def contenders(args):
    """{"train llama hf-default": Contender, ...} and the Llama-shaped MiniGPT config (for the GEMM shapes)."""
    out, tokens, gemm_config = {}, SHAPE["batch"] * SHAPE["seq"], None
    for family in args.families:
        hf = build_hf(family)
        ours = convert_from_hf(hf)
        gemm_config = gemm_config or ours.config
        flops = flops_per_token(ours.config, SHAPE["seq"])
        train = {"hf-default": (hf, {}, False), "ours-eager": (ours, {}, False),
                 "ours-default": (ours, {"fused": True}, False)}
        if args.compile:
            train |= {"hf-compiled": (hf, {}, True), "ours-compiled": (ours, {}, True)}
        for who, (model, opt_kwargs, compiled) in train.items():
            step = make_train_step(model, opt_kwargs, compiled)
            out[f"train {family} {who}"] = Contender("train", step, tokens, 2 if compiled else 1, flops)
        out[f"train {family} gemm-floor"] = Contender("train", make_train_floor(ours), tokens, 1, flops)
        generate = {"hf": (hf, False), "ours": (ours, False)}
        if args.compile:
            generate |= {"hf-compiled": (hf, True), "ours-compiled": (ours, True)}
        for who, (model, compiled) in generate.items():
            run = make_generate(model, compiled)
            out[f"generate {family} {who}"] = Contender("generate", run, GEN["new_tokens"], 1)
        out[f"generate {family} weights-only"] = Contender("generate", make_weight_floor(ours), 16, 1)
    return {name: c for name, c in out.items() if c.kind in args.only}, gemm_config


def measure(args, table):
    """Rounds of every contender, in an order rotated each round, with a short 2048^3 matmul measurement between
    neighbours: ``mm NAME`` is the lower of the rates just before and just after NAME ran."""
    rounds, names = [], list(table)
    for name, c in table.items():
        start = time.perf_counter()
        for _ in range(c.warmup):
            c.run()
        print(f"  warmup {name}: {time.perf_counter() - start:.1f}s", file=sys.stderr)
    for r in range(args.rounds):
        row = {"gemm": matmul_rate(args.gemm_shapes)}
        before = matmul_rate([(2048, 2048, 2048)], min_seconds=0.15)
        for name in names[r % len(names):] + names[:r % len(names)]:
            c = table[name]
            calls = args.steps if c.kind == "train" else 1
            start = time.perf_counter()
            for _ in range(calls):
                c.run()
            row[name] = calls * c.tokens / (time.perf_counter() - start)
            after = matmul_rate([(2048, 2048, 2048)], min_seconds=0.15)
            row[f"mm {name}"], before = min(before, after), after
        rounds.append(row)
        print(f"  round {r + 1}/{args.rounds}: load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    return rounds


def summarize(table, rounds, clean_fraction=0.8):
    """Medians over the clean rounds of each contender (or pair): those whose neighbouring matmul rate stayed
    within ``clean_fraction`` of the best seen. Another job on the cores shows there first; all rounds are used
    when none is clean, and the count of rounds used is reported."""
    best = max(v for r in rounds for k, v in r.items() if k.startswith("mm "))
    clean = {name: [r for r in rounds if r[f"mm {name}"] >= clean_fraction * best] or rounds for name in table}
    rate = {name: statistics.median(r[name] for r in clean[name]) for name in table}
    best_gemm = max(r["gemm"] for r in rounds)  # MFU against the machine's uncontended rates: never flattered
    mfu = {name: rate[name] * c.flops_per_token / 1e9 / best for name, c in table.items() if c.flops_per_token}
    mfu_gemm = {name: rate[name] * c.flops_per_token / 1e9 / best_gemm
                for name, c in table.items() if c.flops_per_token}
    pairs = {"ours-default": ["hf-default"], "ours-eager": ["hf-default"], "ours": ["hf"],
             "ours-compiled": ["hf-compiled", "hf"],  # generate: compiled against compiled, and against HF's default
             "weights-only": ["hf"],  # weights-only/hf: the most any batch-1 decoder could gain over HF here
             "gemm-floor": ["hf-default"]}  # the same for training: GEMMs and attention kernels alone
    ratios, used = {}, {}
    for name in table:
        kind, family, who = name.split(" ")
        for partner in pairs.get(who, []):
            other = f"{kind} {family} {partner}"
            if other in table:  # hf-default is also HF's eager, so ours-eager/hf-default is eager against eager
                both = [r for r in clean[name] if r in clean[other]] or rounds
                key = f"{kind} {family} {who}/{partner}"
                ratios[key], used[key] = statistics.median(r[name] / r[other] for r in both), len(both)
    return {"tokens_per_s": rate, "mfu": mfu, "mfu_gemm_shaped": mfu_gemm, "ratios": ratios, "rounds_used": used,
            "mm2048_gflops_best": best, "gemm_shaped_gflops_best": best_gemm}


def report(summary, args):
    print(f"\nshape {SHAPE}, threads {args.threads}, generate {GEN}, fp32, torch {torch.__version__}, "
          f"{args.rounds} rounds x {args.steps} steps, load avg {os.getloadavg()[0]:.2f}")
    print(f"fp32 matmul (best of the run): 2048^3 {summary['mm2048_gflops_best']:.1f} GFLOP/s; model-shaped GEMMs "
          f"{summary['gemm_shaped_gflops_best']:.1f} GFLOP/s\n")
    print(f"{'contender':32} {'tokens/s':>9} {'MFU':>6} {'MFU gemm':>9}")
    for name, rate in summary["tokens_per_s"].items():
        mfu = summary["mfu"].get(name)
        extra = f"{mfu:6.1%} {summary['mfu_gemm_shaped'][name]:9.1%}" if mfu else ""
        print(f"{name:32} {rate:9.1f} {extra}")
    print(f"\n{'ratio (median of per-round ratios)':42} {'value':>6} {'rounds':>6}  target")
    for name, value in summary["ratios"].items():
        target = TARGETS.get(name)
        mark = "" if target is None else f"  >= {target}: {'met' if value >= target else 'NOT met'}"
        kind_family = " ".join(name.split(" ")[:2])  # the floor of this row's kind: no implementation gets past it
        floor = summary["ratios"].get(kind_family + (" weights-only/hf" if name.startswith("generate")
                                                     else " gemm-floor/hf-default"))
        if target is not None and floor is not None:
            mark += f" (the kernels alone reach {floor:.2f})"
        print(f"{name:42} {value:6.2f} {summary['rounds_used'][name]:6d}{mark}")
    mfu = summary["mfu"].get("train llama ours-default")
    if mfu is not None:
        print(f"{'MFU llama ours-default':42} {mfu:6.1%} {'':6}  >= 80%: {'met' if mfu >= 0.8 else 'NOT met'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="A/B rounds after warmup (default 5)")
    parser.add_argument("--steps", type=int, default=1, help="training steps per contender per round (default 1: "
                        "finer alternation beats longer samples on a noisy machine)")
    parser.add_argument("--quick", action="store_true", help="one round of one step, no compile: a smoke run")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (slow to compile)")
    parser.add_argument("--families", nargs="+", default=["llama", "gpt2"], choices=["llama", "gpt2"])
    parser.add_argument("--only", nargs="+", default=["train", "generate"], choices=["train", "generate"],
                        help="measure only these kinds of rows (default both)")
    parser.add_argument("--threads", type=int, default=SHAPE["threads"])
    parser.add_argument("--json", type=Path, help="also write the rounds and the summary here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.compile = 1, 1, False
    torch.set_num_threads(args.threads)
    table, gemm_config = contenders(args)
    args.gemm_shapes = gemm_shapes(gemm_config, SHAPE["batch"] * SHAPE["seq"])
    rounds = measure(args, table)
    summary = summarize(table, rounds)
    report(summary, args)
    if args.json:
        args.json.write_text(json.dumps({"shape": SHAPE, "rounds": rounds, **summary}, indent=1))


if __name__ == "__main__":
    main()
