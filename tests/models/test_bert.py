"""MiniBert as a first-class transformers encoder: bidirectional attention, heads and losses, save/load, pipelines,
and the masked-LM collators with a minigpt BERT tokenizer."""

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForLanguageModeling,
    pipeline,
)

from modeling_minigpt import (
    MiniBertConfig,
    MiniBertForMaskedLM,
    MiniBertForSequenceClassification,
    MiniBertForTokenClassification,
    MiniBertModel,
)
from modeling_minigpt.data.collators import DataCollatorForWholeWordMask
from modeling_minigpt.tokenization import train_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
V = 99
VARIANTS = {
    "bert": {},  # post-norm, learned positions, LayerNorm, token types: the original
    "modern": dict(norm_position="pre", position_embedding_type="rope", norm_type="rmsnorm", mlp_gated=True,
                   attention_bias=False, mlp_bias=False, type_vocab_size=0),
}


def config(variant="bert", **kw):
    base = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
    return MiniBertConfig(**{**base, **VARIANTS[variant], **kw})


def ids(batch=2, length=10):
    return torch.randint(5, V, (batch, length))


@pytest.fixture(scope="module")
def text():
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        raise FileNotFoundError(f"the shared test data is expected at {path}")
    return path.read_text()[:200_000]


@pytest.fixture(scope="module")
def lines(text):
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "text.txt"
    path.write_text(text)
    return train_tokenizer(files=[str(path)], vocab_size=512, family="bert", show_progress=False)


# ------------------------------------------------------------------------------------------- the encoder


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_position_0_sees_later_tokens(variant, attn, padded):
    model = MiniBertModel(config(variant, attn_implementation=attn)).eval()
    x = ids(1, 10)
    mask = torch.ones_like(x)
    if padded:
        mask[0, 8:] = 0
    y = x.clone()
    y[0, 6] = (x[0, 6] + 1 - 5) % (V - 5) + 5  # a later, real token changes
    h = model(x, attention_mask=mask).last_hidden_state
    assert not torch.allclose(h[0, 0], model(y, attention_mask=mask).last_hidden_state[0, 0], atol=1e-4)
    if padded:  # a change under the padding is invisible to the real tokens
        z = x.clone()
        z[0, 9] = (x[0, 9] + 1 - 5) % (V - 5) + 5
        torch.testing.assert_close(model(z, attention_mask=mask).last_hidden_state[0, :8], h[0, :8])


