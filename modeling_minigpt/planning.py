"""Compute-optimal planning (Chinchilla, Hoffmann et al. 2022) and FLOP counting: the ``minigpt plan`` command.

Training compute is C = 6 N D (N parameters, D tokens). Every fit here has the form N_opt = G (C/6)^a and
D_opt = (C/6) / N_opt, so any one of C, N or D fixes the other two:

- ``chinchilla`` (default): the paper's Approaches 1 and 2 (a = b ~ 0.5), with G set so that 5.76e23 FLOPs gives
  the paper's own Chinchilla allocation, 70B parameters and 1.4T tokens (about 20 tokens per parameter).
- ``approach3``: the rounded Approach-3 loss fit (E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28), minimized
  under C = 6ND; it gives about 32B at 5.76e23, well below the paper's chosen 70B.
- ``epoch``: Besiroglu et al. 2024's refit of Approach 3 (E=1.8172, A=482.01, B=2085.43, alpha=0.3478,
  beta=0.3658): about 72B params and 1.33T tokens at 5.76e23.

For a loss L = E + A/N^alpha + B/D^beta, minimizing under C = 6ND gives G = (alpha A / (beta B))^(1/(alpha+beta))
and a = beta / (alpha + beta). The predicted loss is always the Epoch refit evaluated at (N, D): nats per token
on the paper's MassiveText with its tokenizer, a guide to scale, not a forecast for another corpus.
"""

import json
import math
import sys
from dataclasses import dataclass
from types import SimpleNamespace

CHINCHILLA_FLOPS, CHINCHILLA_PARAMS = 5.76e23, 70e9
EPOCH_LOSS = dict(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
APPROACH3_LOSS = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)

# Peak dense tensor-core TFLOP/s in bf16 (fp16 where the GPU has no bf16), from the vendors' data sheets.
GPU_PEAK_TFLOPS = {
    "h100": 989.0,       # H100 SXM
    "h100-pcie": 756.0,
    "h200": 989.0,
    "b200": 2250.0,
    "a100": 312.0,
    "a10": 125.0,
    "l40s": 362.0,
    "l4": 121.0,
    "rtx4090": 165.0,    # GeForce: fp16 accumulate; about half with fp32 accumulate
    "v100": 125.0,       # fp16
    "t4": 65.0,          # fp16
    "mi300x": 1307.0,
}

HEAD_DIM = 64
ASPECT_RANGE = (64, 128)  # hidden_size / num_hidden_layers
ASPECT_TARGET = 100       # Chinchilla-70B: 8192 / 80 = 102; GPT-3 and Llama 2: 128; GPT-2 small: 64


@dataclass(frozen=True)
class Fit:
    name: str
    description: str
    coefficient: float  # G in N_opt = G (C/6)^a
    exponent: float     # a

    def params_for_flops(self, flops: float) -> float:
        return self.coefficient * (flops / 6) ** self.exponent

    def flops_for_params(self, params: float) -> float:
        return 6 * (params / self.coefficient) ** (1 / self.exponent)

    def flops_for_tokens(self, tokens: float) -> float:
        # D = (C/6)^(1-a) / G
        return 6 * (tokens * self.coefficient) ** (1 / (1 - self.exponent))


def _loss_fit(name: str, description: str, E, A, B, alpha, beta) -> Fit:
    return Fit(name, description, (alpha * A / (beta * B)) ** (1 / (alpha + beta)), beta / (alpha + beta))


FITS = {
    "chinchilla": Fit("chinchilla", "Hoffmann et al. 2022 Approaches 1/2: N, D ~ C^0.5, anchored at Chinchilla "
                      "(70B params, 1.4T tokens at 5.76e23 FLOPs), about 20 tokens per parameter",
                      CHINCHILLA_PARAMS / (CHINCHILLA_FLOPS / 6) ** 0.5, 0.5),
    "approach3": _loss_fit("approach3", "Hoffmann et al. 2022 Approach 3, rounded published constants "
                           "(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)", **APPROACH3_LOSS),
    "epoch": _loss_fit("epoch", "Besiroglu et al. 2024 refit of Approach 3 (E=1.8172, A=482.01, B=2085.43, "
                       "alpha=0.3478, beta=0.3658)", **EPOCH_LOSS),
}


def predicted_loss(params: float, tokens: float, E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658) -> float:
    """L(N, D) = E + A / N^alpha + B / D^beta; the defaults are the Epoch refit."""
    return E + A / params ** alpha + B / tokens ** beta


# ---------------------------------------------------------------------------------------------------------------
# Counting parameters and FLOPs from any minigpt config (or a dict / namespace with the same fields)
# ---------------------------------------------------------------------------------------------------------------


