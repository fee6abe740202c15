"""transformers BERT <-> MiniBert. The weights are copied tensor by tensor; the configs are mapped field by field.

Both sides are post-norm encoders with the same tensors, so the mapping is a rename:
``bert.`` <-> ``model.`` on heads, BERT's nested module names <-> the shared block names below.
"""

from ..configuration_minigpt import MiniBertConfig
from ..modeling_minigpt_bert import (
    MiniBertForMaskedLM,
    MiniBertForSequenceClassification,
    MiniBertForTokenClassification,
    MiniBertModel,
)

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu",
        "swish": "silu"}
_ACT_BACK = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}

# BERT name -> MiniBert name, relative to the backbone and to one layer.
_EMBEDDINGS = {
    "embeddings.word_embeddings": "embed_tokens",
    "embeddings.position_embeddings": "embed_positions",
    "embeddings.token_type_embeddings": "token_type_embeddings",
    "embeddings.LayerNorm": "embed_norm",
    "pooler.dense": "pooler.dense",
}
_LAYER = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.o_proj",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "mlp.up_proj",
    "output.dense": "mlp.down_proj",
    "output.LayerNorm": "mlp_norm",
}
_HEADS = {
    "cls.predictions.transform.dense": "transform.dense",
    "cls.predictions.transform.LayerNorm": "transform.norm",
    "cls.predictions.decoder": "lm_head",
    "classifier": "classifier",
}


def _names(n_layers, head: bool):
    """{BERT module path: MiniBert module path} for a base model (head=False) or a model with a head."""
    body = dict(_EMBEDDINGS)
    for i in range(n_layers):
        body.update({f"encoder.layer.{i}.{theirs}": f"layers.{i}.{ours}" for theirs, ours in _LAYER.items()})
    if not head:
        return body
    return {**{f"bert.{k}": f"model.{v}" for k, v in body.items()}, **_HEADS}


def _rename(sd, names):
    out = {}
    for key, value in sd.items():
        module, _, param = key.rpartition(".")
        if module not in names:
            raise ValueError(f"no MiniBert/BERT equivalent for weight {key!r}")
        out[f"{names[module]}.{param}"] = value
    return out


def _classes():
    import transformers as tf

    # (transformers class, MiniBert class, has a head)
    return [(tf.BertForMaskedLM, MiniBertForMaskedLM, True),
            (tf.BertForSequenceClassification, MiniBertForSequenceClassification, True),
            (tf.BertForTokenClassification, MiniBertForTokenClassification, True),
            (tf.BertModel, MiniBertModel, False)]


def _match(model, side: int):
    for row in _classes():
        if type(model).__name__ == row[side].__name__:  # also matches classes loaded as remote code
            return row
    supported = ", ".join(row[side].__name__ for row in _classes())
    raise ValueError(f"cannot convert {type(model).__name__}; supported: {supported}")


def _config_from_bert(cfg, has_pooler):
    if cfg.is_decoder or cfg.add_cross_attention:
        raise ValueError("BERT config has is_decoder/add_cross_attention set; MiniBert is an encoder only")
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"BERT position_embedding_type={cfg.position_embedding_type!r} is not supported")
    if cfg.hidden_act not in _ACT:
        raise ValueError(f"BERT hidden_act={cfg.hidden_act!r} has no MiniBert equivalent")
    return MiniBertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        hidden_act=_ACT[cfg.hidden_act], norm_type="layernorm", norm_position="post", norm_eps=cfg.layer_norm_eps,
        position_embedding_type="learned", hidden_dropout=float(cfg.hidden_dropout_prob),
        attention_dropout=float(cfg.attention_probs_dropout_prob), classifier_dropout=cfg.classifier_dropout,
        initializer_range=cfg.initializer_range, add_pooling_layer=has_pooler,
        tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id, id2label=cfg.id2label, problem_type=cfg.problem_type,
    )


def _config_to_bert(c):
    import transformers as tf

    bert_like = (c.norm_position == "post" and c.norm_type == "layernorm" and c.position_embedding_type == "learned"
                 and not c.mlp_gated and c.attention_bias and c.mlp_bias and c.type_vocab_size > 0
                 and c.num_key_value_heads == c.num_attention_heads
                 and c.head_dim * c.num_attention_heads == c.hidden_size)
    if not bert_like:
        raise ValueError("this MiniBert config has no transformers BERT equivalent: convert_to_hf needs post-norm "
                         "LayerNorm, learned positions, type_vocab_size > 0, a plain MLP, biases and "
                         "head_dim * num_attention_heads == hidden_size")
    return tf.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        hidden_act=_ACT_BACK[c.hidden_act], hidden_dropout_prob=c.hidden_dropout,
        attention_probs_dropout_prob=c.attention_dropout, max_position_embeddings=c.max_position_embeddings,
        type_vocab_size=c.type_vocab_size, initializer_range=c.initializer_range, layer_norm_eps=c.norm_eps,
        classifier_dropout=c.classifier_dropout, tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        id2label=c.id2label, problem_type=c.problem_type,
    )


def _build(model, sd, like):
    model = model.to(next(like.parameters()).dtype)
    model.load_state_dict(sd, strict=True)
    return model.train(like.training)


def from_hf(model):
    """BertModel / BertForMaskedLM / BertForSequenceClassification / BertForTokenClassification -> MiniBert."""
    _, mini_cls, head = _match(model, 0)
    backbone = model.bert if head else model
    config = _config_from_bert(model.config, has_pooler=backbone.pooler is not None)
    sd = dict(model.state_dict())
    sd.pop("cls.predictions.bias", None)  # the same tensor as cls.predictions.decoder.bias
    return _build(mini_cls(config), _rename(sd, _names(model.config.num_hidden_layers, head)), model)


def to_hf(model):
    """MiniBert (BERT shapes: post-norm LayerNorm, learned positions, token types) -> the transformers class."""
    hf_cls, _, head = _match(model, 1)
    config = _config_to_bert(model.config)
    backbone = model.model if head else model
    if hf_cls.__name__ == "BertForSequenceClassification" and backbone.pooler is None:
        raise ValueError("BertForSequenceClassification always pools: this model has add_pooling_layer=False")
    names = {ours: theirs for theirs, ours in _names(model.config.num_hidden_layers, head).items()}
    sd = _rename(model.state_dict(), names)
    if "cls.predictions.decoder.bias" in sd:
        sd["cls.predictions.bias"] = sd["cls.predictions.decoder.bias"]
    hf = hf_cls(config) if head else hf_cls(config, add_pooling_layer=backbone.pooler is not None)
    return _build(hf, sd, model)
