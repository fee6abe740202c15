"""MiniT5 as a first-class transformers seq2seq model: caches, masks, labels, generation, saving, training."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from modeling_minigpt import (
    DataCollatorForSpanCorruption,
    MiniT5Config,
    MiniT5ForConditionalGeneration,
    MiniT5Model,
)
from modeling_minigpt.tokenization import train_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
V = 120
VERSIONS = {"v1.0": {}, "v1.1": dict(hidden_act="gelu_tanh", mlp_gated=True, tie_word_embeddings=False)}


def config(version="v1.0", **kw):
    base = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
                intermediate_size=128, hidden_dropout=0.0)
    return MiniT5Config(**{**base, **VERSIONS[version], **kw})


def tiny(version="v1.0", **kw):
    """A random MiniT5 whose greedy output varies: weights spread wider than the init (about T5's own scale)."""
    model = MiniT5ForConditionalGeneration(config(version, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, 0.05 if "embed_tokens" in name else 0.125)
    return model


def ids(batch=2, length=9, low=3):
    return torch.randint(low, V, (batch, length))


def greedy(model, x, **kw):
    return model.generate(x, max_new_tokens=10, do_sample=False, eos_token_id=None, **kw)


# ------------------------------------------------------------------------------------------- caches


@pytest.mark.parametrize("version", VERSIONS)
def test_cache_equals_no_cache(version):
    model = tiny(version)
    x = ids()
    cached = greedy(model, x, use_cache=True)
    assert len(set(cached[:, 1:].flatten().tolist())) > 2, "degenerate output proves little"
    torch.testing.assert_close(cached, greedy(model, x, use_cache=False))


@pytest.mark.parametrize("version", VERSIONS)
def test_incremental_decoding_logits_equal_full_decoding(version):
    model = tiny(version)
    x, dec = ids(), ids(length=6, low=0)
    with torch.no_grad():
        full = model(input_ids=x, decoder_input_ids=dec).logits
        out = model(input_ids=x, decoder_input_ids=dec[:, :2], use_cache=True)
        steps = [out.logits]
        for t in range(2, dec.shape[1]):  # the encoder runs once; each step feeds one new decoder token
            out = model(encoder_outputs=(out.encoder_last_hidden_state,), decoder_input_ids=dec[:, t:t + 1],
                        past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_static_cache_generates_as_the_dynamic_cache():
    # A static cache shows attention all max_cache_len key slots: the relative bias must span them.
    model = tiny("v1.1")
    x = ids()
    torch.testing.assert_close(greedy(model, x, cache_implementation="static"), greedy(model, x))


def test_a_plain_dynamic_cache_serves_as_the_self_attention_cache():
    model = tiny()
    x, dec = ids(), ids(length=3, low=0)
    with torch.no_grad():
        full = model(input_ids=x, decoder_input_ids=dec).logits
        out = model(input_ids=x, decoder_input_ids=dec[:, :2], past_key_values=DynamicCache(), use_cache=True)
        assert isinstance(out.past_key_values, EncoderDecoderCache)
        step = model(input_ids=x, decoder_input_ids=dec[:, 2:], past_key_values=out.past_key_values).logits
    torch.testing.assert_close(torch.cat([out.logits, step], 1), full, atol=1e-5, rtol=1e-5)


def test_beam_search_with_and_without_cache():
    model = tiny("v1.1")
    kw = dict(max_new_tokens=8, num_beams=4, num_return_sequences=2, do_sample=False)
    x = ids()
    beams = model.generate(x, **kw)
    assert beams.shape[0] == 4 and beams.shape[1] <= 9
    torch.testing.assert_close(beams, model.generate(x, use_cache=False, **kw))


def test_unequal_depths_generate_and_record_outputs():
    model = tiny("v1.1", num_hidden_layers=2, num_decoder_layers=3)
    x = ids()
    torch.testing.assert_close(greedy(model, x), greedy(model, x, use_cache=False))
    model.set_attn_implementation("eager")
    out = model(input_ids=x, decoder_input_ids=ids(length=4), output_hidden_states=True, output_attentions=True)
    assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 4
    assert len(out.encoder_attentions) == 2 and len(out.decoder_attentions) == 3 and len(out.cross_attentions) == 3
    assert out.decoder_attentions[0].shape == (2, 4, 4, 4) and out.cross_attentions[0].shape == (2, 4, 4, 9)


# ------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_encoder_is_bidirectional_and_decoder_causal(attn, padded):
    model = tiny()
    model.set_attn_implementation(attn)
    x, dec = ids(), ids(length=5)
    mask = torch.ones_like(x)
    if padded:
        mask[:, -1] = 0  # padding at the end: the changed token below is still a real one
    changed, dec_changed = x.clone(), dec.clone()
    changed[:, -2] = (changed[:, -2] + 1) % V
    dec_changed[:, -1] = (dec_changed[:, -1] + 1) % V
    with torch.no_grad():
        enc = model.get_encoder()
        a = enc(input_ids=x, attention_mask=mask).last_hidden_state
        b = enc(input_ids=changed, attention_mask=mask).last_hidden_state
        assert not torch.allclose(a[:, 0], b[:, 0]), "position 0 of the encoder must see later tokens"
        la = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits
        lb = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec_changed).logits
    torch.testing.assert_close(la[:, :-1], lb[:, :-1])  # earlier decoder positions never see later ones
    assert not torch.allclose(la[:, -1], lb[:, -1])


def test_eager_equals_sdpa_with_padding():
    model = tiny("v1.1")
    x, dec = ids(3, 10), ids(3, 6, low=0)
    mask, dec_mask = torch.ones_like(x), torch.ones_like(dec)
    mask[0, 6:], mask[2, 2:], dec_mask[1, 4:] = 0, 0, 0
    outs = []
    for attn in ("eager", "sdpa"):
        model.set_attn_implementation(attn)
        with torch.no_grad():
            outs.append(model(input_ids=x, attention_mask=mask, decoder_input_ids=dec,
                              decoder_attention_mask=dec_mask).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_padded_row_equals_row_alone():
    model = tiny()
    x, dec = ids(2, 10), ids(2, 4)
    mask = torch.ones_like(x)
    mask[1, 6:] = 0
    with torch.no_grad():
        batched = model(input_ids=x, attention_mask=mask, decoder_input_ids=dec).logits[1]
        alone = model(input_ids=x[1:, :6], decoder_input_ids=dec[1:]).logits[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- labels and heads


def test_labels_shift_right_and_minus_100_is_ignored():
    model = tiny()
    x, labels = ids(), ids(length=5)
    labels[0, 3:] = -100
    out = model(input_ids=x, labels=labels)
    dec = torch.cat([torch.zeros(2, 1, dtype=torch.long), labels[:, :-1].clamp(min=0)], 1)  # start = pad = 0
    logits = model(input_ids=x, decoder_input_ids=dec).logits
    torch.testing.assert_close(out.logits, logits)
    keep = labels != -100
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits[keep], labels[keep]))


@pytest.mark.parametrize("field", ["decoder_start_token_id", "pad_token_id"])
def test_labels_without_start_or_pad_token_is_a_clear_error(field):
    model = MiniT5ForConditionalGeneration(config(**{field: None}))
    with pytest.raises(ValueError, match=field):
        model(input_ids=ids(), labels=ids(length=4))


@pytest.mark.parametrize("field, value, match", [
    ("relative_attention_num_buckets", 2, "relative_attention_num_buckets=2 must be an integer >= 4"),
    # 32 buckets keep 16 exact decoder offsets: the log-spaced ones must reach beyond them
    ("relative_attention_max_distance", 16, "relative_attention_max_distance=16 must be an integer >= 17"),
    ("position_embedding_type", "rope", "position_embedding_type='rope'"),
])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        config(**{"relative_attention_num_buckets": 32, field: value})
    config(relative_attention_num_buckets=32, relative_attention_max_distance=17)  # the smallest that works


def test_missing_decoder_inputs_is_a_clear_error():
    with pytest.raises(ValueError, match="decoder_input_ids"):
        tiny()(input_ids=ids())


def test_tied_head_scales_and_untied_head_does_not():
    tied, untied = tiny("v1.0"), tiny("v1.1")
    assert tied.lm_head.weight is tied.model.shared.weight
    assert untied.lm_head.weight is not untied.model.shared.weight
    x, dec = ids(), ids(length=3)
    with torch.no_grad():
        hidden = tied.model(input_ids=x, decoder_input_ids=dec).last_hidden_state
        torch.testing.assert_close(tied(input_ids=x, decoder_input_ids=dec).logits,
                                   hidden * 64**-0.5 @ tied.model.shared.weight.T)


def test_inputs_embeds_equal_input_ids():
    model = tiny()
    x, dec = ids(), ids(length=4)
    emb = model.get_input_embeddings()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=emb(x), decoder_inputs_embeds=emb(dec)).logits,
                                   model(input_ids=x, decoder_input_ids=dec).logits)


