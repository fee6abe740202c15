"""The gold test: transformers' BERT, converted, gives the same outputs, losses and gradients; and converts back."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)

from modeling_minigpt import (
    MiniBertConfig,
    MiniBertForMaskedLM,
    MiniBertForSequenceClassification,
    MiniBertForTokenClassification,
    MiniBertModel,
    convert_from_hf,
    convert_to_hf,
)
from modeling_minigpt.convert.bert import _names

V = 99


def bert_config(**kw):
    base = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, type_vocab_size=3)
    return BertConfig(**{**base, **kw})


# name -> (transformers model factory, MiniBert class, output to compare, labels factory)
CASES = {
    "mlm": (lambda **kw: BertForMaskedLM(bert_config(**kw)), MiniBertForMaskedLM, "logits",
            lambda ids, mask: torch.where((torch.rand(ids.shape) < 0.3) & mask.bool(), ids, -100)),
    "mlm-untied-gelu_tanh": (lambda **kw: BertForMaskedLM(bert_config(tie_word_embeddings=False,
                                                                      hidden_act="gelu_pytorch_tanh", **kw)),
                             MiniBertForMaskedLM, "logits",
                             lambda ids, mask: torch.where(mask.bool(), ids, -100)),
    "seq-cls": (lambda **kw: BertForSequenceClassification(bert_config(num_labels=3, **kw)),
                MiniBertForSequenceClassification, "logits", lambda ids, mask: torch.tensor([0, 2, 1])),
    "seq-regression": (lambda **kw: BertForSequenceClassification(bert_config(num_labels=1, **kw)),
                       MiniBertForSequenceClassification, "logits", lambda ids, mask: torch.randn(3)),
    "seq-multilabel": (lambda **kw: BertForSequenceClassification(bert_config(num_labels=4, **kw)),
                       MiniBertForSequenceClassification, "logits",
                       lambda ids, mask: torch.randint(0, 2, (3, 4)).float()),
    "token-cls": (lambda **kw: BertForTokenClassification(bert_config(num_labels=5, hidden_act="relu", **kw)),
                  MiniBertForTokenClassification, "logits",
                  lambda ids, mask: torch.randint(0, 5, ids.shape).masked_fill(mask == 0, -100)),
    "base": (lambda **kw: BertModel(bert_config(**kw)), MiniBertModel, "last_hidden_state", None),
    "base-no-pooler": (lambda **kw: BertModel(bert_config(**kw), add_pooling_layer=False), MiniBertModel,
                       "last_hidden_state", None),
}


@pytest.fixture
def batch():
    ids = torch.randint(5, V, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding, as BERT tokenizers pad
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    types[0, 10:] = 2
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


def _close(a, b, mask, key):
    if key == "logits" and a.dim() == 2:  # pooled heads: one row per sequence
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(CASES))
def test_same_outputs_and_loss(name, attn, batch):
    make, mini_cls, key, make_labels = CASES[name]
    ref = make(attn_implementation=attn).eval()
    ours = convert_from_hf(ref)
    assert type(ours) is mini_cls and not ours.training
    ours.set_attn_implementation(attn)
    with torch.no_grad():
        a, b = ours(**batch), ref(**batch)
        _close(getattr(a, key), getattr(b, key), batch["attention_mask"], key)
        if name.startswith("base"):
            assert (a.pooler_output is None) == (b.pooler_output is None)
            if b.pooler_output is not None:
                torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=1e-5)
            return
        labels = make_labels(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(ours(**batch, labels=labels).loss, ref(**batch, labels=labels).loss,
                                   atol=1e-5, rtol=1e-5)
        assert ours.config.problem_type == ref.config.problem_type


@pytest.mark.parametrize("name", ["mlm", "seq-cls", "token-cls"])
def test_same_gradients_in_training_mode(name, batch):
    """With dropout off, one training step's gradients agree tensor by tensor (via the name mapping)."""
    make, _, _, make_labels = CASES[name]
    ref = make(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    ours = convert_from_hf(ref)
    assert ours.training
    labels = make_labels(batch["input_ids"], batch["attention_mask"])
    ours(**batch, labels=labels).loss.backward()
    ref(**batch, labels=labels).loss.backward()
    names = {**_names(ref.config.num_hidden_layers, head=True), "cls.predictions": "lm_head"}  # its tied bias
    ours_params = dict(ours.named_parameters())
    ref_params = dict(ref.named_parameters())
    assert len(ours_params) == len(ref_params)
    for hf_name, p in ref_params.items():
        module, _, leaf = hf_name.rpartition(".")
        torch.testing.assert_close(ours_params[f"{names[module]}.{leaf}"].grad, p.grad, atol=1e-5, rtol=1e-4,
                                   msg=hf_name)


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_to_hf_is_exact(name, batch):
    make, _, key, _ = CASES[name]
    ref = make().eval()
    back = convert_to_hf(convert_from_hf(ref))
    assert type(back) is type(ref)
    ref_sd, back_sd = ref.state_dict(), back.state_dict()
    assert ref_sd.keys() == back_sd.keys()
    for k in ref_sd:
        assert torch.equal(ref_sd[k], back_sd[k]), k
    with torch.no_grad():
        torch.testing.assert_close(getattr(back(**batch), key), getattr(ref(**batch), key))
    if hasattr(ref, "cls"):  # tying survives the trip
        tied = ref.config.tie_word_embeddings
        assert (back.cls.predictions.decoder.weight is back.bert.embeddings.word_embeddings.weight) == tied


def test_configs_without_an_equivalent_are_refused():
    with pytest.raises(ValueError, match="is_decoder"):
        convert_from_hf(BertForMaskedLM(bert_config(is_decoder=True)))
    with pytest.raises(ValueError, match="hidden_act"):
        convert_from_hf(BertModel(bert_config(hidden_act="gelu_fast")))
    with pytest.raises(ValueError, match="BertForPreTraining"):
        convert_from_hf(BertForPreTraining(bert_config()))
    small = dict(vocab_size=V, hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(ValueError, match="post-norm"):
        convert_to_hf(MiniBertForMaskedLM(MiniBertConfig(**small, norm_position="pre")))
    with pytest.raises(ValueError, match="type_vocab_size"):
        convert_to_hf(MiniBertModel(MiniBertConfig(**small, type_vocab_size=0)))
    with pytest.raises(ValueError, match="add_pooling_layer"):
        convert_to_hf(MiniBertForSequenceClassification(MiniBertConfig(**small, add_pooling_layer=False)))
