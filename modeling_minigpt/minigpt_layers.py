"""The one block library that GPT, BERT and T5 share. Ships to the Hub: imports only torch and transformers.

It reads top to bottom in the order the data flows: norms, positions, attention, MLP, the layer, the
pretrained-model base. The family files hold only what differs: embeddings, masks, stacks and heads.

One transformer layer (pre-norm shown; post-norm puts each norm after its residual add)::

    x ──┬─────────────────────────────┐
        └─ norm ─ self-attention ─ drop ─(+)──┬─────────────────────────────┐
                                              └─ norm ─ cross-attn ─ drop ─(+)─┬──────────────────────┐
                   (decoder of an encoder-decoder only)                         └─ norm ─ MLP ─ drop ─(+)─ out
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_minigpt import MiniConfigBase
from .minigpt_linear import linear

# ---------------------------------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------------------------------


class _RMSNormFunction(torch.autograd.Function):
    """fp32 RMSNorm in 4 passes forward and 6 backward; torch's composite ``F.rms_norm`` (no fused CPU kernel)
    takes about twice as many, each one a full read and write of the activations."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        x_hat = x * rstd
        grad_weight = (grad * x_hat).flatten(0, -2).sum(0)
        grad_x_hat = grad * weight
        dot = (grad_x_hat * x_hat).mean(-1, keepdim=True)  # (..., 1)
        return grad_x_hat.sub_(x_hat.mul_(dot)).mul_(rstd), grad_weight, None


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama, T5): no mean subtraction, no bias; computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            # Training: fewer passes. Inference and torch.compile (which fuses the composite): one call, fewer ops.
            training = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
            if training and not torch.compiler.is_compiling():
                return _RMSNormFunction.apply(x, self.weight, self.eps)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Half precision: normalize in fp32, then scale in the input dtype, exactly as Llama and T5 do.
        h = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return self.weight * h.to(x.dtype)


def build_norm(config: MiniConfigBase) -> nn.Module:
    if config.norm_type == "rmsnorm":
        return RMSNorm(config.hidden_size, eps=config.norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps)


# ---------------------------------------------------------------------------------------------------------------
# Positions. Each module maps (hidden_states, position_ids) -> (hidden_states, rotary (cos, sin) or None), so a
# stack needs one line whatever the encoding. T5's relative bias acts inside attention instead.
# ---------------------------------------------------------------------------------------------------------------


class LearnedPositionalEmbedding(nn.Embedding):
    """A trained vector per absolute position (GPT-2, BERT)."""

    def forward(self, hidden_states, position_ids):
        if (not torch.compiler.is_compiling() and position_ids.numel()
                and int(position_ids.max()) >= self.num_embeddings):
            raise ValueError(
                f"position {int(position_ids.max())} is beyond max_position_embeddings={self.num_embeddings}: "
                "shorten the input or train a model with a longer position table"
            )
        return hidden_states + super().forward(position_ids), None


class SinusoidalPositionalEmbedding(nn.Module):
    """The fixed sin/cos encoding of 'Attention Is All You Need'; no parameters, any length."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size

    def forward(self, hidden_states, position_ids):
        half = self.hidden_size // 2
        inv_freq = torch.exp(
            torch.arange(half, device=hidden_states.device, dtype=torch.float32) * (-math.log(10000.0) / half)
        )
        angles = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
        pe = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if pe.shape[-1] < self.hidden_size:  # odd width: pad one zero channel
            pe = F.pad(pe, (0, 1))
        return hidden_states + pe.to(hidden_states.dtype), None


class RotaryEmbedding(nn.Module):
    """RoPE: rotate each (q, k) channel pair by an angle proportional to the position (Su et al. 2021).

    Uses the half-split layout of HF Llama, so converted Llama checkpoints give identical logits.
    The frequencies are recomputed per call (head_dim/2 values): no buffer to initialise or move.
    Returns (cos, sin) of shape (B, T, hd) like transformers, except that rotate_half's sign is folded into
    ``sin``: its first half is negated (see ``apply_rotary``). Computed once per forward, shared by all layers.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, hidden_states, position_ids):
        device = hidden_states.device
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
                                         / self.head_dim))
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, hd/2)
        cos, sin = freqs.cos(), freqs.sin()
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)  # (B, T, hd)
        return hidden_states, (cos.to(hidden_states.dtype), sin.to(hidden_states.dtype))


