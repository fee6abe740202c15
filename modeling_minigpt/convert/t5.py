"""T5 (v1.0 and v1.1) <-> MiniT5. Weights are copied tensor by tensor through one name table used both ways.

v1.0: ReLU, dense ``wi`` -> ``up_proj``, head tied to the shared embedding with the d**-0.5 output rescale.
v1.1: gated GELU (``feed_forward_proj="gated-gelu"``), ``wi_0``/``wi_1`` -> ``gate_proj``/``up_proj``, untied head.
transformers 5 always builds T5 with its head tied (``tie_word_embeddings`` is forced on; ``scale_decoder_outputs``
carries the v1.0/v1.1 choice), so ``to_hf`` unties the head itself for v1.1 models.
"""

import torch
from torch import nn

from ..configuration_minigpt import MiniT5Config
from ..modeling_minigpt_t5 import MiniT5ForConditionalGeneration, MiniT5Model

_ACT_FROM_HF = {"relu": "relu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"relu": "relu", "gelu_tanh": "gelu_new", "gelu": "gelu", "silu": "silu"}


def _attention_pairs(ours, theirs):
    return [(f"{ours}.{p}_proj.weight", f"{theirs}.{p}.weight") for p in "qkvo"]


def _mlp_pairs(ours, theirs, gated):
    up = [(f"{ours}.gate_proj.weight", f"{theirs}.wi_0.weight"), (f"{ours}.up_proj.weight", f"{theirs}.wi_1.weight")]
    return (up if gated else [(f"{ours}.up_proj.weight", f"{theirs}.wi.weight")]) + [
        (f"{ours}.down_proj.weight", f"{theirs}.wo.weight")]


def _name_pairs(c: MiniT5Config):
    """(MiniT5Model name, T5Model name) for every tensor; the shared embedding is listed once per HF alias."""
    pairs = [("encoder.embed_tokens.weight", name) for name in
             ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")]
    for stack, n_layers in (("encoder", c.num_hidden_layers), ("decoder", c.num_decoder_layers)):
        pairs.append((f"{stack}.relative_bias.relative_attention_bias.weight",
                      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
        pairs.append((f"{stack}.norm.weight", f"{stack}.final_layer_norm.weight"))
        for i in range(n_layers):
            ours, theirs = f"{stack}.layers.{i}", f"{stack}.block.{i}.layer"
            ff = 2 if stack == "decoder" else 1  # index of the feed-forward sub-layer in T5Block
            pairs += _attention_pairs(f"{ours}.self_attn", f"{theirs}.0.SelfAttention")
            pairs += [(f"{ours}.attn_norm.weight", f"{theirs}.0.layer_norm.weight")]
            if stack == "decoder":
                pairs += _attention_pairs(f"{ours}.cross_attn", f"{theirs}.1.EncDecAttention")
                pairs += [(f"{ours}.cross_attn_norm.weight", f"{theirs}.1.layer_norm.weight")]
            pairs += _mlp_pairs(f"{ours}.mlp", f"{theirs}.{ff}.DenseReluDense", c.mlp_gated)
            pairs += [(f"{ours}.mlp_norm.weight", f"{theirs}.{ff}.layer_norm.weight")]
    return pairs


def _config_from_hf(cfg, tied: bool) -> MiniT5Config:
    if cfg.dense_act_fn not in _ACT_FROM_HF:
        raise ValueError(f"T5 feed_forward_proj={cfg.feed_forward_proj!r} has no MiniT5 equivalent")
    start = cfg.decoder_start_token_id if getattr(cfg, "decoder_start_token_id", None) is not None else cfg.pad_token_id
    return MiniT5Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers, num_attention_heads=cfg.num_heads, head_dim=cfg.d_kv,
        intermediate_size=cfg.d_ff, hidden_act=_ACT_FROM_HF[cfg.dense_act_fn], mlp_gated=cfg.is_gated_act,
        norm_eps=cfg.layer_norm_epsilon, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance, hidden_dropout=cfg.dropout_rate,
        attention_dropout=cfg.dropout_rate, tie_word_embeddings=tied, pad_token_id=cfg.pad_token_id,
        eos_token_id=cfg.eos_token_id, decoder_start_token_id=start,  # T5 starts decoding from the pad id
    )


def _build(cls, config, sd, like):
    model = cls(config).to(next(like.parameters()).dtype)
    model.load_state_dict(sd, strict=True)
    return model.train(like.training)


def from_hf(model):
    """T5ForConditionalGeneration or T5Model (v1.0 or v1.1) -> MiniT5ForConditionalGeneration or MiniT5Model."""
    cfg, sd = model.config, model.state_dict()
    if cfg.model_type != "t5":
        raise ValueError(f"from_hf expects a transformers T5 model, got model_type={cfg.model_type!r}")
    if type(model).__name__ not in ("T5ForConditionalGeneration", "T5Model"):  # other heads would be dropped
        raise ValueError(f"cannot convert {type(model).__name__}; supported: T5ForConditionalGeneration, T5Model")
    has_head = "lm_head.weight" in sd
    scaled = getattr(cfg, "scale_decoder_outputs", cfg.tie_word_embeddings)
    if scaled and has_head and not torch.equal(sd["lm_head.weight"], sd["shared.weight"]):
        raise ValueError("this T5 scales decoder outputs (tied, v1.0) but its lm_head differs from the shared "
                         "embedding; MiniT5 ties both or neither")
    config = _config_from_hf(cfg, tied=bool(scaled))
    new = {ours: sd[theirs] for ours, theirs in _name_pairs(config)}
    if not has_head:
        return _build(MiniT5Model, config, new, model)
    new = {f"model.{k}": v for k, v in new.items()}
    new["lm_head.weight"] = sd["lm_head.weight"]
    return _build(MiniT5ForConditionalGeneration, config, new, model)


def _config_to_hf(c: MiniT5Config):
    from transformers import T5Config

    if not (c.norm_type == "rmsnorm" and c.norm_position == "pre" and c.position_embedding_type == "relative"
            and not c.attention_bias and not c.mlp_bias and c.num_key_value_heads == c.num_attention_heads):
        raise ValueError("this MiniT5 config has no transformers T5 equivalent: T5 needs RMSNorm, pre-norm, "
                         "relative positions, no biases and as many key/value heads as query heads")
    if c.mlp_gated and c.hidden_act == "gelu":
        raise ValueError("hidden_act='gelu' with mlp_gated=True has no T5 equivalent (its gated-gelu is tanh-GELU)")
    act = _ACT_TO_HF[c.hidden_act]
    proj = ("gated-" + act.replace("gelu_new", "gelu")) if c.mlp_gated else act
    return T5Config(
        vocab_size=c.vocab_size, d_model=c.hidden_size, d_kv=c.head_dim, d_ff=c.intermediate_size,
        num_layers=c.num_hidden_layers, num_decoder_layers=c.num_decoder_layers, num_heads=c.num_attention_heads,
        relative_attention_num_buckets=c.relative_attention_num_buckets,
        relative_attention_max_distance=c.relative_attention_max_distance, dropout_rate=c.hidden_dropout,
        layer_norm_epsilon=c.norm_eps, feed_forward_proj=proj, tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id, eos_token_id=c.eos_token_id, decoder_start_token_id=c.decoder_start_token_id,
    )


def to_hf(model):
    """MiniT5ForConditionalGeneration / MiniT5Model -> transformers T5ForConditionalGeneration / T5Model."""
    from transformers import T5ForConditionalGeneration, T5Model

    c, sd = model.config, model.state_dict()
    config = _config_to_hf(c)
    has_head = "lm_head.weight" in sd
    prefix = "model." if has_head else ""
    new = {theirs: sd[prefix + ours] for ours, theirs in _name_pairs(c)}
    if not has_head:
        return _build(T5Model, config, new, model)
    new["lm_head.weight"] = sd["lm_head.weight"]
    hf = T5ForConditionalGeneration(config).to(next(model.parameters()).dtype)
    if not c.tie_word_embeddings:  # transformers 5 ties T5's head whatever the config says: untie it (v1.1)
        hf.lm_head.weight = nn.Parameter(hf.lm_head.weight.detach().clone())
    hf.load_state_dict(new, strict=True)
    return hf.train(model.training)
