"""MiniT5: the encoder-decoder family. Ships to the Hub: imports only torch, transformers and siblings.

What is T5-specific lives here: one token embedding shared by encoder, decoder and (when tied) the head, a
relative position bias computed once per stack and added in every layer, unscaled q.k attention, stacks with a
final RMSNorm, and the seq2seq LM head. The blocks are shared with GPT and BERT.

    tokens ─ embed ─ drop ─ [layer, bidirectional] x N ─ norm ─ drop ─────────────┐ encoder states
    decoder tokens ─ embed ─ drop ─ [layer, causal + cross-attention] x M ─ norm ─ drop ─ (x d^-0.5 if tied) ─ lm_head
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import DynamicCache, DynamicLayer, EncoderDecoderCache
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_minigpt import MiniT5Config
from .minigpt_layers import (
    Attention,
    MiniPreTrainedModel,
    RelativePositionBias,
    TransformerLayer,
    build_norm,
    check_input_ids,
)
from .minigpt_linear import linear


class MiniT5PreTrainedModel(MiniPreTrainedModel):
    """Flags and the label shift. The relative bias is an additive score term, which flash-attention kernels
    cannot take: use sdpa (default) or eager. bf16 and fp32 are fine; fp16 is known to overflow in T5's
    feed-forward activations, so do not run (or train) it in float16."""

    config_class = MiniT5Config
    config: MiniT5Config
    _supports_flash_attn = False
    _supports_flex_attn = False
    _auto_heads = {"AutoModel": "MiniT5Model", "AutoModelForSeq2SeqLM": "MiniT5ForConditionalGeneration"}
    _can_record_outputs = {
        "hidden_states": TransformerLayer,
        "attentions": OutputRecorder(Attention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(Attention, index=1, layer_name="cross_attn"),
    }

    def _init_weights(self, module):
        super()._init_weights(module)
        # T5's scales: unit-variance token embeddings (the tied head rescales by d**-0.5), an untied head whose
        # logits start at unit scale, and Mesh TensorFlow's per-projection scales (``_tag_init_scales``).
        # (Leaf modules only: containers are skipped when loaded as custom code.)
        if module is getattr(self, "embed_tokens", None):
            init.normal_(module.weight, std=1.0)
        elif module is getattr(self, "lm_head", None) and not self.config.tie_word_embeddings:
            init.normal_(module.weight, std=self.config.hidden_size**-0.5)
        elif getattr(module, "t5_init_std", None) is not None:
            init.normal_(module.weight, std=module.t5_init_std)

    def _tag_init_scales(self):
        """Give each projection of this stack T5's init std (Mesh TensorFlow's, as transformers' T5 uses): q
        (d·hd)^-0.5, k and v d^-0.5, o (nh·hd)^-0.5, MLP in d^-0.5, MLP out f^-0.5, relative bias d^-0.5. With 0.02
        everywhere beside unit-variance embeddings, the residual stream starts as the input embedding and the tied
        head predicts the decoder's own input token (first loss 11.2 against ln V = 7.6)."""
        c = self.config
        d, inner = c.hidden_size, c.num_attention_heads * c.head_dim
        stds = {"q_proj": (d * c.head_dim) ** -0.5, "k_proj": d**-0.5, "v_proj": d**-0.5, "o_proj": inner**-0.5,
                "gate_proj": d**-0.5, "up_proj": d**-0.5, "down_proj": c.intermediate_size**-0.5,
                "relative_attention_bias": d**-0.5}
        for name, module in self.named_modules():
            std = stds.get(name.rsplit(".", 1)[-1])
            if std is not None:
                module.t5_init_std = std

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B, T) -> decoder inputs (B, T): [decoder_start, labels[:-1]], with -100 replaced by pad."""
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None or pad is None:
            raise ValueError(
                f"labels were given but config.decoder_start_token_id={start!r} and config.pad_token_id={pad!r}: "
                "both must be set to build decoder_input_ids from labels (T5 uses the pad id for both)"
            )
        shifted = labels.new_full(labels.shape, start)
        shifted[..., 1:] = labels[..., :-1]
        return shifted.masked_fill(shifted == -100, pad)


class MiniT5Encoder(MiniT5PreTrainedModel):
    """Bidirectional stack. Owns the one token embedding, since generate() runs the encoder on its own."""

    def __init__(self, config: MiniT5Config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.relative_bias = RelativePositionBias(config, bidirectional=True)
        self.layers = nn.ModuleList(TransformerLayer(config, i, is_causal=False, attention_scaling=1.0)
                                    for i in range(config.num_hidden_layers))
        self.norm = build_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.gradient_checkpointing = False
        self._tag_init_scales()
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> BaseModelOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            check_input_ids(input_ids, self.config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        length = inputs_embeds.shape[1]
        bias = self.relative_bias(length, length)  # (1, nh, T, T), shared by every layer
        hidden_states = self.dropout(inputs_embeds)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, bias, **kwargs)  # positional: see TransformerLayer
        return BaseModelOutput(last_hidden_state=self.dropout(self.norm(hidden_states)))


class MiniT5Decoder(MiniT5PreTrainedModel):
    """Causal stack with cross-attention over the encoder states; takes embeddings from the shared table."""

    _can_record_outputs = {
        **MiniT5PreTrainedModel._can_record_outputs,
        "hidden_states": OutputRecorder(TransformerLayer, num_hidden_layers_key="num_decoder_layers"),
    }

    def __init__(self, config: MiniT5Config):
        super().__init__(config)
        self.relative_bias = RelativePositionBias(config, bidirectional=False)
        self.layers = nn.ModuleList(
            TransformerLayer(config, i, is_causal=True, has_cross_attention=True, attention_scaling=1.0)
            for i in range(config.num_decoder_layers))
        self.norm = build_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.gradient_checkpointing = False
        self._tag_init_scales()
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, inputs_embeds, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                past_key_values=None, use_cache=None, **kwargs) -> BaseModelOutputWithPastAndCrossAttentions:
        if use_cache and past_key_values is None:
            past_key_values = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        elif past_key_values is not None and not isinstance(past_key_values, EncoderDecoderCache):
            past_key_values = EncoderDecoderCache(past_key_values, DynamicCache(config=self.config))  # self-attn only
        if past_key_values is not None:
            # Caches built from the config (here and in generate()) hold num_hidden_layers, the encoder's depth.
            for cache in (past_key_values.self_attention_cache, past_key_values.cross_attention_cache):
                cache.layers.extend(DynamicLayer() for _ in range(len(self.layers) - len(cache.layers)))
        self_cache = past_key_values.self_attention_cache if past_key_values is not None else None
        past = self_cache.get_seq_length() if self_cache is not None else 0
        mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  past_key_values=self_cache)
        cross_mask = create_bidirectional_mask(config=self.config, inputs_embeds=inputs_embeds,
                                               attention_mask=encoder_attention_mask,
                                               encoder_hidden_states=encoder_hidden_states)
        length = inputs_embeds.shape[1]
        # Keys as attention will see them: past + T for a dynamic cache, the whole buffer for a static one.
        keys = self_cache.get_mask_sizes(length, 0)[0] if self_cache is not None else length
        bias = self.relative_bias(length, keys, past)  # (1, nh, T, keys): the new queries come after the past
        hidden_states = self.dropout(inputs_embeds)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask, bias, encoder_hidden_states, cross_mask,
                                  past_key_values=past_key_values, **kwargs)  # positional: see TransformerLayer
        hidden_states = self.dropout(self.norm(hidden_states))
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states,
                                                         past_key_values=past_key_values)


class MiniT5Model(MiniT5PreTrainedModel):
    """Encoder and decoder over one shared token embedding (``shared``, stored as ``encoder.embed_tokens``)."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]  # loading the backbone of a saved LM

    def __init__(self, config: MiniT5Config):
        super().__init__(config)
        self.encoder = MiniT5Encoder(config)
        self.decoder = MiniT5Decoder(config)
        self.post_init()

    @property
    def shared(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def get_input_embeddings(self):
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.encoder.embed_tokens = value

    def get_encoder(self, modality=None):
        return self.encoder

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None,
                use_cache=None, **kwargs) -> Seq2SeqModelOutput:
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, **kwargs)
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError("pass exactly one of decoder_input_ids or decoder_inputs_embeds (or labels)")
        if decoder_inputs_embeds is None:
            check_input_ids(decoder_input_ids, self.config.vocab_size)
            decoder_inputs_embeds = self.shared(decoder_input_ids)  # (B, T', D)
        decoder_outputs = self.decoder(
            inputs_embeds=decoder_inputs_embeds, attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state, encoder_attention_mask=attention_mask,
            past_key_values=past_key_values, use_cache=use_cache, **kwargs)
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state, past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states, decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions)


