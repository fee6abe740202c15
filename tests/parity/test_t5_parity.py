"""The gold test: transformers' T5 (v1.0 and v1.1), converted, gives the same logits, loss and generated tokens."""

import pytest
import torch
from transformers import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5ForQuestionAnswering, T5Model

from modeling_minigpt import MiniT5ForConditionalGeneration, MiniT5Model, convert_from_hf, convert_to_hf

V = 120
VERSIONS = {"v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
            "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}


def t5(version, cls=T5ForConditionalGeneration, **kw):
    """A tiny random T5 whose greedy output is not one repeated token: weights spread wider than the init."""
    config = T5Config(vocab_size=V, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, **{**VERSIONS[version], **kw})
    model = cls(config).eval()
    with torch.no_grad():
        if version == "v1.1" and cls is T5ForConditionalGeneration:  # transformers 5 builds T5 tied: untie it
            model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 64) * 64**-0.5)
        model.shared.weight.mul_(0.1)
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.normal_(1.0, 0.2)
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
    return model


@pytest.fixture
def batch():
    ids = torch.randint(3, V, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # right padding in the encoder
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    labels = torch.randint(3, V, (3, 6))
    labels[1, 4:] = -100
    return ids, mask, labels


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("version", list(VERSIONS))
def test_same_logits_and_loss(version, attn, batch):
    ids, mask, labels = batch
    ref = t5(version)
    ours = convert_from_hf(ref)
    assert isinstance(ours, MiniT5ForConditionalGeneration)
    assert ours.config.tie_word_embeddings == (version == "v1.0") and ours.config.mlp_gated == (version == "v1.1")
    ref.set_attn_implementation(attn)
    ours.set_attn_implementation(attn)
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, labels=labels)
        b = ours(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.encoder_last_hidden_state, a.encoder_last_hidden_state, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_same_greedy_tokens_with_and_without_cache(version, batch):
    ids, mask, _ = batch
    ref = t5(version)
    ours = convert_from_hf(ref)
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=None)
    expected = ref.generate(ids, **kw)
    assert len(set(expected[:, 1:].flatten().tolist())) > 2, "degenerate reference output proves little"
    torch.testing.assert_close(ours.generate(ids, use_cache=True, **kw), expected)
    torch.testing.assert_close(ours.generate(ids, use_cache=False, **kw), expected)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_same_beam_search_output(version, batch):
    ids, mask, _ = batch
    ref = t5(version)
    ours = convert_from_hf(ref)
    kw = dict(attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False)
    torch.testing.assert_close(ours.generate(ids, **kw), ref.generate(ids, **kw))


@pytest.mark.parametrize("version", list(VERSIONS))
def test_to_hf_round_trip(version, batch):
    ids, mask, labels = batch
    ref = t5(version)
    back = convert_to_hf(convert_from_hf(ref))
    assert isinstance(back, T5ForConditionalGeneration)
    assert (back.lm_head.weight is back.shared.weight) == (version == "v1.0")
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, attention_mask=mask, labels=labels).logits,
                                   ref(input_ids=ids, attention_mask=mask, labels=labels).logits)


def test_mini_built_from_scratch_converts_to_hf():
    ours = convert_from_hf(t5("v1.1"))
    fresh = MiniT5ForConditionalGeneration(ours.config).eval()
    ids = torch.randint(3, V, (2, 9))
    dec = torch.randint(3, V, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(convert_to_hf(fresh)(input_ids=ids, decoder_input_ids=dec).logits,
                                   fresh(input_ids=ids, decoder_input_ids=dec).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_base_model_parity(version, batch):
    ids, mask, _ = batch
    ref = t5(version, cls=T5Model)
    ours = convert_from_hf(ref)
    assert isinstance(ours, MiniT5Model)
    dec = torch.randint(3, V, (3, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).last_hidden_state,
                                   ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).last_hidden_state,
                                   atol=1e-4, rtol=1e-4)
    assert isinstance(convert_to_hf(ours), T5Model)


def test_unequal_encoder_and_decoder_depths():
    ref = t5("v1.1", num_decoder_layers=3)
    ours = convert_from_hf(ref)
    assert ours.config.num_decoder_layers == 3 and len(ours.model.decoder.layers) == 3
    ids, dec = torch.randint(3, V, (2, 7)), torch.randint(3, V, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids, decoder_input_ids=dec).logits,
                                   ref(input_ids=ids, decoder_input_ids=dec).logits, atol=1e-4, rtol=1e-4)


def test_unconvertible_configs_are_clear_errors():
    ref = t5("v1.0")
    with torch.no_grad():
        ref.lm_head.weight = torch.nn.Parameter(torch.randn(V, 64))  # scaled (v1.0) but untied: no MiniT5 form
    with pytest.raises(ValueError, match="lm_head"):
        convert_from_hf(ref)
    for other in (T5EncoderModel, T5ForQuestionAnswering):  # heads MiniT5 lacks
        with pytest.raises(ValueError, match=f"cannot convert {other.__name__}; supported"):
            convert_from_hf(other(ref.config))
    ours = convert_from_hf(t5("v1.0"))
    ours.config.norm_type = "layernorm"
    with pytest.raises(ValueError, match="RMSNorm"):
        convert_to_hf(ours)
