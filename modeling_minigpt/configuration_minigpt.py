"""Configurations of the three minigpt families. Ships to the Hub: imports only transformers.

One base config holds the fields of the shared block library (``minigpt_layers.py``); each family
adds only what its embeddings, stacks and heads need. Field names are the HF-canonical ones, so
PEFT target lists, TRL and the generation utilities work unchanged. Every check raises
``ValueError`` naming the field and the value, when the config is created.
"""

from transformers import PreTrainedConfig

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
POSITIONS = ("learned", "sinusoidal", "rope", "relative", "none")


def _check_choice(field, value, choices):
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_not_relative(value, family):
    if value == "relative":
        raise ValueError(f"position_embedding_type='relative' is T5's bias; {family} takes learned, sinusoidal, "
                         "rope or none")


def _check_int(field, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{field}={value!r} must be {wanted}")


class MiniConfigBase(PreTrainedConfig):
    """Fields shared by every family: they choose the options of the shared blocks.

    ``position_embedding_type``: learned | sinusoidal | rope | relative (T5 bias) | none.
    ``norm_type``: layernorm | rmsnorm. ``norm_position``: pre (GPT-2, Llama, T5) | post (BERT, 2017).
    ``hidden_act``: gelu | gelu_tanh | relu | silu; ``mlp_gated`` turns the MLP into SwiGLU/GeGLU.
    """

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu_tanh"
    mlp_gated: bool = False
    norm_type: str = "layernorm"
    norm_position: str = "pre"
    norm_eps: float = 1e-5
    position_embedding_type: str = "learned"
    rope_theta: float = 10000.0
    attention_bias: bool = True
    mlp_bias: bool = True
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if (self.head_dim is None and isinstance(self.hidden_size, int) and isinstance(self.num_attention_heads, int)
                and self.num_attention_heads > 0):
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                    f"{self.num_attention_heads}; set head_dim explicitly or change one of them"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None and isinstance(self.hidden_size, int):
            self.intermediate_size = 4 * self.hidden_size
        self.check_fields()
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers sets ``from_pretrained(..., field=value)`` overrides after ``__post_init__``: check again."""
        config = super().from_dict(config_dict, **kwargs)
        (config[0] if isinstance(config, tuple) else config).check_fields()
        return config

    def check_fields(self):
        """Every field the blocks read, checked; a ValueError names the field and the value."""
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "max_position_embeddings", "num_key_value_heads", "head_dim", "intermediate_size"):
            _check_int(field, getattr(self, field))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads="
                f"{self.num_attention_heads}"
            )
        if self.position_embedding_type == "rope" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for position_embedding_type='rope'")
        _check_choice("hidden_act", self.hidden_act, ACTIVATIONS)
        _check_choice("norm_type", self.norm_type, NORMS)
        _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("position_embedding_type", self.position_embedding_type, POSITIONS)
        for field in ("mlp_gated", "attention_bias", "mlp_bias", "tie_word_embeddings", "use_cache"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field}={getattr(self, field)!r} must be true or false")
        for field in ("norm_eps", "rope_theta", "initializer_range"):
            if not _is_number(getattr(self, field)) or not getattr(self, field) > 0:
                raise ValueError(f"{field}={getattr(self, field)!r} must be a number > 0")
        for field in ("hidden_dropout", "attention_dropout"):
            value = getattr(self, field)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{field}={value!r} must be in [0, 1)")


MINIGPT_PRESETS = {
    # name: (description, fields). GPT-2 shapes follow the OpenAI release; llama-* follow Llama's recipe.
    "gpt2": ("GPT-2 small, 124M", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12)),
    "gpt2-medium": ("GPT-2 medium, 355M", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)),
    "gpt2-large": ("GPT-2 large, 774M", dict(hidden_size=1280, num_hidden_layers=36, num_attention_heads=20)),
    "gpt2-xl": ("GPT-2 XL, 1.5B", dict(hidden_size=1600, num_hidden_layers=48, num_attention_heads=25)),
    "llama-small": ("Llama-style 150M: RoPE, RMSNorm, SwiGLU, GQA, no bias", dict(
        vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
        intermediate_size=2048, max_position_embeddings=2048, position_embedding_type="rope", norm_type="rmsnorm",
        norm_eps=1e-6, hidden_act="silu", mlp_gated=True, attention_bias=False, mlp_bias=False,
        tie_word_embeddings=False)),
    "tiny": ("GPT-2-style 4 layers x 128 for CPU tests and demos", dict(
        vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=256)),
    "tiny-llama": ("Llama-style 4 layers x 128 for CPU tests and demos", dict(
        vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=352, max_position_embeddings=256, position_embedding_type="rope", norm_type="rmsnorm",
        norm_eps=1e-6, hidden_act="silu", mlp_gated=True, attention_bias=False, mlp_bias=False)),
}


class MiniGPTConfig(MiniConfigBase):
    """Decoder-only causal LM. The defaults are GPT-2 small; ``from_preset`` gives the other classic shapes.

    Example::

        MiniGPTConfig.from_preset("tiny-llama", vocab_size=8192)
    """

    model_type = "minigpt"
    keys_to_ignore_at_inference = ["past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    def check_fields(self):
        super().check_fields()
        _check_not_relative(self.position_embedding_type, "MiniGPT")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MiniGPTConfig":
        if name not in MINIGPT_PRESETS:
            raise ValueError(f"preset={name!r} is unknown; choose one of {', '.join(MINIGPT_PRESETS)}")
        return cls(**{**MINIGPT_PRESETS[name][1], **overrides})


class MiniBertConfig(MiniConfigBase):
    """Encoder-only masked LM. The defaults are BERT-base: learned positions, token types, post-norm, GELU."""

    model_type = "minibert"

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    norm_position: str = "post"
    norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    add_pooling_layer: bool = True
    classifier_dropout: float | None = None
    pad_token_id: int | None = 0

    def check_fields(self):
        super().check_fields()
        _check_int("type_vocab_size", self.type_vocab_size, minimum=0)
        _check_not_relative(self.position_embedding_type, "MiniBert")
        if self.classifier_dropout is not None and not (_is_number(self.classifier_dropout)
                                                        and 0.0 <= self.classifier_dropout < 1.0):
            raise ValueError(f"classifier_dropout={self.classifier_dropout!r} must be in [0, 1)")


class MiniT5Config(MiniConfigBase):
    """Encoder-decoder text-to-text model. The defaults are T5-small v1.0: relative position bias shared across
    layers, RMSNorm, pre-norm, ReLU, no biases, tied head with output scaling, dropout 0.1, except on the attention
    weights: ``attention_dropout`` stays 0 by default, which keeps sdpa's fused kernels (T5 drops them too, at its
    ``dropout_rate``; converted models take that rate). Set ``hidden_act="gelu_tanh"``, ``mlp_gated=True``,
    ``tie_word_embeddings=False`` for v1.1."""

    model_type = "minit5"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32128
    hidden_size: int = 512
    num_hidden_layers: int = 6
    num_decoder_layers: int | None = None
    num_attention_heads: int = 8
    head_dim: int | None = 64
    intermediate_size: int | None = 2048
    max_position_embeddings: int = 512
    hidden_act: str = "relu"
    norm_type: str = "rmsnorm"
    norm_eps: float = 1e-6
    position_embedding_type: str = "relative"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_dropout: float = 0.1
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    decoder_start_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_hidden_layers
        super().__post_init__(**kwargs)

    def check_fields(self):
        super().check_fields()
        _check_int("num_decoder_layers", self.num_decoder_layers)
        if self.position_embedding_type != "relative":
            raise ValueError(f"position_embedding_type={self.position_embedding_type!r}: MiniT5 always uses T5's "
                             "relative bias ('relative')")
        # The bucketing keeps num_buckets // 2 exact offsets in the decoder (// 4 each way in the encoder), then
        # spaces the rest logarithmically out to max_distance, which must lie beyond the exact ones.
        _check_int("relative_attention_num_buckets", self.relative_attention_num_buckets, minimum=4)
        _check_int("relative_attention_max_distance", self.relative_attention_max_distance,
                   minimum=self.relative_attention_num_buckets // 2 + 1)


__all__ = ["MiniConfigBase", "MiniGPTConfig", "MiniBertConfig", "MiniT5Config", "MINIGPT_PRESETS"]