class MiniT5ForConditionalGeneration(MiniT5PreTrainedModel, GenerationMixin):
    """Encoder-decoder + LM head: text-to-text training (``labels``) and ``generate()`` (greedy, sampling, beams).

    With ``tie_word_embeddings`` (T5 v1.0) the head reuses the shared embedding and the decoder output is scaled
    by hidden_size**-0.5 first; untied (v1.1) it is a separate matrix and nothing is scaled. ``labels`` become
    ``decoder_input_ids`` by a shift right from ``decoder_start_token_id``; label -100 is ignored by the loss.
    Use bf16 or fp32: fp16 is known to overflow in T5.
    """

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}

    def __init__(self, config: MiniT5Config):
        super().__init__(config)
        self.model = MiniT5Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self, modality=None):
        return self.model.encoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor):
        return self._shift_right(labels)

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None,
                labels=None, use_cache=None, **kwargs) -> Seq2SeqLMOutput:
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            use_cache = False if use_cache is None else use_cache  # training: no cache to build by default
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self._shift_right(labels)
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache, **kwargs)
        hidden_states = outputs.last_hidden_state
        if self.config.tie_word_embeddings:
            hidden_states = hidden_states * self.config.hidden_size**-0.5  # Mesh TF rescale for the tied head
        logits = linear(self.lm_head, hidden_states)  # (B, T', V); batch-1 decoding: split GEMV (minigpt_linear)
        loss = None
        if labels is not None:
            loss = fixed_cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.to(logits.device).view(-1),
                                       num_items_in_batch=num_items_in_batch, ignore_index=-100)
        return Seq2SeqLMOutput(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values,
            decoder_hidden_states=outputs.decoder_hidden_states, decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions, encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states, encoder_attentions=outputs.encoder_attentions)


__all__ = ["MiniT5PreTrainedModel", "MiniT5Encoder", "MiniT5Decoder", "MiniT5Model", "MiniT5ForConditionalGeneration"]