def test_resize_token_embeddings_keeps_the_tie():
    model = tiny()
    model.resize_token_embeddings(V + 8)
    assert model.lm_head.weight is model.model.shared.weight and model.lm_head.weight.shape[0] == V + 8
    assert model(input_ids=ids(), decoder_input_ids=torch.tensor([[V + 7], [V + 1]])).logits.shape == (2, 1, V + 8)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(reentrant):
    # Reentrant checkpointing (PEFT's prepare_model_for_kbit_training default) replays only positional inputs: the
    # shared relative bias and the encoder states must reach each layer that way, or backward runs twice through them.
    x, labels = ids(), ids(length=5)
    state = tiny("v1.1").state_dict()
    grads = []
    for checkpointing in (False, True):
        model = MiniT5ForConditionalGeneration(config("v1.1")).train()
        model.load_state_dict(state)
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": reentrant})
        model(input_ids=x, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4, rtol=1e-4, msg=name)  # recompute order


@pytest.mark.parametrize("version", VERSIONS)
def test_fresh_model_starts_near_a_uniform_guess(version):
    # T5's init scales (Mesh TF's, as transformers' T5): the first loss is about ln V, not a copy of the decoder's
    # input token, which unit-variance embeddings beside 0.02 projections gave (loss 11.2 at ln V = 7.6).
    torch.manual_seed(0)
    vocab = 2048
    model = MiniT5ForConditionalGeneration(config(version, vocab_size=vocab, hidden_size=128, head_dim=32,
                                                  intermediate_size=512)).eval()
    x, labels = torch.randint(3, vocab, (8, 64)), torch.randint(3, vocab, (8, 30))
    with torch.no_grad():
        out = model(input_ids=x, labels=labels)
    copied = out.logits.softmax(-1).gather(-1, model._shift_right(labels)[..., None]).mean()
    assert abs(out.loss.item() - math.log(vocab)) < 1.0 and copied < 0.3
    q = model.model.encoder.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - (128 * 32) ** -0.5) < 0.1 * (128 * 32) ** -0.5