@pytest.mark.parametrize("variant", VARIANTS)
def test_eager_equals_sdpa_with_padding(variant):
    torch.manual_seed(1)
    sdpa = MiniBertForMaskedLM(config(variant, attn_implementation="sdpa")).eval()
    eager = MiniBertForMaskedLM(config(variant, attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    x, mask = ids(3, 12), torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:], mask[2, 3:] = 0, 0
    a, b = sdpa(x, attention_mask=mask).logits, eager(x, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(b.logits[mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)
    assert len(b.attentions) == 2 and torch.all(b.attentions[0][2, :, :, 3:] == 0)  # padded keys get no weight


def test_flex_attention_equals_sdpa_with_padding(flex_calls):
    """Bidirectional attention through the registry's flex_attention backend (inference: torch's CPU flex has no
    backward): padded keys stay invisible, and the real tokens get sdpa's logits."""
    torch.manual_seed(1)
    model = MiniBertForMaskedLM(config("modern")).eval()  # RoPE, RMSNorm, gated MLP
    x, mask = ids(3, 12), torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:], mask[2, 3:] = 0, 0
    with torch.no_grad():
        sdpa = model(x, attention_mask=mask).logits
        model.set_attn_implementation("flex_attention")
        flex = model(x, attention_mask=mask).logits
    assert len(flex_calls) == model.config.num_hidden_layers
    torch.testing.assert_close(flex[mask.bool()], sdpa[mask.bool()], atol=1e-5, rtol=1e-5)


def test_prenorm_variant_has_final_norm_and_learns():
    model = MiniBertForMaskedLM(config("modern"))
    assert isinstance(model.model.layers[0].attn_norm, torch.nn.Identity)  # input already normed by embed_norm
    assert not isinstance(model.model.norm, torch.nn.Identity)
    assert model.model.token_type_embeddings is None and "token_type" not in str(model.state_dict().keys())
    x = ids(2, 8)
    labels = torch.where(torch.rand(x.shape) < 0.5, x, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(x, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_token_types_matter_and_are_checked():
    model = MiniBertModel(config()).eval()
    x = ids(1, 8)
    types = torch.zeros_like(x)
    types[0, 4:] = 1
    assert not torch.allclose(model(x).last_hidden_state, model(x, token_type_ids=types).last_hidden_state)
    torch.testing.assert_close(model(x).last_hidden_state,
                               model(x, token_type_ids=torch.zeros_like(x)).last_hidden_state)
    with pytest.raises(ValueError, match="token_type_ids contains 2"):
        model(x, token_type_ids=types * 2)
    no_types = MiniBertModel(config("modern")).eval()
    no_types(x, token_type_ids=torch.zeros_like(x))  # what tokenizers emit for single sentences: accepted
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        no_types(x, token_type_ids=types)
    with pytest.raises(ValueError, match="token id 99"):
        model(torch.tensor([[5, V]]))
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(ids(1, 65))


def test_pooler_is_config_driven():
    assert MiniBertModel(config()).pooler is not None
    assert MiniBertModel(config(add_pooling_layer=False)).pooler is None
    assert MiniBertForMaskedLM(config()).model.pooler is None  # unused parameters would upset DDP
    assert MiniBertForTokenClassification(config()).model.pooler is None
    out = MiniBertModel(config()).eval()(ids())
    assert out.pooler_output.shape == (2, 64) and out.pooler_output.abs().max() <= 1  # tanh


@pytest.mark.parametrize("field, value", [
    ("type_vocab_size", -1), ("hidden_act", "tanh"), ("norm_position", "middle"), ("norm_type", "batchnorm"),
    ("hidden_dropout", 1.0), ("attention_dropout", -0.1), ("num_attention_heads", 5), ("vocab_size", 0),
    ("position_embedding_type", "alibi"), ("type_vocab_size", 2.5), ("type_vocab_size", "2"), ("norm_eps", 0.0),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


# ------------------------------------------------------------------------------------------- heads and losses


def test_mlm_loss_and_all_ignored_batch_gives_zero_not_nan():
    model = MiniBertForMaskedLM(config())
    x = ids(2, 8)
    labels = torch.full_like(x, -100)
    labels[0, 3], labels[1, 5] = x[0, 3], x[1, 5]
    out = model(x, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[labels != -100], x[labels != -100])
    torch.testing.assert_close(out.loss, expected)
    # No masked token at all (short sequences can draw none): loss 0 and zero, finite gradients.
    empty = model(x, labels=torch.full_like(x, -100)).loss
    assert empty.item() == 0.0
    empty.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() and not g.any() for g in grads)
    # Trainer's gradient-accumulation path (sum / num_items_in_batch) is also NaN-free on an empty batch
    assert model(x, labels=torch.full_like(x, -100), num_items_in_batch=torch.tensor(0)).loss.item() == 0.0


@pytest.mark.parametrize("problem", ["regression", "single_label_classification", "multi_label_classification"])
def test_sequence_classification_losses(problem):
    num_labels = 1 if problem == "regression" else 3
    model = MiniBertForSequenceClassification(config(num_labels=num_labels)).eval()
    x = ids(4, 9)
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    if problem == "regression":
        labels, expect = torch.randn(4), lambda lg, y: torch.nn.functional.mse_loss(lg.squeeze(-1), y)
    elif problem == "single_label_classification":
        labels, expect = torch.tensor([0, 2, 1, 2]), torch.nn.functional.cross_entropy
    else:
        labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.float)
        expect = torch.nn.functional.binary_cross_entropy_with_logits
    out = model(x, attention_mask=mask, labels=labels)
    assert model.config.problem_type == problem and out.logits.shape == (4, num_labels)
    torch.testing.assert_close(out.loss, expect(out.logits, labels))
    # the classifier reads the pooled [CLS]: a padded row scores as if alone
    torch.testing.assert_close(out.logits[1], model(x[1:2, :5]).logits[0], atol=1e-5, rtol=1e-5)


def test_sequence_classification_without_pooler_reads_cls_state():
    model = MiniBertForSequenceClassification(config(add_pooling_layer=False, num_labels=2)).eval()
    x = ids()
    out = model(x, output_hidden_states=True)
    torch.testing.assert_close(out.logits, model.classifier(out.hidden_states[-1][:, 0]))


def test_token_classification_ignores_minus_100():
    model = MiniBertForTokenClassification(config(num_labels=5)).eval()
    x = ids(2, 7)
    labels = torch.randint(0, 5, x.shape)
    labels[:, 0] = labels[1, 4:] = -100
    out = model(x, labels=labels)
    assert out.logits.shape == (2, 7, 5)
    keep = labels != -100
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[keep], labels[keep]))
    assert model(x, labels=torch.full_like(labels, -100)).loss.item() == 0.0


# ------------------------------------------------------------------------------------------- HF plumbing


def test_tied_decoder_resize_and_gradient_checkpointing():
    model = MiniBertForMaskedLM(config(hidden_dropout=0.0))
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.bias is not None
    untied = MiniBertForMaskedLM(config(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight

    x = ids(2, 8)
    model.eval()
    with torch.no_grad():  # a live graph would pin the pre-resize parameter shapes (transformers resizes .data)
        before = model(x).logits
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120 and model.lm_head.bias.shape == (120,)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(model(x).logits[..., :V], before)  # old vocabulary scores unchanged

    labels = torch.where(torch.rand(x.shape) < 0.5, x, -100)
    labels[0, 0] = x[0, 0]
    model.train()
    model(x, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing
    model(x, labels=labels).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_save_load_writes_every_head_in_auto_map(tmp_path):
    model = MiniBertForMaskedLM(config()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_minigpt.MiniBertConfig",
        "AutoModel": "modeling_minigpt_bert.MiniBertModel",
        "AutoModelForMaskedLM": "modeling_minigpt_bert.MiniBertForMaskedLM",
        "AutoModelForSequenceClassification": "modeling_minigpt_bert.MiniBertForSequenceClassification",
        "AutoModelForTokenClassification": "modeling_minigpt_bert.MiniBertForTokenClassification",
    }
    for name in ("modeling_minigpt_bert.py", "minigpt_layers.py", "configuration_minigpt.py"):
        assert (tmp_path / name).exists(), name
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(loaded) is MiniBertForMaskedLM and loaded.lm_head.weight is loaded.model.embed_tokens.weight
    x = ids()
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    base = AutoModel.from_pretrained(tmp_path)
    torch.testing.assert_close(base(x).last_hidden_state, model.model(x).last_hidden_state)
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)).__name__ == \
        "MiniBertForSequenceClassification"
    assert type(AutoModelForTokenClassification.from_pretrained(tmp_path)).__name__ == \
        "MiniBertForTokenClassification"


def test_fill_mask_and_classification_pipelines(tmp_path, tokenizer):
    cfg = config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    MiniBertForMaskedLM(cfg).save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    fill = pipeline("fill-mask", model=str(tmp_path / "mlm"), tokenizer=str(tmp_path / "mlm"),
                    trust_remote_code=True)
    results = fill("First Citizen: we are [MASK] poor.", top_k=3)
    assert len(results) == 3 and all({"score", "token", "token_str", "sequence"} <= set(r) for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert all("[MASK]" not in r["sequence"] for r in results)

    labels = {0: "negative", 1: "positive"}
    cls_cfg = config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, id2label=labels)
    MiniBertForSequenceClassification(cls_cfg).save_pretrained(tmp_path / "cls")
    tokenizer.save_pretrained(tmp_path / "cls")
    classify = pipeline("text-classification", model=str(tmp_path / "cls"), tokenizer=str(tmp_path / "cls"),
                        trust_remote_code=True)
    out = classify(["a fine day", "a foul and wretched night, my lord"])
    assert [set(r) for r in out] == [{"label", "score"}] * 2
    assert all(r["label"] in labels.values() and 0.5 <= r["score"] <= 1 for r in out)

    tags = {0: "O", 1: "B-PER", 2: "I-PER"}
    tag_cfg = config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, id2label=tags)
    MiniBertForTokenClassification(tag_cfg).save_pretrained(tmp_path / "tag")
    tokenizer.save_pretrained(tmp_path / "tag")
    tag = pipeline("token-classification", model=str(tmp_path / "tag"), tokenizer=str(tmp_path / "tag"),
                   trust_remote_code=True, ignore_labels=[])
    text = "First Citizen: we are accounted poor"
    out = tag(text)
    assert len(out) == len(tokenizer(text)["input_ids"]) - 2  # one row per non-special token
    assert all(r["entity"] in tags.values() and text[r["start"]:r["end"]].strip() for r in out)


# ------------------------------------------------------------------------------------------- MLM collators


def _encode(tokenizer, lines):
    return [tokenizer(line, return_special_tokens_mask=True) for line in lines]


def _check_80_10_10(batch, original, mask_id, masked):
    replaced = batch["input_ids"][masked]
    truth = original[masked]
    n = masked.sum().item()
    as_mask = (replaced == mask_id).sum().item() / n
    unchanged = (replaced == truth).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02 and abs(1 - as_mask - unchanged - 0.1) < 0.02


def test_mlm_collator_masks_15_percent_80_10_10_never_specials(tokenizer, lines):
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    examples = _encode(tokenizer, lines[:3000])
    original = tokenizer.pad(examples, return_tensors="pt")
    batch = collator(examples)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    special = original["special_tokens_mask"].bool()
    masked = batch["labels"] != -100
    assert not (masked & special).any() and torch.equal(batch["input_ids"][special], original["input_ids"][special])
    assert torch.equal(batch["labels"][masked], original["input_ids"][masked])
    assert abs(masked.sum().item() / (~special).sum().item() - 0.15) < 0.01
    _check_80_10_10(batch, original["input_ids"], tokenizer.mask_token_id, masked)
    # and the batch trains a MiniBert
    model = MiniBertForMaskedLM(config(vocab_size=len(tokenizer)))
    small = collator(examples[:8])
    loss = model(**small).loss
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(len(tokenizer))).item()) < 1.0


