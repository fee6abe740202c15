"""`minigpt clean`: every C4 rule on crafted documents, the stats, the input formats and the error paths."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import minigpt_cli
from modeling_minigpt.data.cleaning import C4Cleaner, clean_corpus, load_bad_words, split_sentences

SCRIPT = Path(sys.executable).parent / "minigpt"

A = ["The old lighthouse stood at the edge of the cliff.", "Every night its lamp swept across the dark water.",
     "Sailors trusted it to guide them safely home."]
DOCS = {
    # survives, minus its nav line, ellipsis line, short line and javascript line
    "keep_rules": "\n".join(A + ["Home | About | Contact", "And then the story continues...", "Click here.",
                                 "Please enable JavaScript in your browser to continue."]),
    "lorem": "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\nThe weather was mild that spring.\n"
             "Farmers planted early that year.",
    "curly": "Our code sample is below.\nfunction f() { return 1; }\nIt returns one every time.\nThat is all.",
    "bad": "This site has free porn for everyone.\nIt is updated every day.\nCome back tomorrow for more.",
    # bad words match whole words only: "Scunthorpe" and "analysis" survive; a closing curly quote is terminal
    "scunthorpe": "Scunthorpe United played at home on Saturday.\nThe analysis of the match was thorough.\n"
                  "The manager said \u201cwe played well today.\u201d",
    "few": "Only one sentence is here.\nAnd a second one follows it.",
    # equal to keep_rules after cleaning, up to case and whitespace
    "exact_dup": "\n".join([A[0].upper(), "  " + A[1], A[2], "Share this page"]),
    # holds A's three sentences as one span: they go, three new ones stay
    "span_trim": "A new bakery opened on Main Street.\n" + " ".join(A)
                 + "\nThe bread there is baked before dawn. Prices are fair for everyone.",
    # A's span plus one sentence: too few left after the span is removed
    "span_drop": " ".join(A) + "\nThat is the whole story of the lighthouse.",
}
EXPECTED_TEXTS = [
    "\n".join(A),
    DOCS["scunthorpe"],
    "A new bakery opened on Main Street.\nThe bread there is baked before dawn. Prices are fair for everyone.",
]
EXPECTED_STATS = {
    "total": 9,
    "kept": 3,
    "docs_dropped": {"lorem_ipsum": 1, "curly_brace": 1, "bad_words": 1, "too_few_sentences": 1,
                     "exact_duplicate": 1, "span_duplicate": 1},
    "lines_dropped": {"no_terminal_punctuation": 3, "too_few_words": 1, "javascript": 1},
    "sentences_removed_span_duplicate": 6,
    "docs_trimmed_span_duplicate": 1,
}


def minigpt(*args):
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "minigpt_cli"]
    env = {k: v for k, v in os.environ.items() if k != "MINIGPT_DEBUG"}
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=180, env=env)


def write_jsonl(path, texts, field="text"):
    path.write_text("".join(json.dumps({"id": i, field: t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def read_texts(folder):
    return [json.loads(line)["text"] for line in (folder / "cleaned.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    """One `minigpt clean` subprocess over the crafted corpus."""
    tmp = tmp_path_factory.mktemp("clean")
    source = write_jsonl(tmp / "in.jsonl", list(DOCS.values()))
    result = minigpt("clean", "--input", source, "--output", tmp / "out")
    assert result.returncode == 0, result.stderr
    return result, tmp / "out"


def test_cli_keeps_exactly_the_documents_every_rule_allows(cleaned):
    result, out = cleaned
    assert read_texts(out) == EXPECTED_TEXTS
    assert "kept 3 of 9 documents" in result.stdout


def test_cli_stats_count_each_rule(cleaned):
    stats = json.loads((cleaned[1] / "stats.json").read_text())
    assert {k: stats[k] for k in EXPECTED_STATS} == EXPECTED_STATS
    assert stats["settings"] == {"min_sentences": 3, "min_words": 3, "dedup": True, "unwrap": False}
    assert sorted(p.name for p in cleaned[1].iterdir()) == ["cleaned.jsonl", "stats.json"]  # no temp files left


@pytest.mark.slow  # a second process start (torch import); the in-process cases below cover the message
def test_cli_missing_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    missing = tmp_path / "nowhere" / "corpus.jsonl"
    result = minigpt("clean", "--input", missing, "--output", tmp_path / "out")
    assert result.returncode == 2
    assert str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_no_dedup_keeps_duplicates_and_min_sentences_is_honoured(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", list(DOCS.values()))
    stats = clean_corpus([source], tmp_path / "out", dedup=False)
    assert stats["kept"] == 5  # the 3 survivors plus exact_dup and span_drop
    assert stats["docs_dropped"]["exact_duplicate"] == stats["docs_dropped"]["span_duplicate"] == 0
    stats = clean_corpus([source], tmp_path / "out2", min_sentences=2, dedup=False)
    assert stats["kept"] == 6 and stats["docs_dropped"]["too_few_sentences"] == 0  # "few" has two sentences


def test_span_dedup_keeps_the_first_occurrence_and_forgets_dropped_pages():
    cleaner = C4Cleaner(min_sentences=3)
    b = ["Rain fell all night long.", "The river rose quickly.", "By morning the bridge was gone."]
    first = " ".join(A + ["A storm came in the winter."])
    assert cleaner.clean(first) == first
    assert cleaner.clean(" ".join(A + b[:1])) is None  # A's span goes, one sentence is left: dropped
    # (A[1], A[2], b[0]) was seen only on the dropped page, so it is not a duplicate here
    third = " ".join(A[1:] + b)
    assert cleaner.clean(third) == third
    assert cleaner.counts["docs_dropped.span_duplicate"] == 1 and cleaner.counts["kept"] == 2


def test_unwrap_joins_hard_wrapped_paragraphs():
    wrapped = "The old lighthouse stood at\nthe edge of the cliff. Every night\nits lamp swept the water.\n\n" \
              "Sailors trusted it to guide\nthem safely home."
    assert C4Cleaner().clean(wrapped) is None  # only two wrapped lines end in punctuation: 2 < 3 sentences
    assert C4Cleaner(unwrap=True).clean(wrapped) == (
        "The old lighthouse stood at the edge of the cliff. Every night its lamp swept the water.\n"
        "Sailors trusted it to guide them safely home.")


def test_txt_files_folders_and_doc_separator(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "one.txt").write_text("\n".join(A) + "\n", encoding="utf-8")
    b = ["Rain fell all night long.", "The river rose quickly.", "By morning the bridge was gone."]
    c = ["Bees visit the clover first.", "The hive hums all summer.", "Honey is taken in the autumn."]
    (corpus / "sub" / "two.txt").write_text("\n".join(b) + "\n===\n" + "\n".join(c), encoding="utf-8")
    (corpus / ".hidden.txt").write_text("Ignored entirely here. Really it is. Truly so.", encoding="utf-8")
    out = corpus / "out"  # inside the input folder: a rerun must not read its own output
    for _ in range(2):
        assert minigpt_cli.main(["clean", "--input", str(corpus), "--output", str(out),
                                 "--doc-separator", r"\n===\n"]) == 0
        assert read_texts(out) == ["\n".join(A), "\n".join(b), "\n".join(c)]
    assert minigpt_cli.main(["clean", "--input", str(corpus / "sub"), "--output", str(tmp_path / "whole")]) == 0
    assert json.loads((tmp_path / "whole" / "stats.json").read_text())["total"] == 1  # one file, one document


def test_parquet_with_text_field(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [" ".join(A), "Too short."], "id": [1, 2]}), tmp_path / "in.parquet")
    stats = clean_corpus([tmp_path / "in.parquet"], tmp_path / "out", text_field="body")
    assert (stats["total"], stats["kept"]) == (2, 1)
    with pytest.raises(ValueError, match=r"in\.parquet.*'text' field"):
        clean_corpus([tmp_path / "in.parquet"], tmp_path / "out2")


@pytest.mark.parametrize("name, content, needle", [
    ("missing.jsonl", None, "does not exist"),
    ("empty.txt", "  \n\n", "is empty"),
    ("empty.jsonl", "", "is empty"),
    ("notes.csv", "a,b\n", "unsupported extension"),
    ("latin1.txt", b"caf\xe9 ole", "not UTF-8"),
])
def test_bad_input_names_the_file(tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert minigpt_cli.main(["clean", "--input", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and needle in err
    assert not (tmp_path / "out").exists()


def test_a_failure_midway_leaves_previous_output_untouched(tmp_path):
    out = tmp_path / "out"
    good = write_jsonl(tmp_path / "good.jsonl", [" ".join(A)])
    clean_corpus([good], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": "Rain fell. The river rose. The bridge went."}) + "\n{\"text\": oops\n")
    with pytest.raises(ValueError, match="broken.jsonl"):
        clean_corpus([good, broken], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_bad_words_file_option(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("# mine\nlighthouse\n", encoding="utf-8")
    assert load_bad_words(words) == ["lighthouse"]
    source = write_jsonl(tmp_path / "in.jsonl", ["\n".join(A), DOCS["bad"]])
    stats = clean_corpus([source], tmp_path / "out", bad_words_file=words)
    assert stats["kept"] == 1 and stats["docs_dropped"]["bad_words"] == 1  # the porn page passes a custom list
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        load_bad_words(tmp_path / "absent.txt")


def test_shipped_bad_words_list_loads():
    words = load_bad_words()
    assert len(words) >= 30 and all(w == w.strip().lower() and not w.startswith("#") for w in words)


def test_split_sentences():
    text = 'Mr. Smith went to Washington. He said "Hi!" Then he left, e.g. at noon. Done... ok? Yes.'
    assert split_sentences(text) == ["Mr. Smith went to Washington.", 'He said "Hi!"',
                                     "Then he left, e.g. at noon.", "Done... ok?", "Yes."]
    assert split_sentences("no terminal punctuation") == ["no terminal punctuation"]
    assert split_sentences("   ") == []
