"""GPT-2 and Llama <-> MiniGPT. The weights are copied tensor by tensor; the configs are mapped field by field."""

import torch

from ..configuration_minigpt import MiniGPTConfig
from ..modeling_minigpt_gpt import MiniGPTForCausalLM, MiniGPTForSequenceClassification, MiniGPTModel

_GPT2_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
             "silu": "silu", "swish": "silu"}
_TOKENS = ("pad_token_id", "bos_token_id", "eos_token_id")


def _head_kind(model):
    """'lm' / 'cls' / 'base' from the module tree, whichever library the model comes from."""
    if hasattr(model, "lm_head"):
        return "lm"
    if hasattr(model, "score"):
        return "cls"
    return "base"


def _common(cfg, **fields):
    tokens = {k: getattr(cfg, k, None) for k in _TOKENS}
    labels = {"id2label": cfg.id2label, "problem_type": cfg.problem_type}
    return MiniGPTConfig(**fields, **tokens, **labels, tie_word_embeddings=cfg.tie_word_embeddings)


# ------------------------------------------------------------------------------------------------ GPT-2


def _config_from_gpt2(cfg):
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if getattr(cfg, flag, False):
            raise ValueError(f"GPT-2 config has {flag}=True, which MiniGPT does not implement")
    if not cfg.scale_attn_weights:
        raise ValueError("GPT-2 config has scale_attn_weights=False, which MiniGPT does not implement")
    if cfg.activation_function not in _GPT2_ACT:
        raise ValueError(f"GPT-2 activation_function={cfg.activation_function!r} has no MiniGPT equivalent")
    return _common(
        cfg, vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=cfg.n_inner or 4 * cfg.n_embd,
        max_position_embeddings=cfg.n_positions, hidden_act=_GPT2_ACT[cfg.activation_function],
        norm_type="layernorm", norm_eps=cfg.layer_norm_epsilon, position_embedding_type="learned",
        attention_bias=True, mlp_bias=True, hidden_dropout=cfg.resid_pdrop, attention_dropout=cfg.attn_pdrop,
        initializer_range=cfg.initializer_range,
    )


# (ours, GPT-2's, transposed): GPT-2 stores its Linear weights as Conv1D, (in, out).
_GPT2_TOP = [("model.embed_tokens.weight", "transformer.wte.weight", False),
             ("model.embed_positions.weight", "transformer.wpe.weight", False),
             ("model.norm.weight", "transformer.ln_f.weight", False),
             ("model.norm.bias", "transformer.ln_f.bias", False)]
_GPT2_MODULES = (("self_attn.o_proj", "attn.c_proj", True), ("mlp.up_proj", "mlp.c_fc", True),
                 ("mlp.down_proj", "mlp.c_proj", True), ("attn_norm", "ln_1", False), ("mlp_norm", "ln_2", False))
_GPT2_LAYER = [(f"{ours}.{p}", f"{theirs}.{p}", p == "weight" and linear)
               for ours, theirs, linear in _GPT2_MODULES for p in ("weight", "bias")]


def _gpt2_pairs(n_layers):
    yield from _GPT2_TOP
    for i in range(n_layers):
        for ours, theirs, transposed in _GPT2_LAYER:
            yield f"model.layers.{i}.{ours}", f"transformer.h.{i}.{theirs}", transposed


def _weights_from_gpt2(sd, n_layers, hidden):
    out = {ours: sd[theirs].t() if t else sd[theirs] for ours, theirs, t in _gpt2_pairs(n_layers)}
    for i in range(n_layers):  # GPT-2 fuses q|k|v into one c_attn
        src, dst = f"transformer.h.{i}.attn.c_attn.", f"model.layers.{i}.self_attn."
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), sd[src + "weight"].t().split(hidden),
                              sd[src + "bias"].split(hidden)):
            out[f"{dst}{name}.weight"], out[f"{dst}{name}.bias"] = w, b
    return out