def test_bf16_forward_is_finite():
    model = tiny("v1.1").to(torch.bfloat16)
    out = model(input_ids=ids(), labels=ids(length=4))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


# ------------------------------------------------------------------------------------------- saving and text


@pytest.mark.parametrize("version", VERSIONS)
def test_save_load_round_trip_with_both_heads_in_auto_map(version, tmp_path):
    model = tiny(version)
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_minigpt.MiniT5Config",
        "AutoModel": "modeling_minigpt_t5.MiniT5Model",
        "AutoModelForSeq2SeqLM": "modeling_minigpt_t5.MiniT5ForConditionalGeneration",
    }
    assert (tmp_path / "modeling_minigpt_t5.py").is_file() and (tmp_path / "minigpt_layers.py").is_file()
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert (loaded.lm_head.weight is loaded.model.shared.weight) == (version == "v1.0")
    x = ids()
    torch.testing.assert_close(greedy(loaded, x), greedy(model, x))
    base = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    assert isinstance(base, MiniT5Model)
    torch.testing.assert_close(base.shared.weight, model.model.shared.weight)


@pytest.fixture(scope="module")
def t5_tokenizer():
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise FileNotFoundError(f"the shared test data is expected at {path}")
    return train_tokenizer(texts=[path.read_text()[:100_000]], vocab_size=400, family="t5", show_progress=False)


def test_span_corruption_training_then_text_from_saved_folder(t5_tokenizer, tmp_path):
    """transformers 5 removed the text2text-generation pipeline; the user path is AutoTokenizer + generate()."""
    tok = t5_tokenizer
    model = MiniT5ForConditionalGeneration(config(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                  eos_token_id=tok.eos_token_id,
                                                  decoder_start_token_id=tok.pad_token_id)).train()
    collator = DataCollatorForSpanCorruption.from_tokenizer(tok, seed=0)
    lines = [line for line in (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:3000].splitlines()
             if len(line) > 20][:8]
    batch = collator([tok(line) for line in lines])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):  # memorise one batch: the collator's inputs/labels must be a learnable pairing
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=True)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True).eval()
    out = loaded.generate(**loaded_tok(["To be, or not to be"], return_tensors="pt"), max_new_tokens=8)
    text = loaded_tok.batch_decode(out, skip_special_tokens=True)
    assert isinstance(text[0], str) and len(text[0]) > 0
