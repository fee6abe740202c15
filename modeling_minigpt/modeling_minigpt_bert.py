"""MiniBert: the encoder-only family. Ships to the Hub: imports only torch, transformers and siblings.

What is BERT-specific lives here: word + position + token-type embeddings with their norm, the bidirectional
mask, a stack of non-causal layers, the pooler and the heads (masked LM, sequence and token classification).

    tokens ─ embed_tokens (+ token types) (+ positions) ─ embed_norm ─ dropout ─ [TransformerLayer, bidirectional] x N
           ─ norm (pre-norm only) ─┬─ transform ─ lm_head (tied) ─ MLM logits
                                   └─ pooler([CLS]) ─ dropout ─ classifier

BERT (the default) is post-norm: every sublayer ends in its norm, so the embeddings are normalised and no final
norm is needed. The pre-norm variant (ModernBERT-like: ``norm_position="pre"``, with ``position_embedding_type=
"rope"``, ``norm_type="rmsnorm"``, ``mlp_gated=True`` as you like) keeps the embedding norm, drops the first
layer's attention norm (its input is already normalised, as in ModernBERT) and ends with a final norm.
"""

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_minigpt import MiniBertConfig
from .minigpt_layers import (
    ACT_FNS,
    MiniPreTrainedModel,
    TransformerLayer,
    build_norm,
    build_positions,
    check_input_ids,
)


class MiniBertPreTrainedModel(MiniPreTrainedModel):
    config_class = MiniBertConfig
    config: MiniBertConfig
    _auto_heads = {
        "AutoModel": "MiniBertModel",
        "AutoModelForMaskedLM": "MiniBertForMaskedLM",
        "AutoModelForSequenceClassification": "MiniBertForSequenceClassification",
        "AutoModelForTokenClassification": "MiniBertForTokenClassification",
    }


class MiniBertPooler(nn.Module):
    """dense + tanh on the first ([CLS]) token: BERT's sentence vector."""

    def __init__(self, config: MiniBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states):
        return self.activation(self.dense(hidden_states[:, 0]))


class MiniBertModel(MiniBertPreTrainedModel):
    """The bidirectional backbone. ``add_pooling_layer`` overrides ``config.add_pooling_layer`` (heads that do not
    use the pooler build none, so no parameter goes unused under DDP)."""

    def __init__(self, config: MiniBertConfig, add_pooling_layer: bool | None = None):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        )
        self.embed_positions = build_positions(config)
        self.embed_norm = build_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(config, i, is_causal=False) for i in range(config.num_hidden_layers)
        )
        pre_norm = config.norm_position == "pre"
        if pre_norm:
            self.layers[0].attn_norm = nn.Identity()  # embed_norm already normalised its input
        self.norm = build_norm(config) if pre_norm else nn.Identity()
        add_pooling_layer = config.add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        self.pooler = MiniBertPooler(config) if add_pooling_layer else None
        self.gradient_checkpointing = False
        self.post_init()

    def _embed(self, input_ids, token_type_ids, position_ids, inputs_embeds):
        if inputs_embeds is None:
            check_input_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
            _check_token_types(token_type_ids, self.config.type_vocab_size)
            inputs_embeds = inputs_embeds + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            _check_token_types(token_type_ids, 0)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        hidden_states, rotary = self.embed_positions(inputs_embeds, position_ids)
        return self.dropout(self.embed_norm(hidden_states)), rotary

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, **kwargs) -> BaseModelOutputWithPooling:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        kwargs.pop("use_cache", None)  # an encoder keeps no cache
        hidden_states, rotary = self._embed(input_ids, token_type_ids, position_ids, inputs_embeds)
        # None when nothing is padded (sdpa); the layers' attention has is_causal=False, so None means "see all".
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=rotary, **kwargs)
        hidden_states = self.norm(hidden_states)
        pooled = self.pooler(hidden_states) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=pooled)


def _check_token_types(token_type_ids, type_vocab_size):
    """type_vocab_size=0 disables token types; the all-zero segments tokenizers emit are then accepted."""
    if torch.compiler.is_compiling() or not token_type_ids.numel():
        return
    low, high, limit = int(token_type_ids.min()), int(token_type_ids.max()), max(type_vocab_size, 1)
    if low < 0 or high >= limit:
        raise ValueError(f"token_type_ids contains {high if high >= limit else low}, outside [0, {limit}) "
                         f"allowed by config.type_vocab_size={type_vocab_size}")


def _zero_if_no_targets(loss, labels, ignore_index=-100):
    """A batch whose labels are all ``ignore_index`` has a 0/0 mean: return 0 (with zero gradients) instead of
    NaN, without a host sync, so a rare unmasked batch cannot poison training."""
    has_targets = (labels != ignore_index).any()
    return torch.where(has_targets, loss, torch.zeros_like(loss))


class MiniBertMLMTransform(nn.Module):
    """dense + act + norm before the vocabulary projection (BERT's prediction-head transform)."""

    def __init__(self, config: MiniBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act_fn = ACT_FNS[config.hidden_act]
        self.norm = build_norm(config)

    def forward(self, hidden_states):
        return self.norm(self.act_fn(self.dense(hidden_states)))


class MiniBertForMaskedLM(MiniBertPreTrainedModel):
    """Backbone + MLM head; the decoder is tied to the word embeddings and has its own bias.

    Loss: mean cross-entropy over labels != -100. A batch with no masked token gives loss 0 (not NaN) and zero
    gradients.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniBertConfig):
        super().__init__(config)
        self.model = MiniBertModel(config, add_pooling_layer=False)
        self.transform = MiniBertMLMTransform(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs) -> MaskedLMOutput:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.lm_head(self.transform(outputs.last_hidden_state))  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            loss = _zero_if_no_targets(loss, labels)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)


def _add_classifier(head, config, backbone):
    """Backbone, dropout and linear classifier of the two classification heads, then HF's post_init."""
    head.num_labels = config.num_labels
    head.model = backbone
    dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
    head.dropout = nn.Dropout(dropout)
    head.classifier = nn.Linear(config.hidden_size, config.num_labels)
    head.post_init()


class MiniBertForSequenceClassification(MiniBertPreTrainedModel):
    """Backbone + dropout + linear classifier on the pooled [CLS] vector (the raw [CLS] state when
    ``config.add_pooling_layer`` is False). ``config.problem_type`` picks regression / single- / multi-label loss.

    Builds its backbone class directly (not through AutoModel), so it also loads under ``trust_remote_code``.
    """

    accepts_loss_kwargs = False  # one label per row: let Trainer average micro-batches (MSE/BCE ignore item counts)

    def __init__(self, config: MiniBertConfig):
        super().__init__(config)
        _add_classifier(self, config, MiniBertModel(config))

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs) -> SequenceClassifierOutput:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        pooled = outputs.pooler_output if outputs.pooler_output is not None else outputs.last_hidden_state[:, 0]
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=logits, config=self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


class MiniBertForTokenClassification(MiniBertPreTrainedModel):
    """Backbone + dropout + linear classifier on every token (NER, tagging); labels -100 are ignored."""

    def __init__(self, config: MiniBertConfig):
        super().__init__(config)
        _add_classifier(self, config, MiniBertModel(config, add_pooling_layer=False))

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, **kwargs) -> TokenClassifierOutput:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             position_ids=position_ids, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, config=self.config, **kwargs)
            loss = _zero_if_no_targets(loss, labels)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)


__all__ = [
    "MiniBertPreTrainedModel", "MiniBertModel", "MiniBertForMaskedLM", "MiniBertForSequenceClassification",
    "MiniBertForTokenClassification",
]