def _fields(config) -> SimpleNamespace:
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    d, heads = get("hidden_size"), get("num_attention_heads")
    head_dim = get("head_dim") or d // heads
    decoder_layers = get("num_decoder_layers") if get("is_encoder_decoder", False) else None
    return SimpleNamespace(
        d=d, heads=heads, kv=get("num_key_value_heads") or heads, head_dim=head_dim, layers=get("num_hidden_layers"),
        decoder_layers=decoder_layers or 0, inter=get("intermediate_size") or 4 * d, gated=get("mlp_gated", False),
        vocab=get("vocab_size"), tied=get("tie_word_embeddings", True), positions=get("position_embedding_type",
        "learned"), max_pos=get("max_position_embeddings", 0), norm=get("norm_type", "layernorm"),
        pre_norm=get("norm_position", "pre") == "pre", attn_bias=get("attention_bias", True),
        mlp_bias=get("mlp_bias", True), buckets=get("relative_attention_num_buckets", 32),
        type_vocab=get("type_vocab_size"))


def _attention_params(f, bias=True) -> int:
    q, kv = f.heads * f.head_dim, f.kv * f.head_dim
    weights = 2 * f.d * q + 2 * f.d * kv  # q_proj, o_proj, k_proj, v_proj
    return weights + (q + 2 * kv + f.d if bias and f.attn_bias else 0)


def _mlp_params(f, bias=True) -> int:
    mats = 3 if f.gated else 2
    return mats * f.d * f.inter + ((mats - 1) * f.inter + f.d if bias and f.mlp_bias else 0)


def count_params(config, embeddings: bool = True) -> int:
    """Parameters of the backbone plus an untied LM head; task heads (BERT's pooler and MLM transform,
    classifiers) are not counted. ``embeddings=False`` leaves out the token, position and type embeddings and the
    output matrix (Kaplan et al.'s non-embedding count)."""
    f = _fields(config)
    norm = f.d * (1 if f.norm == "rmsnorm" else 2)
    layer = _attention_params(f) + _mlp_params(f) + 2 * norm
    total = f.layers * layer + norm * f.pre_norm
    if f.decoder_layers:  # T5: decoder layers add cross-attention; each stack has a bias table and a final norm
        total += f.decoder_layers * (layer + _attention_params(f) + norm) + norm + 2 * f.buckets * f.heads
    if f.type_vocab is not None:  # BERT: token types and an embedding norm (which stands in for layer 0's norm)
        total += norm * (1 if not f.pre_norm else 0)
    if not embeddings:
        return total
    total += f.vocab * f.d * (1 if f.tied else 2)
    total += f.max_pos * f.d if f.positions == "learned" else 0
    total += (f.type_vocab or 0) * f.d
    return total


