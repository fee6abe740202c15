"""Projections at batch-1 decoding: one GEMV per weight, split over the CPU's threads. Ships to the Hub.

Decoding one token at batch 1 turns every projection into a GEMV, and a step streams each weight from memory
once. MKL gets almost nothing from a second thread on GEMVs of a small model's sizes (measured), so the other
cores and their share of the memory bandwidth sit idle. ``linear`` splits such a GEMV by output rows into one
``bmm``, which torch spreads over its intra-op threads. Each output is still the dot product of one contiguous
weight row with the input, computed by the same kernel, so the values are those of ``F.linear`` up to rounding
(bit for bit at the benchmark's shapes). On the 2-core benchmark VM the GEMVs of a 384-wide model ran 1.2-1.7x
faster, and batch-1 ``generate()`` about 1.1x (see bench/README.md). Like every parallel region, the split waits
for any thread that the OS has descheduled: on a machine that other jobs share, set ``torch.set_num_threads`` to
the free cores. Under ``torch.compile`` the split traces into the graph (the thread count is a compile-time
constant), so compiled decoding keeps it: with a static cache, batch-1 ``generate()`` then ran 1.65-1.86x HF
GPT-2's default and 1.2-1.5x HF GPT-2 compiled the same way.
"""

import math

import torch
from torch import nn
from torch.nn.modules import module as nn_module


@torch.compiler.assume_constant_result
def _threads() -> int:
    """``torch.get_num_threads()``; a constant to ``torch.compile`` (a graph break per projection otherwise)."""
    return torch.get_num_threads()


def plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose call runs ``F.linear`` and nothing else: not a PEFT or quantized subclass, no
    DTensor or quantized weight, no hook, no patched forward. Only such a module may be computed from its weight."""
    return (type(module) is nn.Linear and type(module._parameters["weight"]) is nn.Parameter
            and not (module._forward_hooks or module._forward_pre_hooks or "forward" in module.__dict__
                     or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks))


# The smallest weight (elements; 512 KB in fp32) worth a parallel region. Waking a second thread costs tens of µs,
# more than a small GEMV: with every weight split, the 4 x 128 presets generated 5-10% slower at 2 threads. Measured in
# bench/README.md ("Batch-1 generate"): this size keeps the split's whole gain at the benchmark shape.
MIN_SPLIT_WEIGHT = 1 << 17


def gemv_parts(module: nn.Module, x: torch.Tensor) -> int:
    """Into how many row blocks ``linear`` splits ``module(x)``: the thread count (or its largest divisor of the
    output size) for one fp32 row of at most 3 dims on a multi-threaded CPU, without autograd, when the weight has
    at least ``MIN_SPLIT_WEIGHT`` elements; 0: call the module. Runs at every projection of a decoding step, where
    each Python-level tensor query costs 0.1-1 µs: the cheapest tests come first (``is_cpu``, not ``device.type``)."""
    threads = _threads()
    if threads < 2 or x.numel() != x.shape[-1] or x.dim() > 3 or torch.is_grad_enabled():
        return 0
    if not x.is_cpu or x.dtype != torch.float32 or not plain_linear(module):
        return 0
    weight = module._parameters["weight"]  # the dict, not nn.Module.__getattr__: a Python call per lookup
    if weight.dtype != torch.float32 or weight.numel() < MIN_SPLIT_WEIGHT or not weight.is_contiguous():
        return 0
    parts = math.gcd(weight.shape[0], threads)
    return parts if parts > 1 else 0


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``. A single row (batch-1 decoding) runs as a GEMV split over the threads (see the module doc)."""
    parts = gemv_parts(module, x)
    if not parts:
        return module(x)
    weight, bias = module._parameters["weight"], module._parameters["bias"]
    out, width = weight.shape
    rows = out // parts
    blocks = weight.as_strided((parts, width, rows), (rows * width, 1, width))  # (parts, in, out/parts), transposed
    row = x.expand(parts, 1, width)  # (parts, 1, in)
    y = torch.bmm(row, blocks) if bias is None else torch.baddbmm(bias.view(parts, 1, rows), row, blocks)
    # (parts, 1, out/parts) holds the outputs in order. Ints, not a torch.Size: view() parses a Size 2-3x slower.
    return y.view(*x.shape[:-1], out)


__all__ = ["plain_linear", "gemv_parts", "linear"]
