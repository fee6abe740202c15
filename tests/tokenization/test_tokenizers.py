"""Byte-level BPE presets: exact round-trips, special-token layout per family, ChatML with assistant masks,
reload without minigpt, and the offline GPT-2 tokenizer."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_minigpt.tokenization import load_gpt2_tokenizer, min_vocab_size, train_tokenizer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "slice.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizers_by_family(corpus):
    return {fam: train_tokenizer([str(corpus)], 512, fam, show_progress=False) for fam in ("gpt", "bert", "t5")}


@pytest.fixture(scope="module")
def gpt(tokenizers_by_family):
    return tokenizers_by_family["gpt"]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_roundtrip_any_unicode(gpt, text):
    ids = gpt(text)["input_ids"]
    assert gpt.decode(ids) == text


@pytest.mark.parametrize("text", [
    "", " ", "\r\n\t\x00", "  leading and trailing  ", "naïve café 日本語 🤗👩‍👩‍👧 \u200b\ufeff",
    "<|endoftext|>ROMEO:<|im_start|> <|im_end|>", "x" * 5000, "Ġ ĠĠ Ċ",
])
def test_roundtrip_edge_cases(tokenizers_by_family, text):
    for family, tok in tokenizers_by_family.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text, family


def test_train_from_files_equals_train_from_texts(corpus, gpt):
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    from_texts = train_tokenizer(texts=iter(lines), vocab_size=512, show_progress=False)
    assert len(from_texts) == len(gpt) == 512
    assert from_texts("To be, or not to be")["input_ids"] == gpt("To be, or not to be")["input_ids"]


def test_gpt_preset(gpt):
    assert gpt.convert_ids_to_tokens([0, 1, 2, 3]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    assert gpt.bos_token == gpt.eos_token == gpt.unk_token == "<|endoftext|>"
    assert (gpt.eos_token_id, gpt.pad_token_id) == (0, 3)  # pad is not eos: collators never mask the real eos
    assert gpt("hello")["input_ids"] == gpt("hello", add_special_tokens=False)["input_ids"]  # nothing added


MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who art thou?"},
    {"role": "assistant", "content": "A friend, my lord."},
    {"role": "user", "content": "Speak again."},
    {"role": "assistant", "content": "O, speak again,\nbright angel!"},
]


def test_chat_template_renders_chatml(gpt):
    assert gpt.apply_chat_template(MESSAGES, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho art thou?<|im_end|>\n"
        "<|im_start|>assistant\nA friend, my lord.<|im_end|>\n<|im_start|>user\nSpeak again.<|im_end|>\n"
        "<|im_start|>assistant\nO, speak again,\nbright angel!<|im_end|>\n"
    )
    prompt = gpt.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nWho art thou?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_masks_exactly_the_assistant_turns(gpt):
    out = gpt.apply_chat_template(MESSAGES, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    spans, current = [], []  # contiguous masked runs
    for token, m in zip(ids, mask):
        if m:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    spans += [current] if current else []
    assert [gpt.decode(span) for span in spans] == [
        "A friend, my lord.<|im_end|>", "O, speak again,\nbright angel!<|im_end|>"]  # content and its stop token


def test_bert_preset_pairs_and_masking(tokenizers_by_family):
    bert = tokenizers_by_family["bert"]
    assert bert.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    a, b = "Good morrow", "kind sir"
    na, nb = (len(bert(x, add_special_tokens=False)["input_ids"]) for x in (a, b))
    enc = bert(a, b)
    tokens = bert.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[na + 1] == "[SEP]" and tokens[-1] == "[SEP]"
    assert len(tokens) == na + nb + 3
    assert enc["token_type_ids"] == [0] * (na + 2) + [1] * (nb + 1)
    assert bert.decode(enc["input_ids"], skip_special_tokens=True) == a + b
    single = bert.convert_ids_to_tokens(bert(a)["input_ids"])
    assert single[0] == "[CLS]" and single[-1] == "[SEP]" and len(single) == na + 2
    assert bert.mask_token_id == 4 and bert.pad_token_id == 0


def test_bert_works_with_mlm_collator_and_fill_mask(tokenizers_by_family):
    import torch
    from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, pipeline

    bert = tokenizers_by_family["bert"]
    torch.manual_seed(0)
    batch = DataCollatorForLanguageModeling(bert, mlm=True, mlm_probability=0.5)([bert("To be or not to be " * 20)])
    chosen = batch["labels"] != -100
    assert chosen.any() and (batch["input_ids"][chosen] == bert.mask_token_id).any()
    assert not chosen[0, 0] and not chosen[0, -1]  # [CLS] and [SEP] are never masked
    model = BertForMaskedLM(BertConfig(vocab_size=len(bert), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64))
    preds = pipeline("fill-mask", model=model, tokenizer=bert)("The king is [MASK].", top_k=3)
    assert len(preds) == 3 and all(p["sequence"].startswith("The king is") for p in preds)


def test_t5_preset(tokenizers_by_family):
    t5 = tokenizers_by_family["t5"]
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    sentinels = [f"<extra_id_{i}>" for i in range(100)]
    assert t5.extra_special_tokens == sentinels
    assert t5.convert_tokens_to_ids(sentinels) == list(range(3, 103))
    ids = t5("Thou art <extra_id_0> fair")["input_ids"]
    assert ids[-1] == 1 and ids.count(1) == 1 and 3 in ids
    assert t5.decode(ids, skip_special_tokens=True) == "Thou art  fair"
    pair = t5("a", "b")["input_ids"]
    assert pair.count(1) == 2 and pair[-1] == 1


def test_bad_inputs_name_the_problem(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([str(missing)], 512)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        train_tokenizer([str(empty)], 512)
    assert min_vocab_size("t5") == 256 + 103
    with pytest.raises(ValueError, match="vocab_size=300"):
        train_tokenizer(texts=["abc"], vocab_size=300, family="t5")
    with pytest.raises(ValueError, match="family='llama'"):
        train_tokenizer(texts=["abc"], vocab_size=512, family="llama")


# Runs in a fresh interpreter where `import modeling_minigpt` fails, as on a stranger's machine.
RELOAD_SCRIPT = r"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_minigpt":
            raise ImportError("modeling_minigpt is blocked")
sys.meta_path.insert(0, Block())
try:
    import modeling_minigpt
    raise SystemExit("modeling_minigpt should not be importable here")
except ImportError:
    pass
from transformers import AutoTokenizer
out = {}
for family in ("gpt", "bert", "t5"):
    tok = AutoTokenizer.from_pretrained(sys.argv[1] + "/" + family)
    out[family] = dict(padding_side=tok.padding_side, model_max_length=tok.model_max_length,
                       ids=tok("Fair is foul, and foul is fair")["input_ids"], pad=tok.pad_token,
                       mask=tok.mask_token, extra=tok.extra_special_tokens, chat=bool(tok.chat_template))
print(json.dumps(out))
"""