def apply_rotary(q, k, cos, sin):
    """x cos + rotate_half(x) sin, where rotate_half(x) = (-x2, x1) = roll(x) with its sign already in ``sin``:
    3 ops per tensor instead of 7 (fewer passes in training, fewer small ops when decoding)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd) broadcasts over heads
    half = q.shape[-1] // 2
    return (q * cos).addcmul_(q.roll(half, -1), sin), (k * cos).addcmul_(k.roll(half, -1), sin)


class NoPositions(nn.Module):
    def forward(self, hidden_states, position_ids):
        return hidden_states, None


def build_positions(config: MiniConfigBase) -> nn.Module:
    """The absolute/rotary encoding named by ``config.position_embedding_type`` (T5's relative bias is separate)."""
    kind = config.position_embedding_type
    if kind == "learned":
        return LearnedPositionalEmbedding(config.max_position_embeddings, config.hidden_size)
    if kind == "sinusoidal":
        return SinusoidalPositionalEmbedding(config.hidden_size)
    if kind == "rope":
        return RotaryEmbedding(config.head_dim, config.rope_theta)
    return NoPositions()


class RelativePositionBias(nn.Module):
    """T5's bucketed relative position bias: one learned scalar per (bucket, head), added to attention scores.

    Computed once per stack and shared by all its layers. Half the buckets are exact offsets, the rest grow
    logarithmically up to ``max_distance`` (Raffel et al. 2020, section 2.1).
    """

    def __init__(self, config: MiniConfigBase, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.relative_attention_bias = nn.Embedding(self.num_buckets, config.num_attention_heads)

    def bucket(self, relative_position):
        num_buckets, buckets = self.num_buckets, 0
        if self.bidirectional:
            num_buckets //= 2
            buckets = (relative_position > 0).long() * num_buckets
            relative_position = relative_position.abs()
        else:
            relative_position = -torch.clamp(relative_position, max=0)
        max_exact = num_buckets // 2
        is_small = relative_position < max_exact
        large = max_exact + (
            torch.log(relative_position.float() / max_exact) / math.log(self.max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
        large = torch.clamp(large, max=num_buckets - 1)
        return buckets + torch.where(is_small, relative_position, large)

    def forward(self, query_length: int, key_length: int, past_length=0):
        device = self.relative_attention_bias.weight.device
        context = torch.arange(query_length, device=device)[:, None] + past_length
        memory = torch.arange(key_length, device=device)[None, :]
        values = self.relative_attention_bias(self.bucket(memory - context))  # (q, k, H)
        return values.permute(2, 0, 1).unsqueeze(0)  # (1, H, q, k)


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, nkv, T, hd) -> (B, nkv * n_rep, T, hd): share each key/value head among n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    b, nkv, t, hd = x.shape
    return x[:, :, None].expand(b, nkv, n_rep, t, hd).reshape(b, nkv * n_rep, t, hd)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, position_bias=None,
                            **kwargs):
    """Reference attention, softmax(q k^T * scale + bias + mask) v. The registry's other backends must match it."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, Tq, Tk)
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif module.is_causal and query.shape[2] > 1:
        tq, tk = query.shape[2], key.shape[2]
        keep = torch.ones(tq, tk, dtype=torch.bool, device=query.device).tril(diagonal=tk - tq)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, Tq, nh, hd)
    return out, weights


class Attention(nn.Module):
    """Multi-head attention with optional grouped-query heads; causal or bidirectional; self or cross.

    The score computation comes from transformers' attention registry (``config._attn_implementation``:
    sdpa by default, eager, flash_attention_2/3, flex_attention), with ``eager_attention_forward`` as fallback.
    Keys and values go through transformers' ``Cache`` (``EncoderDecoderCache`` for the decoder of T5).
    """

    def __init__(self, config: MiniConfigBase, layer_idx: int, is_causal: bool, is_cross_attention: bool = False,
                 scaling: float | None = None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = is_causal  # read by the sdpa/flash backends; False for encoder and cross attention
        self.is_cross_attention = is_cross_attention
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5 if scaling is None else scaling
        self.attention_dropout = config.attention_dropout
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)

    def _project_kv(self, states):
        shape = (*states.shape[:-1], -1, self.head_dim)
        k = linear(self.k_proj, states).view(shape).transpose(1, 2)  # (B, nkv, T, hd)
        v = linear(self.v_proj, states).view(shape).transpose(1, 2)
        return k, v

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, past_key_values=None,
                key_value_states=None, position_bias=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        q = linear(self.q_proj, hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)

        cache = past_key_values
        if isinstance(cache, EncoderDecoderCache):
            cache = cache.cross_attention_cache if self.is_cross_attention else cache.self_attention_cache
        if self.is_cross_attention:
            # Encoder states do not change while decoding: project them once, then reuse the cached keys/values.
            if cache is not None and past_key_values.is_updated.get(self.layer_idx):
                k, v = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
            else:
                k, v = self._project_kv(key_value_states)
                if cache is not None:
                    k, v = cache.update(k, v, self.layer_idx)
                    past_key_values.is_updated[self.layer_idx] = True
        else:
            k, v = self._project_kv(hidden_states)
            if position_embeddings is not None:
                q, k = apply_rotary(q, k, *position_embeddings)
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        if position_bias is not None:
            kwargs["position_bias"] = position_bias
        out, weights = attention_interface(
            self, q, k, v, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        out = linear(self.o_proj, out.reshape(*input_shape, -1))  # (B, T, nh*hd) -> (B, T, D)
        return out, weights


# ---------------------------------------------------------------------------------------------------------------
# Feed-forward
# ---------------------------------------------------------------------------------------------------------------

ACT_FNS = {
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": nn.ReLU(),
    "silu": nn.SiLU(),
}


class MLP(nn.Module):
    """Position-wise feed-forward: down(act(up(x))), or the gated down(act(gate(x)) * up(x)) (SwiGLU, GeGLU)."""

    def __init__(self, config: MiniConfigBase):
        super().__init__()
        d, f, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, f, bias=bias) if config.mlp_gated else None
        self.up_proj = nn.Linear(d, f, bias=bias)
        self.down_proj = nn.Linear(f, d, bias=bias)
        self.act_fn = ACT_FNS[config.hidden_act]

    def forward(self, x):
        if self.gate_proj is None:
            return linear(self.down_proj, self.act_fn(linear(self.up_proj, x)))
        return linear(self.down_proj, self.act_fn(linear(self.gate_proj, x)) * linear(self.up_proj, x))


# ---------------------------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------------------------


class TransformerLayer(GradientCheckpointingLayer):
    """Self-attention, optional cross-attention and the MLP, each wrapped in a residual with its norm."""

    def __init__(self, config: MiniConfigBase, layer_idx: int, is_causal: bool, has_cross_attention: bool = False,
                 attention_scaling: float | None = None):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.self_attn = Attention(config, layer_idx, is_causal=is_causal, scaling=attention_scaling)
        self.attn_norm = build_norm(config)
        if has_cross_attention:
            self.cross_attn = Attention(config, layer_idx, is_causal=False, is_cross_attention=True,
                                        scaling=attention_scaling)
            self.cross_attn_norm = build_norm(config)
        else:
            self.cross_attn = None
        self.mlp = MLP(config)
        self.mlp_norm = build_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _drop(self, x):
        # The module call costs more than a decoding step's small ops: skip it when it is the identity.
        return self.dropout(x) if self.training and self.dropout.p > 0 else x

    def _residual(self, x, norm, sublayer):
        if self.pre_norm:
            return x + self._drop(sublayer(norm(x)))
        return norm(x + self._drop(sublayer(x)))

    def forward(self, hidden_states, attention_mask=None, position_bias=None, encoder_hidden_states=None,
                encoder_attention_mask=None, position_embeddings=None, past_key_values=None, **kwargs):
        # Tensors that may need gradients (T5's shared bias, the encoder states) come first: the stacks pass them
        # positionally, since reentrant gradient checkpointing replays only positional inputs (not closed-over kwargs).
        hidden_states = self._residual(hidden_states, self.attn_norm, lambda x: self.self_attn(
            x, attention_mask, position_embeddings, past_key_values, position_bias=position_bias, **kwargs)[0])
        if self.cross_attn is not None:
            hidden_states = self._residual(hidden_states, self.cross_attn_norm, lambda x: self.cross_attn(
                x, encoder_attention_mask, past_key_values=past_key_values, key_value_states=encoder_hidden_states,
                **kwargs)[0])
        return self._residual(hidden_states, self.mlp_norm, self.mlp)


# ---------------------------------------------------------------------------------------------------------------
# Shared pretrained-model base: flags and initialisation
# ---------------------------------------------------------------------------------------------------------------


class MiniPreTrainedModel(PreTrainedModel):
    """What every minigpt model shares: backend flags and weight initialisation. Families set ``config_class``."""

    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TransformerLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": TransformerLayer, "attentions": Attention}
    _auto_heads: dict[str, str] = {}  # auto class -> class name in the family's module; see save_pretrained

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write every head of the family into ``auto_map``, so any Auto class loads the folder with
        ``trust_remote_code=True`` (transformers itself records only the class that was saved)."""
        module = type(self).__module__.rsplit(".", 1)[-1]
        config_cls = type(self.config)
        self.config.auto_map = {
            "AutoConfig": f"{config_cls.__module__.rsplit('.', 1)[-1]}.{config_cls.__name__}",
            **{auto: f"{module}.{name}" for auto, name in self._auto_heads.items()},
        }
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RMSNorm):
            init.ones_(module.weight)


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Out-of-range ids would index past the embedding (a device assert on GPU): say what is wrong instead."""
    if input_ids is None or torch.compiler.is_compiling() or not input_ids.numel():
        return
    low, high = (int(v) for v in torch.aminmax(input_ids))  # one pass, where min() and max() take two
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {vocab_size}): "
                         "was the text encoded with a tokenizer that matches this model?")


__all__ = [
    "RMSNorm", "build_norm", "LearnedPositionalEmbedding", "SinusoidalPositionalEmbedding", "RotaryEmbedding",
    "NoPositions", "build_positions", "RelativePositionBias", "apply_rotary", "repeat_kv", "eager_attention_forward",
    "Attention", "MLP", "TransformerLayer", "MiniPreTrainedModel", "check_input_ids",
]
