"""MiniGPT: the decoder-only family. Ships to the Hub: imports only torch, transformers and siblings.

What is GPT-specific lives here: token embeddings plus absolute or rotary positions, the causal mask, a stack
of causal layers with a final norm, and the heads (LM, sequence classification). The blocks are shared.

    tokens ─ embed_tokens ─ (+ positions) ─ dropout ─ [TransformerLayer, causal] x N ─ norm ─ lm_head ─ logits

In training mode with ``labels``, the LM head and the cross-entropy run fused, in row chunks: the loss is
exact, and the (batch, seq, vocab) logits are never built, so ``logits`` is None (``skip_logits=False`` asks for
them). Evaluation and generation (eval mode) always return logits.
"""

import inspect

import torch
import torch.nn.functional as F
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
from .minigpt_linear import linear, plain_linear


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``, in row chunks.

    Hand-written because torch has no fused linear + cross-entropy on CPU. The gradients are computed in the
    forward, chunk by chunk (as Liger's fused linear cross-entropy does), so neither the (N, V) logits nor a
    softmax is kept for the backward. hidden (N, D), weight (V, D), targets (N,) all in [0, V).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int, with_grads: bool):
        need_h, need_w = with_grads and ctx.needs_input_grad[0], with_grads and ctx.needs_input_grad[1]
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for start in range(0, hidden.shape[0], chunk_rows):
            h, t = hidden[start:start + chunk_rows], targets[start:start + chunk_rows]
            logits = (h @ weight.t()).float()  # (n, V)
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (need_h or need_w):
                continue
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place: d loss / d logits = softmax - one_hot
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1
            grad = grad.to(h.dtype)
            if need_h:
                grad_h[start:start + chunk_rows] = grad @ weight  # (n, D)
            if need_w and grad.dtype == grad_w.dtype == h.dtype and not torch.is_autocast_enabled(h.device.type):
                grad_w.addmm_(grad.t(), h)  # (V, D)
            elif need_w:  # under autocast a bf16/fp16 GEMM (an in-place addmm_ would escape it and run in fp32)
                grad_w += (grad.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        grad_h = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        grad_w = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None, None


def causal_lm_loss_fused(hidden_states, weight, labels=None, shift_labels=None, num_items_in_batch=None,
                         ignore_index=-100, chunk_rows=None, **kwargs):
    """transformers' ``ForCausalLMLoss`` (shift, ignore_index, sum / num_items_in_batch or mean) without logits."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]  # (B, T): position t predicts t + 1
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # (B*T, D)
    targets = shift_labels.reshape(-1).to(hidden.device)
    keep = (targets != ignore_index).nonzero().squeeze(1)
    if keep.numel() < targets.numel():
        hidden, targets = hidden[keep], targets[keep]
    # fp32 logits per chunk: 16 MB on CPU (stays in cache); 512 MB on GPUs, where small chunks starve the GEMMs
    # and each chunk costs kernel launches (83-row chunks of GPT-2's vocab ran 0.77x HF on an H100, 4096 rows 1.38x).
    chunk_rows = chunk_rows or max(32, (1 << (22 if hidden.device.type == "cpu" else 27)) // weight.shape[0])
    loss = LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, torch.is_grad_enabled())
    if num_items_in_batch is None:
        return loss / keep.numel()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


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
        self.layers = nn.ModuleList(TransformerLayer(config, i, is_causal=True)
                                    for i in range(config.num_hidden_layers))
        self.norm = build_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _decoding_without_mask(self, inputs_embeds, attention_mask, past_key_values) -> bool:
        """One new token, no padding and a DynamicCache (which holds exactly the past): every key is visible, so
        sdpa and eager need no mask. Skips create_causal_mask, a large share of a small model's decoding step."""
        return (inputs_embeds.shape[1] == 1 and type(past_key_values) is DynamicCache
                and self.config._attn_implementation in ("sdpa", "eager") and not torch.compiler.is_compiling()
                and (attention_mask is None or bool(attention_mask.all())))

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

        if self._decoding_without_mask(inputs_embeds, attention_mask, past_key_values):
            mask = None
        else:
            mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      past_key_values=past_key_values, position_ids=position_ids)
        hidden_states, rotary = self.embed_positions(inputs_embeds, position_ids)
        if self.training and self.dropout.p > 0:
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

    def _fuse_loss(self, labels, skip_logits, logits_to_keep) -> bool:
        """Fused LM head + loss: by default when training with labels, with a plain bias-free head and all
        positions kept. A PEFT, quantized, sharded, hooked or patched head runs as it is, so its weight alone is
        not taken for the head. Under ``torch.compile`` the plain head + cross-entropy runs: inductor fuses it, and
        on CUDA (torch 2.11) dynamo traced this autograd Function's gradients-in-forward wrongly."""
        if skip_logits is None:
            skip_logits = self.training and labels is not None
        plain_head = plain_linear(self.lm_head) and self.lm_head.bias is None
        return (skip_logits and labels is not None and plain_head and logits_to_keep == 0
                and not torch.compiler.is_compiling())

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, skip_logits=None,
                **kwargs) -> CausalLMOutputWithPast:
        """``skip_logits``: compute the loss without building logits (default: in training mode, with labels)."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                             **kwargs)
        logits = loss = None
        if self._fuse_loss(labels, skip_logits, logits_to_keep):
            loss = causal_lm_loss_fused(outputs.last_hidden_state, self.lm_head.weight, labels, **kwargs)
        else:
            hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
            logits = linear(self.lm_head, hidden_states)  # (B, T, V)
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)


# generate() reads the forward's signature at every step for classes registered with an Auto class, as ours are
# (transformers' `is_remote_code`), and inspect rebuilds it each time (about 50 us). A precomputed one is returned
# as is.
MiniGPTForCausalLM.forward.__signature__ = inspect.signature(MiniGPTForCausalLM.forward)


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


__all__ = ["LinearCrossEntropy", "causal_lm_loss_fused", "MiniGPTPreTrainedModel", "MiniGPTModel", "MiniGPTForCausalLM",
           "MiniGPTForSequenceClassification"]