def test_saved_folder_loads_without_minigpt(corpus, tmp_path):
    expected = {}
    for family in ("gpt", "bert", "t5"):
        tok = train_tokenizer([str(corpus)], 512, family, output_dir=str(tmp_path / family), model_max_length=77,
                              padding_side="left", show_progress=False)
        expected[family] = tok("Fair is foul, and foul is fair")["input_ids"]
    proc = subprocess.run([sys.executable, "-I", "-c", RELOAD_SCRIPT, str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for family in ("gpt", "bert", "t5"):
        assert got[family]["padding_side"] == "left" and got[family]["model_max_length"] == 77
        assert got[family]["ids"] == expected[family]
    assert got["gpt"]["chat"] and got["gpt"]["pad"] == "<|pad|>"
    assert got["bert"]["mask"] == "[MASK]"
    assert got["t5"]["extra"][:2] == ["<extra_id_0>", "<extra_id_1>"] and len(got["t5"]["extra"]) == 100
    assert (tmp_path / "gpt" / "chat_template.jinja").is_file()


def test_gpt2_offline_matches_known_ids():
    tok = load_gpt2_tokenizer(str(DATA / "gpt2_bpe"))
    assert tok("Hello world")["input_ids"] == [15496, 995]
    assert tok(" Hello world")["input_ids"] == [18435, 995]
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    text = "Naïve 🤗 text\n\twith  spaces"
    assert tok.decode(tok(text)["input_ids"]) == text
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        load_gpt2_tokenizer("/nonexistent/gpt2_bpe")
