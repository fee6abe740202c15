"""MiniGPT: the decoder-only family. Ships to the Hub: imports only torch, transformers and siblings.

What is GPT-specific lives here: token embeddings plus absolute or rotary positions, the causal mask, a stack
of causal layers with a final norm, and the heads (LM, sequence classification). The blocks are shared.

    tokens ─ embed_tokens ─ (+ positions) ─ dropout ─ [TransformerLayer, causal] x N ─ norm ─ lm_head ─ logits
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_minigpt import MiniGPTConfig
from .minigpt_layers import MiniPreTrainedModel, TransformerLayer, build_norm, build_positions, check_input_ids


class MiniGPTPreTrainedModel(MiniPreTrainedModel):
    config_class = MiniGPTConfig
    config: MiniGPTConfig
    _auto_heads = {
        "AutoModel": "MiniGPTModel",
        "AutoModelForCausalLM": "MiniGPTForCausalLM",
        "AutoModelForSequenceClassification": "MiniGPTForSequenceClassification",
    }


class MiniGPTModel(MiniGPTPreTrainedModel):
    """The causal backbone: embeddings, N causal layers, final norm (pre-norm stacks only)."""

    def __init__(self, config: MiniGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = build_positions(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(TransformerLayer(config, i, is_causal=True) for i in range(config.num_hidden_layers))
        self.norm = build_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            check_input_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if position_ids is None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past).unsqueeze(0)

        mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  past_key_values=past_key_values, position_ids=position_ids)
        hidden_states, rotary = self.embed_positions(inputs_embeds, position_ids)
        hidden_states = self.dropout(hidden_states)
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_embeddings=rotary,
                                  past_key_values=past_key_values, **kwargs)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states), past_key_values=past_key_values)


class MiniGPTForCausalLM(MiniGPTPreTrainedModel, GenerationMixin):
    """Backbone + LM head (tied to the token embedding when ``tie_word_embeddings``). Works with ``generate()``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: MiniGPTConfig):
        super().__init__(config)
        self.model = MiniGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs) -> CausalLMOutputWithPast:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class MiniGPTForSequenceClassification(MiniGPTPreTrainedModel):
    """Backbone + linear score on the last non-pad token: classification fine-tuning and TRL reward models.

    Builds its backbone class directly (not through AutoModel), so it also loads under ``trust_remote_code``.
    """

    accepts_loss_kwargs = False  # the loss is a per-batch mean: Trainer must scale it for gradient accumulation

    def __init__(self, config: MiniGPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = MiniGPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, **kwargs) -> SequenceClassifierOutputWithPast:
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        logits = self.score(outputs.last_hidden_state)  # (B, T, num_labels)
        batch = logits.shape[0]
        if input_ids is not None and self.config.pad_token_id is not None:
            # Last non-pad token; works for left and right padding alike.
            non_pad = (input_ids != self.config.pad_token_id).to(logits.device, torch.int32)
            positions = torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
            last = (positions * non_pad).argmax(-1)
        elif attention_mask is not None:
            positions = torch.arange(attention_mask.shape[-1], device=logits.device)
            last = (positions * attention_mask.to(logits.device)).argmax(-1)
        elif batch == 1 or inputs_embeds is not None and input_ids is None:
            last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
        else:
            raise ValueError("batched classification needs config.pad_token_id or an attention_mask "
                             "to find each row's last token")
        pooled = logits[torch.arange(batch, device=logits.device), last]  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, pooled_logits=pooled, config=self.config)
        return SequenceClassifierOutputWithPast(loss=loss, logits=pooled, past_key_values=outputs.past_key_values,
                                                hidden_states=outputs.hidden_states, attentions=outputs.attentions)


__all__ = ["MiniGPTPreTrainedModel", "MiniGPTModel", "MiniGPTForCausalLM", "MiniGPTForSequenceClassification"]
