"""The gold test: transformers' GPT-2 and Llama, converted, give the same logits, loss and greedy tokens."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

from modeling_minigpt import MiniGPTForCausalLM, MiniGPTForSequenceClassification, convert_from_hf, convert_to_hf

V = 120


def gpt2(**kw):
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=V, n_positions=64, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=0, **kw)).eval()


def llama(kv_heads=2, **kw):
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                        num_key_value_heads=kv_heads, intermediate_size=96, vocab_size=V,
                                        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                        **kw)).eval()


REFERENCES = {
    "gpt2": gpt2,
    "gpt2-untied-relu": lambda: gpt2(activation_function="relu", tie_word_embeddings=False),
    "llama-gqa": llama,
    "llama-mha-tied": lambda: llama(kv_heads=4, tie_word_embeddings=True),
    "llama-mqa-theta": lambda: llama(kv_heads=1, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
}


@pytest.fixture
def batch():
    ids = torch.randint(3, V, (3, 16))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding
    mask[1, :2] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(REFERENCES))
def test_same_logits_and_loss(name, batch):
    ids, mask = batch
    ref = REFERENCES[name]()
    ours = convert_from_hf(ref)
    assert isinstance(ours, MiniGPTForCausalLM)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
        a, b = ours(ids, attention_mask=mask).logits, ref(ids, attention_mask=mask).logits
        torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-4, rtol=1e-4)
        labels = ids.masked_fill(mask == 0, -100)
        torch.testing.assert_close(ours(ids, attention_mask=mask, labels=labels).loss,
                                   ref(ids, attention_mask=mask, labels=labels).loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_same_greedy_generation_with_left_padding(name, batch):
    ids, mask = batch
    ref = REFERENCES[name]()
    ours = convert_from_hf(ref)
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    torch.testing.assert_close(ours.generate(ids, **kw), ref.generate(ids, **kw), atol=0, rtol=0)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_round_trip_back_to_transformers(name, batch):
    ids, _ = batch
    ref = REFERENCES[name]()
    back = convert_to_hf(convert_from_hf(ref))
    assert type(back) is type(ref)
    torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=0, rtol=0)


@pytest.mark.parametrize("cls,cfg", [
    (GPT2ForSequenceClassification, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=V, pad_token_id=0,
                                               num_labels=3)),
    (LlamaForSequenceClassification, LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                 num_key_value_heads=2, intermediate_size=96, vocab_size=V,
                                                 pad_token_id=0, num_labels=3)),
])
def test_sequence_classification_heads_match(cls, cfg, batch):
    ids, mask = batch
    ids = torch.cat([ids[:, 5:], torch.zeros(3, 5, dtype=torch.long)], 1)  # right padding: HF pools the last non-pad
    ref = cls(cfg).eval()
    ours = convert_from_hf(ref)
    assert isinstance(ours, MiniGPTForSequenceClassification)
    labels = torch.tensor([0, 2, 1])
    a, b = ours(ids, labels=labels), ref(ids, labels=labels)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(convert_to_hf(ours)(ids).logits, b.logits, atol=0, rtol=0)


def test_unsupported_configs_are_refused():
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        convert_from_hf(gpt2(scale_attn_by_inverse_layer_idx=True))
    ours = convert_from_hf(gpt2())
    ours.config.norm_position = "post"
    with pytest.raises(ValueError, match="no transformers equivalent"):
        convert_to_hf(ours)