def flops_per_token(config, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6 x (matmul weights, LM head included) + 12 x layers x seq_len x attention width
    for the score and value products (PaLM appendix B; nanoGPT's estimate_mfu). For an encoder-decoder the input
    and target are taken to have the same length and FLOPs are per target token (self- and cross-attention both
    count). Norms, biases and the softmax are left out."""
    f = _fields(config)
    seq_len = seq_len or f.max_pos
    if not seq_len or seq_len <= 0:
        raise ValueError(f"seq_len={seq_len!r} must be a positive integer (the config has no max_position_embeddings)")
    attention, mlp = _attention_params(f, bias=False), _mlp_params(f, bias=False)
    matmul = f.layers * (attention + mlp) + f.decoder_layers * (2 * attention + mlp) + f.vocab * f.d
    attention_layers = f.layers + 2 * f.decoder_layers
    return 6.0 * matmul + 12.0 * attention_layers * seq_len * f.heads * f.head_dim


# ---------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------


def suggest_config(params: float, vocab_size: int = 50257, seq_len: int = 2048) -> dict:
    """A GPT-2-style MiniGPT shape with about ``params`` parameters in all (embeddings included, as Chinchilla
    counts them): head_dim 64 (128 from 2048 wide), intermediate 4 x hidden, tied embeddings, learned positions.
    For each depth the width that hits ``params`` is rounded to a multiple of the head size inside the aspect
    range hidden/layers in [64, 128];
    the shape with the smallest |log(size error)| + 0.02 |log(aspect / 100)| wins, so the aspect ratio moves away
    from ~100 only to buy more than about 1% of size accuracy."""
    best, best_score = None, math.inf
    for layers in range(1, 513):
        fixed = (vocab_size + seq_len) * 1.0  # embedding rows per unit of width
        width = (-fixed + math.sqrt(fixed ** 2 + 48 * layers * params)) / (24 * layers)  # 12 L d^2 + fixed d = N
        step = _head_dim(width)
        for hidden in {step * math.floor(width / step), step * math.ceil(width / step)}:
            hidden = min(max(hidden, ASPECT_RANGE[0] * layers, step), ASPECT_RANGE[1] * layers)
            config = _gpt_config(layers, hidden, vocab_size, seq_len)
            score = (abs(math.log(count_params(config) / params))
                     + 0.02 * abs(math.log(hidden / layers / ASPECT_TARGET)))
            if score < best_score:
                best, best_score = config, score
    return best


def _head_dim(width: float) -> int:
    """64 as in GPT-2 up to 2k wide; 128 beyond, as in Chinchilla and Llama (fewer, larger heads)."""
    return HEAD_DIM if width < 2048 else 2 * HEAD_DIM


def _gpt_config(layers: int, hidden: int, vocab_size: int, seq_len: int) -> dict:
    return dict(model_type="minigpt", num_hidden_layers=layers, hidden_size=hidden,
                num_attention_heads=max(1, hidden // _head_dim(hidden)), intermediate_size=4 * hidden,
                vocab_size=vocab_size,
                max_position_embeddings=seq_len, tie_word_embeddings=True)


def _gpu_key(gpu: str) -> str:
    return gpu.lower().replace(" ", "").replace("_", "-")


def gpu_flops(gpu_hours: float, gpu: str, mfu: float = 0.4) -> float:
    """Training FLOPs bought by ``gpu_hours`` on ``gpu`` at model-FLOPs utilization ``mfu``."""
    key = _gpu_key(gpu)
    if key not in GPU_PEAK_TFLOPS:
        raise ValueError(f"gpu={gpu!r} is unknown; choose one of {', '.join(GPU_PEAK_TFLOPS)}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu={mfu!r} must be in (0, 1]")
    if gpu_hours <= 0:
        raise ValueError(f"gpu_hours={gpu_hours!r} must be positive")
    return gpu_hours * 3600 * GPU_PEAK_TFLOPS[key] * 1e12 * mfu


def plan(flops: float | None = None, params: float | None = None, tokens: float | None = None,
         fit: str = "chinchilla", vocab_size: int = 50257, seq_len: int = 2048) -> dict:
    """Compute-optimal (params, tokens, flops) from exactly one of them, with the predicted loss and a shape."""
    given = {k: v for k, v in (("flops", flops), ("params", params), ("tokens", tokens)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of flops, params or tokens (got {', '.join(given) or 'none'})")
    (name, value), = given.items()
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name}={value!r} must be a positive finite number")
    if fit not in FITS:
        raise ValueError(f"fit={fit!r} is unknown; choose one of {', '.join(FITS)}")
    law = FITS[fit]
    if params is not None:
        flops = law.flops_for_params(params)
    elif tokens is not None:
        flops = law.flops_for_tokens(tokens)
    params = params if params is not None else law.params_for_flops(flops)
    tokens = tokens if tokens is not None else flops / (6 * params)
    config = suggest_config(params, vocab_size, seq_len)
    return {
        "fit": law.name, "fit_description": law.description, "flops": flops, "params": params, "tokens": tokens,
        "tokens_per_param": tokens / params, "predicted_loss": predicted_loss(params, tokens),
        "loss_model": "epoch (Besiroglu et al. 2024), nats/token on MassiveText",
        "config": {**config, "params": count_params(config),
                   "flops_per_token": flops_per_token(config, seq_len)},
    }


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------

def _si(value: float) -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def run(args) -> int:
    if (args.gpu is not None) != (args.gpu_hours is not None):
        raise ValueError("--gpu-hours and --gpu go together (e.g. --gpu-hours 1000 --gpu h100)")
    for name in ("vocab_size", "seq_len"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be positive")
    flops = gpu_flops(args.gpu_hours, args.gpu, args.mfu) if args.gpu_hours is not None else args.flops
    result = plan(flops, args.params, args.tokens, args.fit, args.vocab_size, args.seq_len)
    if args.gpu_hours is not None:
        result["gpu"] = {"name": args.gpu, "hours": args.gpu_hours, "mfu": args.mfu,
                         "peak_tflops": GPU_PEAK_TFLOPS[_gpu_key(args.gpu)]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    c = result["config"]
    print(f"fit: {result['fit']}: {result['fit_description']}")
    if "gpu" in result:
        g = result["gpu"]
        print(f"compute: {g['hours']:g} h x {g['peak_tflops']:g} TFLOP/s ({g['name']}) x MFU {g['mfu']:g}")
    print(f"flops: {result['flops']:.3g}   params: {_si(result['params'])}   tokens: {_si(result['tokens'])}   "
          f"({result['tokens_per_param']:.1f} tokens/param)")
    print(f"predicted loss: {result['predicted_loss']:.3f} ({result['loss_model']})")
    print(f"suggested config: num_hidden_layers={c['num_hidden_layers']} hidden_size={c['hidden_size']} "
          f"num_attention_heads={c['num_attention_heads']} intermediate_size={c['intermediate_size']} "
          f"vocab_size={c['vocab_size']} -> {_si(c['params'])} params, {c['flops_per_token']:.3g} FLOPs/token "
          f"at seq_len {args.seq_len} (head_dim {c['hidden_size'] // c['num_attention_heads']}, "
          f"hidden/layers ~{c['hidden_size'] / c['num_hidden_layers']:.0f})")
    if not 2 / 3 < c["params"] / result["params"] < 3 / 2:
        print(f"note: no GPT-2-style shape (1-512 layers, head_dim 64-128, vocab {c['vocab_size']}) comes near "
              f"{_si(result['params'])} params; the suggested config is the nearest one", file=sys.stderr)
    return 0

