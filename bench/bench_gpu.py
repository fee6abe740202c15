#!/usr/bin/env python
"""GPU training throughput: MiniGPT against transformers' GPT2LMHeadModel at GPT-2 small (124M), same weights.

bf16 autocast over fp32 weights (as accelerate's ``mixed_precision: bf16``), fused AdamW, batch 16 x 1024,
forward + backward + step. Rows: HF eager, ours eager with the fused LM-head loss (the training default), ours with
plain logits + cross-entropy (``skip_logits=False``), and with ``--compile`` both compiled. MFU = tokens/s x
``planning.flops_per_token`` / the GPU's dense bf16 peak. Contenders alternate round by round; medians are printed.

    python bench/bench_gpu.py                 # on a CUDA machine: about 1 minute
    python bench/bench_gpu.py --compile       # adds torch.compile rows (a few minutes of compilation)
"""

import argparse
import functools
import statistics
import time

import torch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender per round")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--chunk-rows", type=int, nargs="*", default=[],
                        help="extra rows: the fused loss with these chunk sizes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")
    from transformers import GPT2Config, GPT2LMHeadModel

    from modeling_minigpt import convert_from_hf
    from modeling_minigpt import modeling_minigpt_gpt as gpt_module
    from modeling_minigpt.planning import flops_per_token
    from modeling_minigpt.training.metrics import peak_flops

    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50304, n_positions=args.seq, resid_pdrop=0.0, embd_pdrop=0.0,
                                    attn_pdrop=0.0, attn_implementation="sdpa"))
    ours = convert_from_hf(hf)
    hf, ours = hf.to(device).train(), ours.to(device).train()
    ids = torch.randint(0, 50304, (args.batch, args.seq), device=device)
    contenders = {"hf eager": (hf, {}), "ours eager (fused loss)": (ours, {}),
                  "ours eager (plain loss)": (ours, {"skip_logits": False})}
    for rows in args.chunk_rows:
        contenders[f"ours eager (fused, {rows} rows)"] = (ours, {"_chunk_rows": rows})
    if args.compile:
        contenders["hf compiled"] = (torch.compile(hf), {})
        contenders["ours compiled"] = (torch.compile(ours), {})
    optimizers = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-5, fused=True) for m in (hf, ours)}

    fused_loss = gpt_module.causal_lm_loss_fused

    def step(model, kwargs):
        kwargs = dict(kwargs)
        rows = kwargs.pop("_chunk_rows", None)
        gpt_module.causal_lm_loss_fused = functools.partial(fused_loss, chunk_rows=rows) if rows else fused_loss
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, **kwargs).loss
        loss.backward()
        base = getattr(model, "_orig_mod", model)
        optimizers[id(base)].step()
        optimizers[id(base)].zero_grad(set_to_none=True)

    for name, (model, kwargs) in contenders.items():  # warmup (and compilation)
        start = time.perf_counter()
        for _ in range(3):
            step(model, kwargs)
        torch.cuda.synchronize()
        print(f"warmup {name}: {time.perf_counter() - start:.1f} s", flush=True)
    tokens = args.batch * args.seq * args.steps
    rates = {name: [] for name in contenders}
    for r in range(args.rounds):
        names = list(contenders)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            model, kwargs = contenders[name]
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, kwargs)
            torch.cuda.synchronize()
            rates[name].append(tokens / (time.perf_counter() - start))
    peak = peak_flops(device)
    fpt = flops_per_token(ours.config, args.seq)
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}, GPT-2 124M, batch {args.batch} x {args.seq}, "
          f"bf16 autocast, {args.rounds} rounds x {args.steps} steps, peak {peak / 1e12:.0f} TFLOP/s")
    base = statistics.median(rates["hf eager"])
    for name, values in rates.items():
        tps = statistics.median(values)
        print(f"{name:34s} {tps:10.0f} tok/s  MFU {tps * fpt / peak:6.1%}  x{tps / base:5.2f} hf eager"
              f"  peak mem {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
