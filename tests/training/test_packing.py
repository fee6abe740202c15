"""Loading, splitting, packing and the packed-data cache."""

import json
import os
import re

import pytest

from modeling_minigpt.data.packing import load_corpus, pack_corpus, resolve_data_files

REPO_CORPUS = "recipes/data/tinyshakespeare.txt"


def test_tail_split_is_nanogpts(tmp_path):
    corpus = load_corpus(data_files=[REPO_CORPUS], split_by="tail", cache_dir=str(tmp_path / "hf"))
    with open(REPO_CORPUS) as f:
        text = f.read()
    assert corpus["validation"][0]["text"] == text[int(len(text) * 0.9):]
    assert len(corpus["validation"][0]["text"]) == 111_540  # nanoGPT's validation characters
    assert corpus["train"][0]["text"] + corpus["validation"][0]["text"] == text


def test_tail_split_with_test(small_text, tmp_path):
    corpus = load_corpus(data_files=[str(small_text)], validation_fraction=0.1, test_fraction=0.1,
                         split_by="tail", cache_dir=str(tmp_path / "hf"))
    text = small_text.read_text()
    assert "".join(corpus[s][0]["text"] for s in ("train", "test", "validation")) == text


def test_pack_blocks_eos_between_documents_and_stats(tokenizer, tmp_path):
    docs = ["first document.", "second one here.", "a third!"] * 40
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    corpus = load_corpus(data_files=[str(path)], split_by="documents", validation_fraction=0.2, seed=0,
                         cache_dir=str(tmp_path / "hf"))
    assert len(corpus["train"]) + len(corpus["validation"]) == len(docs)
    packed = pack_corpus(corpus, tokenizer, block_size=8, cache_dir=str(tmp_path / "packed"))
    train = packed.splits["train"][:]["input_ids"]
    assert train.shape[1] == 8
    eos = tokenizer.eos_token_id
    n_docs = len(corpus["train"])
    assert int((train == eos).sum()) in range(n_docs - 8, n_docs + 1)  # one per document (a tail may be cut)
    stats = packed.stats["train"]
    assert stats["documents"] == n_docs
    assert stats["bytes"] == sum(len(t.encode()) for t in corpus["train"]["text"])
    assert stats["tokens"] == sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
                                  for t in corpus["train"]["text"])
    assert stats["blocks"] == stats["tokens"] // 8 == len(train)


def test_long_document_is_tokenized_as_a_whole(tokenizer, tmp_path):
    # pieces are cut only before a line that starts with a non-space, so the tokens equal one-shot tokenization
    text = "".join(f"Line {i}: to be, or not to be?\n\n  indented {i}\n" for i in range(6000))
    path = tmp_path / "long.txt"
    path.write_text(text)
    corpus = load_corpus(data_files=[str(path)], split_by="tail", cache_dir=str(tmp_path / "hf"))
    packed = pack_corpus(corpus, tokenizer, block_size=16, cache_dir=str(tmp_path / "packed"))
    expected = tokenizer(corpus["train"][0]["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert packed.stats["train"]["tokens"] == len(expected)
    got = packed.splits["train"][:]["input_ids"].flatten().tolist()
    assert got == expected[:len(got)]


def test_cache_is_reused_and_invalidated(small_text, tokenizer, tmp_path, caplog):
    path = tmp_path / "corpus.txt"
    path.write_text(small_text.read_text())
    kwargs = {"data_files": [str(path)], "split_by": "tail", "cache_dir": str(tmp_path / "hf")}
    first = pack_corpus(load_corpus(**kwargs), tokenizer, 32, cache_dir=str(tmp_path / "packed"))
    with caplog.at_level("INFO", logger="modeling_minigpt.data.packing"):
        again = pack_corpus(load_corpus(**kwargs), tokenizer, 32, cache_dir=str(tmp_path / "packed"))
    assert again.cache_path == first.cache_path and "reusing packed data" in caplog.text
    other_block = pack_corpus(load_corpus(**kwargs), tokenizer, 16, cache_dir=str(tmp_path / "packed"))
    assert other_block.cache_path != first.cache_path
    path.write_text(small_text.read_text()[:20_000])  # the file changed: new mtime, new fingerprint, new cache
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 10))  # whatever the filesystem's mtime resolution
    changed = pack_corpus(load_corpus(**kwargs), tokenizer, 32, cache_dir=str(tmp_path / "packed"))
    assert changed.cache_path != first.cache_path
    assert changed.stats["train"]["bytes"] < first.stats["train"]["bytes"]


def test_streaming_jsonl_packs_lazily(tokenizer, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": f"document number {i} " * 5}) + "\n" for i in range(60)))
    corpus = load_corpus(data_files=[str(path)], text_column="body", streaming=True,
                         streaming_validation_documents=10)
    packed = pack_corpus(corpus, tokenizer, block_size=16)
    blocks = [row["input_ids"] for row in packed.splits["train"]]
    assert blocks and all(len(b) == 16 for b in blocks)
    assert packed.stats["validation"]["documents"] == 10


def test_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        resolve_data_files([str(empty)])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        resolve_data_files([str(tmp_path / "missing.txt")])
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        resolve_data_files([str(tmp_path / "folder")])
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"content": "x"}\n')
    with pytest.raises(ValueError, match="no column 'text'"):
        load_corpus(data_files=[str(bad)], cache_dir=str(tmp_path / "hf"))
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n' * 3)
    with pytest.raises(ValueError, match="empty"):
        load_corpus(data_files=[str(blank)], split_by="tail", cache_dir=str(tmp_path / "hf"))


@pytest.mark.parametrize("rows, needle", [
    ('{"text": null}\n{"text": "hello there."}\n', "row 0 (from 0) has no 'text' text (null)"),
    ('{"text": "hello there."}\n{"text": null}\n', "row 1 (from 0)"),
    ('{"text": 5}\n{"text": 7}\n', "holds int64, not text"),
])
def test_rows_without_text_are_named(tmp_path, rows, needle):
    path = tmp_path / "rows.jsonl"
    path.write_text(rows)
    with pytest.raises(ValueError, match=re.escape(needle)) as err:
        load_corpus(data_files=[str(path)], cache_dir=str(tmp_path / "hf"))
    assert "rows.jsonl" in str(err.value)


def test_text_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Ça va très bien.\n".encode("latin-1") * 20)
    with pytest.raises(ValueError, match="latin1.txt' is not UTF-8 text"):
        load_corpus(data_files=[str(path)], cache_dir=str(tmp_path / "hf"))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a."}\n{"text": "b."}\n{"text": "c."}\n{"text": oops}\n')
    with pytest.raises(ValueError, match="broken.jsonl") as err:
        load_corpus(data_files=[str(broken)], cache_dir=str(tmp_path / "hf"))
    assert "row 3" in str(err.value) or "line 4" in str(err.value)