def test_whole_word_collator_masks_whole_words(tokenizer, lines):
    with pytest.raises(ValueError, match="mlm=True"):
        DataCollatorForWholeWordMask(tokenizer, mlm=False)
    collator = DataCollatorForWholeWordMask(tokenizer, mlm_probability=0.15, seed=0)
    chunks = ["\n".join(lines[i:i + 3]) for i in range(0, 6000, 3)]  # line breaks inside sequences too
    examples = _encode(tokenizer, chunks)
    original = tokenizer.pad(examples, return_tensors="pt")
    batch = collator(examples)
    special = original["special_tokens_mask"].bool()
    masked = batch["labels"] != -100
    assert not (masked & special).any()
    assert abs(masked.sum().item() / (~special).sum().item() - 0.15) < 0.02
    _check_80_10_10(batch, original["input_ids"], tokenizer.mask_token_id, masked)
    # every word (the tokenizer's own word_ids) is masked entirely or not at all: words may merge with adjacent
    # punctuation, never split; and words really are units (most masked words span several tokens here)
    multi = 0
    for row, chunk in enumerate(chunks[:300]):
        words = tokenizer(chunk).word_ids()
        for word in set(w for w in words if w is not None):
            picked = [masked[row, t].item() for t, w in enumerate(words) if w == word]
            assert len(set(picked)) == 1, (row, word)
            multi += picked[0] and len(picked) > 1
    assert multi > 100