def _weights_to_gpt2(sd, n_layers):
    out = {theirs: sd[ours].t() if t else sd[ours] for ours, theirs, t in _gpt2_pairs(n_layers)}
    for i in range(n_layers):
        src, dst = f"model.layers.{i}.self_attn.", f"transformer.h.{i}.attn.c_attn."
        out[dst + "weight"] = torch.cat([sd[f"{src}{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]).t()
        out[dst + "bias"] = torch.cat([sd[f"{src}{p}.bias"] for p in ("q_proj", "k_proj", "v_proj")])
    return out


# ------------------------------------------------------------------------------------------------ Llama

_LLAMA_LAYER = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def _config_from_llama(cfg):
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"Llama rope_type={rope.get('rope_type')!r} is not supported; MiniGPT implements 'default'")
    if cfg.hidden_act not in ("silu", "swish"):
        raise ValueError(f"Llama hidden_act={cfg.hidden_act!r} has no MiniGPT equivalent")
    return _common(
        cfg, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, hidden_act="silu", mlp_gated=True,
        norm_type="rmsnorm", norm_eps=cfg.rms_norm_eps, position_embedding_type="rope",
        rope_theta=rope.get("rope_theta", 10000.0), attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias,
        attention_dropout=float(cfg.attention_dropout or 0.0), initializer_range=cfg.initializer_range,
    )


def _rename_llama(sd, to_llama: bool):
    """Llama and MiniGPT share every name except the two per-layer norms."""
    out = {}
    for key, value in sd.items():
        for ours, theirs in _LLAMA_LAYER.items():
            old, new = (f".{ours}.", f".{theirs}.") if to_llama else (f".{theirs}.", f".{ours}.")
            key = key.replace(old, new)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------------ entry points

_MINI_CLASSES = {"lm": MiniGPTForCausalLM, "cls": MiniGPTForSequenceClassification, "base": MiniGPTModel}


def _with_prefix(sd, prefix, kind):
    """Base models have no 'model.'/'transformer.' prefix; heads do. Normalise to the head layout."""
    return sd if kind != "base" else {f"{prefix}{k}": v for k, v in sd.items()}


def _strip_prefix(sd, prefix, kind):
    return sd if kind != "base" else {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _build(cls, config, sd, like):
    model = cls(config).to(next(like.parameters()).dtype)
    model.load_state_dict(sd, strict=True)
    return model.train(like.training)


def from_hf(model):
    """GPT2Model/GPT2LMHeadModel/GPT2ForSequenceClassification or the Llama equivalents -> MiniGPT."""
    kind, cfg = _head_kind(model), model.config
    if cfg.model_type == "minigpt":
        raise ValueError("this is already a minigpt model; use convert_to_hf to go to transformers")
    if cfg.model_type == "gpt2":
        config = _config_from_gpt2(cfg)
        sd = _with_prefix(model.state_dict(), "transformer.", kind)
        new = _weights_from_gpt2(sd, cfg.n_layer, cfg.n_embd)
        new.update({k: sd[k] for k in ("lm_head.weight", "score.weight") if k in sd})
    else:  # Llama: same names but the norms; heads carry over as they are
        config = _config_from_llama(cfg)
        new = _rename_llama(_with_prefix(model.state_dict(), "model.", kind), to_llama=False)
    if kind == "cls":
        config.num_labels = cfg.num_labels
    return _build(_MINI_CLASSES[kind], config, _strip_prefix(new, "model.", kind), model)


def to_hf(model):
    """MiniGPT -> GPT-2 (learned positions, LayerNorm, plain MLP, MHA) or Llama (RoPE, RMSNorm, SwiGLU)."""
    import transformers as tf

    kind, c = _head_kind(model), model.config
    sd = _with_prefix(model.state_dict(), "model.", kind)
    common = dict(vocab_size=c.vocab_size, tie_word_embeddings=c.tie_word_embeddings, id2label=c.id2label,
                  pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id)
    gpt2_like = (c.position_embedding_type == "learned" and c.norm_type == "layernorm" and not c.mlp_gated
                 and c.attention_bias and c.mlp_bias and c.num_key_value_heads == c.num_attention_heads
                 and c.head_dim * c.num_attention_heads == c.hidden_size)
    llama_like = (c.position_embedding_type == "rope" and c.norm_type == "rmsnorm" and c.mlp_gated
                  and c.hidden_act == "silu")
    if c.norm_position != "pre" or not (gpt2_like or llama_like):
        raise ValueError("this MiniGPT config has no transformers equivalent: convert_to_hf needs GPT-2 shapes "
                         "(learned positions, LayerNorm, plain MLP, biases, MHA) or Llama shapes "
                         "(RoPE, RMSNorm, SwiGLU), pre-norm")
    if gpt2_like:
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[c.hidden_act]
        config = tf.GPT2Config(n_embd=c.hidden_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
                               n_inner=c.intermediate_size, n_positions=c.max_position_embeddings,
                               activation_function=act, layer_norm_epsilon=c.norm_eps, resid_pdrop=c.hidden_dropout,
                               embd_pdrop=c.hidden_dropout, attn_pdrop=c.attention_dropout, **common)
        new = _weights_to_gpt2(sd, c.num_hidden_layers)
        classes, prefix = (tf.GPT2LMHeadModel, tf.GPT2ForSequenceClassification, tf.GPT2Model), "transformer."
    else:
        config = tf.LlamaConfig(hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                                num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
                                head_dim=c.head_dim, intermediate_size=c.intermediate_size,
                                max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.norm_eps,
                                rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                                attention_bias=c.attention_bias, mlp_bias=c.mlp_bias,
                                attention_dropout=c.attention_dropout, **common)
        new = _rename_llama({k: v for k, v in sd.items() if not k.startswith(("lm_head", "score"))}, to_llama=True)
        classes, prefix = (tf.LlamaForCausalLM, tf.LlamaForSequenceClassification, tf.LlamaModel), "model."
    for head in ("lm_head.weight", "score.weight"):
        if head in sd:
            new[head] = sd[head]
    cls = dict(zip(("lm", "cls", "base"), classes))[kind]
    return _build(cls, config, _strip_prefix(new, prefix, kind), model)
