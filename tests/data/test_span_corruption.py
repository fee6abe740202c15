"""T5 span corruption: a lossless split of every example into inputs and targets, with T5's noise statistics."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_minigpt import DataCollatorForSpanCorruption
from modeling_minigpt.data.collators import compute_input_and_target_lengths

PAD, EOS = 0, 1
SENTINELS = {1: 3, -1: 999}  # step -> id of <extra_id_0>: minigpt's t5 preset (3, 4, ...) / Google's (999, 998, ...)


def collator(step=1, **kw):
    return DataCollatorForSpanCorruption(sentinel_start_id=SENTINELS[step], sentinel_step=step, eos_token_id=EOS,
                                         pad_token_id=PAD, **kw)


def is_sentinel(token, step):
    return 3 <= token <= 102 if step == 1 else 900 <= token <= 999


def reconstruct(inputs, targets, step):
    """Replace each input sentinel by the target span that follows the same sentinel there."""
    spans, current = {}, None
    for token in targets[:-1]:
        if is_sentinel(token, step):
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in inputs[:-1]:
        out.extend(spans.pop(token) if is_sentinel(token, step) else [token])
    assert not spans, "a target span has no sentinel in the inputs"
    return out


tokens = st.lists(st.integers(200, 800), min_size=0, max_size=300)


@settings(max_examples=150, deadline=None)
@given(tokens=tokens, density=st.floats(0.05, 0.95), span=st.floats(1.0, 8.0), step=st.sampled_from([1, -1]),
       seed=st.integers(0, 2**31 - 1))
def test_every_token_once_sentinels_in_order_eos_last(tokens, density, span, step, seed):
    c = collator(step, noise_density=density, mean_noise_span_length=span, seed=seed)
    inputs, targets = c.corrupt(tokens)
    assert inputs[-1] == EOS and targets[-1] == EOS
    assert reconstruct(inputs, targets, step) == tokens
    in_sentinels = [t for t in inputs if is_sentinel(t, step)]
    out_sentinels = [t for t in targets if is_sentinel(t, step)]
    expected = [SENTINELS[step] + k * step for k in range(len(in_sentinels))]
    assert in_sentinels == out_sentinels == expected  # one per span, <extra_id_0>, <extra_id_1>, ... in order
    assert targets[0] == SENTINELS[step] or targets == [EOS]  # targets open with the first sentinel
    assert all(is_sentinel(t, step) for t in targets[1:-1] if t < 200)
    for i in range(len(inputs) - 1):  # no two sentinels in a row: kept spans separate the noise spans
        assert not (is_sentinel(inputs[i], step) and is_sentinel(inputs[i + 1], step))
    if len(tokens) >= 2:
        assert len(in_sentinels) >= 1  # something is always corrupted


def test_trailing_eos_is_kept_out_of_the_noise():
    c = collator(seed=0, noise_density=0.5)
    for _ in range(20):
        inputs, targets = c.corrupt(list(range(200, 230)) + [EOS])
        assert reconstruct(inputs, targets, 1) == list(range(200, 230))
        assert inputs.count(EOS) == 1 and targets.count(EOS) == 1


@pytest.mark.parametrize("density,span", [(0.15, 3.0), (0.3, 5.0), (0.5, 2.0)])
def test_noise_fraction_and_span_length_match_t5_statistics(density, span):
    c = collator(noise_density=density, mean_noise_span_length=span, seed=1)
    fractions, lengths, starts = [], [], torch.zeros(256)
    for _ in range(300):
        mask = torch.tensor(c.noise_mask(256))
        fractions.append(mask.float().mean().item())
        edges = torch.diff(mask.int(), prepend=torch.tensor([0]), append=torch.tensor([0]))
        begin, end = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
        lengths += (end - begin).tolist()
        starts[begin] += 1
        assert not mask[0]  # T5 always opens with a kept span
    assert abs(sum(fractions) / len(fractions) - density) < 0.01
    assert abs(sum(lengths) / len(lengths) - span) < 0.1 * span
    assert starts[:128].sum() / starts.sum() > 0.3  # spans spread over the block (the last one ends it, as in T5)


def test_seed_reproduces_and_draws_differ():
    example = [{"input_ids": list(range(200, 300))}]
    a, b = collator(seed=7)(example), collator(seed=7)(example)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    c = collator(seed=7)
    assert not torch.equal(c(example)["input_ids"], c(example)["input_ids"])


def test_batch_padding_and_masks():
    c = collator(seed=0, return_decoder_attention_mask=True)
    batch = c([{"input_ids": list(range(200, 260))}, {"input_ids": torch.arange(200, 215)}])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_attention_mask"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    short = batch["attention_mask"][1].sum()
    assert (batch["input_ids"][1, short:] == PAD).all() and batch["input_ids"][1, short - 1] == EOS
    assert torch.equal(batch["decoder_attention_mask"].bool(), batch["labels"] != -100)
    assert batch["labels"].shape[1] == max((row != -100).sum() for row in batch["labels"])


@pytest.mark.parametrize("input_length,density,span", [(512, 0.15, 3.0), (128, 0.15, 3.0), (64, 0.3, 2.0),
                                                       (200, 0.15, 5.0)])
def test_fixed_length_mode_fills_exact_lengths(input_length, density, span):
    raw, target_length = compute_input_and_target_lengths(input_length, density, span)
    c = collator(noise_density=density, mean_noise_span_length=span, input_length=input_length,
                 target_length=target_length, seed=0)
    batch = c([{"input_ids": torch.randint(200, 800, (raw,)).tolist()} for _ in range(4)])
    assert batch["input_ids"].shape == (4, input_length) and batch["labels"].shape == (4, target_length)
    assert batch["attention_mask"].all() and (batch["labels"] != -100).all()  # no padding needed: exact fit


def test_t5_reference_lengths():
    # The T5 paper's pretraining setup: 512 encoder tokens from 568 raw tokens, 114 targets.
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)


def test_fixed_length_too_long_example_is_a_clear_error():
    c = collator(input_length=16, target_length=8, seed=0)
    with pytest.raises(ValueError, match="input_length=16"):
        c([{"input_ids": list(range(200, 300))}])


def test_from_tokenizer_reads_sentinels_eos_and_pad():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"] + [f"<extra_id_{i}>" for i in range(100)]
    vocab = {t: i for i, t in enumerate(specials + ["a", "b"])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    c = DataCollatorForSpanCorruption.from_tokenizer(tok, seed=0)
    assert (c.sentinel_start_id, c.sentinel_step, c.eos_token_id, c.pad_token_id) == (3, 1, 1, 0)
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                    unk_token="<unk>")
    with pytest.raises(ValueError, match="extra_id"):
        DataCollatorForSpanCorruption.from_tokenizer(plain)


@pytest.mark.parametrize("field,value", [("noise_density", 0.0), ("mean_noise_span_length", 0.5),
                                         ("sentinel_step", 2)])
def test_bad_settings_name_the_field(field, value):
    kw = dict(sentinel_start_id=3, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match=field):
        DataCollatorForSpanCorruption(**{**kw, field: value})


def test_content_seeded_masks_depend_on_the_batch_not_on_the_global_rng():
    from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

    from modeling_minigpt.data.collators import ContentSeededCollator
    from modeling_minigpt.tokenization import train_tokenizer

    tok = train_tokenizer(texts=["to be or not to be, that is the question"] * 20, vocab_size=300, family="bert",
                          show_progress=False)
    assert isinstance(tok, PreTrainedTokenizerFast)
    rows = [{"input_ids": list(range(10, 74))}, {"input_ids": list(range(80, 144))}]
    other = [rows[1], rows[0]]  # the same blocks in another batch (another epoch's shuffle)
    for inner in (DataCollatorForLanguageModeling(tok, mlm=True), collator()):
        wrapped = ContentSeededCollator(inner, seed=42)
        torch.manual_seed(0)
        first = wrapped(rows)
        torch.manual_seed(1)  # the global RNG moved on (as when accelerate collates a batch ahead)
        again = wrapped(rows)
        assert all(torch.equal(first[k], again[k]) for k in first)
        assert not torch.equal(wrapped(other)["labels"][0], first["labels"][1])  # another batch: other masks
        assert not torch.equal(ContentSeededCollator(inner, seed=7)(rows)["labels"], first["labels"])
