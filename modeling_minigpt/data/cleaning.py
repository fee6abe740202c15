"""C4's cleaning rules (Raffel et al. 2020, sec. 2.2) and corpus deduplication: the ``minigpt clean`` command.

What happens to each document, in this order (a dropped document is counted once, by the first rule that drops it):

1. Page rules on the raw text (the paper's wording: "any page that contained ..."; TFDS's c4_utils checks lorem
   ipsum and braces only on lines that survived step 2): drop the page if it contains "lorem ipsum"
   (case-insensitive), a curly brace ``{``, or a bad word (whole-word, case-insensitive; ``badwords_en.txt`` or
   ``--bad-words FILE``).
2. Line rules, per line, first failing rule counted: keep a line only if it ends in terminal punctuation
   (``. ! ? " ' ” ’ »``, but not an ellipsis ``...``/``…``, as in TFDS), has at least ``min_words`` words and does
   not contain "javascript" (case-insensitive).
3. Drop the page if its kept lines hold fewer than ``min_sentences`` sentences (default 3). The paper's numbers
   are 5 sentences and 3 words a line; TFDS's ``c4_utils``, which built C4, uses 3 sentences and 5 words.
4. Exact dedup: drop a page whose cleaned text (lower-cased, whitespace collapsed) was already kept.
5. Span dedup: sentences are split across the whole cleaned page; every window of 3 consecutive sentences
   (normalized as in 4) that was already seen in an earlier kept page, or earlier in this page, has its 3
   sentences removed; the page is then dropped if fewer than ``min_sentences`` sentences remain. A page's spans
   are remembered only if the page is kept, so the first kept occurrence of a span always survives.

C4's line rules assume web text with one paragraph per line; for hard-wrapped text (Project Gutenberg) pass
``--unwrap``, which first joins the lines of each blank-line-separated paragraph. Steps 4 and 5 are skipped
with ``--no-dedup``. Dedup state is in memory (one 8-byte hash per span and document).
Input: ``.txt`` files (one document per file, or several with ``--doc-separator``), ``.jsonl``/``.json`` and
``.parquet`` files (one document per row, the ``--text-field`` column, read with ``datasets`` streaming), or
folders of these (searched recursively, sorted, hidden entries skipped).
Output: ``DIR/cleaned.jsonl`` (``{"text": ...}`` per kept document) and ``DIR/stats.json``, each written to a
temp file then renamed, so a failed run leaves no partial output.
"""

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

BADWORDS_FILE = Path(__file__).with_name("badwords_en.txt")
SUFFIXES = {".txt": "txt", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TERMINAL = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u00bb")
ELLIPSES = ("...", "\u2026")
PAGE_RULES = ("lorem_ipsum", "curly_brace", "bad_words")
LINE_RULES = ("no_terminal_punctuation", "too_few_words", "javascript")
DOC_RULES = (*PAGE_RULES, "too_few_sentences", "exact_duplicate", "span_duplicate")
SPAN = 3

# Hand-written splitter: nltk's punkt (what C4 and datatrove use) needs a network download. A sentence ends at
# . ! ? (plus closing quotes/brackets) followed by whitespace and a character that is not a lower-case letter.
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019\u00bb)\]]*\s+(?=[^a-z\s])")
_PARAGRAPH = re.compile(r"\n\s*\n")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "fig", "inc"}


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a small regex (known misses: rare abbreviations before a capital)."""
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        last_word = text[start:match.start()].rsplit(None, 1)[-1:] or [""]
        if last_word[0].lower().lstrip("(\"'") in _ABBREVIATIONS:
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    return [s for s in sentences if s] + ([tail] if tail else [])


def load_bad_words(path: str | os.PathLike | None = None) -> list[str]:
    """Words and phrases, one a line; blank lines and ``#`` comments are ignored."""
    path = Path(path) if path is not None else BADWORDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"bad-words file {path} does not exist")
    words = [line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines()]
    words = [w for w in words if w and not w.startswith("#")]
    if not words:
        raise ValueError(f"bad-words file {path} lists no words")
    return words


def _bad_words_regex(words: list[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class C4Cleaner:
    """Applies the rules above to documents one at a time; ``counts`` holds the statistics so far."""

    def __init__(self, min_sentences: int = 3, min_words: int = 3, bad_words: list[str] | None = None,
                 dedup: bool = True, unwrap: bool = False):
        for name, value in (("min_sentences", min_sentences), ("min_words", min_words)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        self.min_sentences, self.min_words, self.dedup, self.unwrap = min_sentences, min_words, dedup, unwrap
        self.bad_words = _bad_words_regex(bad_words if bad_words is not None else load_bad_words())
        self.counts = Counter()
        self._seen_docs: set[int] = set()
        self._seen_spans: set[int] = set()

    def clean(self, text: str) -> str | None:
        """The cleaned document, or None if a rule drops it."""
        self.counts["total"] += 1
        if self.unwrap:
            text = "\n".join(" ".join(paragraph.split()) for paragraph in _PARAGRAPH.split(text))
        rule = self._page_rule(text)
        if rule is None:
            lines = self._clean_lines(text)
            sentences = [(i, s) for i, line in enumerate(lines) for s in split_sentences(line)]
            rule = "too_few_sentences" if len(sentences) < self.min_sentences else None
        if rule is None and self.dedup:
            rule, lines = self._dedup(lines, sentences)
        if rule is not None:
            self.counts[f"docs_dropped.{rule}"] += 1
            return None
        self.counts["kept"] += 1
        return "\n".join(lines)

    def _page_rule(self, text: str) -> str | None:
        if "lorem ipsum" in text.lower():
            return "lorem_ipsum"
        if "{" in text:
            return "curly_brace"
        if self.bad_words.search(text):
            return "bad_words"
        return None

    def _line_rule(self, line: str) -> str | None:
        if not line.endswith(TERMINAL) or line.endswith(ELLIPSES):
            return "no_terminal_punctuation"
        if len(line.split()) < self.min_words:
            return "too_few_words"
        if "javascript" in line.lower():
            return "javascript"
        return None

    def _clean_lines(self, text: str) -> list[str]:
        kept = []
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            rule = self._line_rule(line)
            if rule is None:
                kept.append(line)
            else:
                self.counts[f"lines_dropped.{rule}"] += 1
        return kept

    def _dedup(self, lines: list[str], sentences: list[tuple[int, str]]) -> tuple[str | None, list[str]]:
        """(rule or None, lines): ``sentences`` are (line index, sentence) pairs of ``lines``."""
        doc_hash = _hash(_normalize("\n".join(lines)))
        if doc_hash in self._seen_docs:
            return "exact_duplicate", lines
        keys = [_normalize(s) for _, s in sentences]
        spans, duplicate = set(), set()
        for start in range(len(keys) - SPAN + 1):
            span = _hash("\n".join(keys[start:start + SPAN]))
            if span in self._seen_spans or span in spans:
                duplicate.update(range(start, start + SPAN))
            spans.add(span)
        if duplicate:
            self.counts["sentences_removed.span_duplicate"] += len(duplicate)
            if len(sentences) - len(duplicate) < self.min_sentences:
                return "span_duplicate", lines
            self.counts["docs_trimmed.span_duplicate"] += 1
            lines = _rebuild(lines, sentences, duplicate)
        self._seen_docs.add(doc_hash)
        self._seen_spans |= spans
        return None, lines

    def stats(self) -> dict:
        counts = self.counts
        return {
            "total": counts["total"],
            "kept": counts["kept"],
            "docs_dropped": {rule: counts[f"docs_dropped.{rule}"] for rule in DOC_RULES},
            "lines_dropped": {rule: counts[f"lines_dropped.{rule}"] for rule in LINE_RULES},
            "sentences_removed_span_duplicate": counts["sentences_removed.span_duplicate"],
            "docs_trimmed_span_duplicate": counts["docs_trimmed.span_duplicate"],
            "settings": {"min_sentences": self.min_sentences, "min_words": self.min_words, "dedup": self.dedup,
                         "unwrap": self.unwrap},
        }


def _rebuild(lines, sentences, drop) -> list[str]:
    """Lines rebuilt from the sentences not in ``drop`` (indices into ``sentences``); empty lines vanish."""
    kept = [[] for _ in lines]
    for index, (line, sentence) in enumerate(sentences):
        if index not in drop:
            kept[line].append(sentence)
    return [" ".join(parts) for parts in kept if parts]


# ---------------------------------------------------------------------------------------------------------------
# Reading the inputs
# ---------------------------------------------------------------------------------------------------------------


def _kind(path: Path) -> str | None:
    return SUFFIXES.get(path.suffix.lower())


def collect_inputs(paths, exclude: Path | None = None) -> list[Path]:
    """Input files in order; folders are searched recursively (sorted, hidden entries and ``exclude`` skipped)."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and _kind(f)
                           and not any(p.startswith(".") for p in f.relative_to(path).parts)
                           and (exclude is None or exclude.resolve() not in f.resolve().parents))
            if not found:
                raise ValueError(f"input folder {path} holds no {', '.join(SUFFIXES)} files")
            files += found
        elif _kind(path) is None:
            raise ValueError(f"input {path} has an unsupported extension; use one of {', '.join(SUFFIXES)}")
        else:
            files.append(path)
    return files


def _read_txt(path: Path, separator: str | None):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"input {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    docs = text.split(separator) if separator else [text]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ValueError(f"input {path} is empty")
    yield from docs


def _read_table(path: Path, kind: str, text_field: str):
    import datasets  # heavy: imported only for json/parquet inputs

    datasets.disable_progress_bars()
    if path.stat().st_size == 0:
        raise ValueError(f"input {path} is empty")
    rows = 0
    try:
        for rows, row in enumerate(datasets.load_dataset(kind, data_files=[str(path)], split="train",
                                                         streaming=True), start=1):
            if text_field not in row:
                raise ValueError(f"input {path} row {rows} has no {text_field!r} field (columns: "
                                 f"{', '.join(sorted(row))}); pass --text-field")
            text = row[text_field]
            yield "" if text is None else str(text)
    except Exception as err:  # datasets/pyarrow raise many types (and StopIteration for an empty file)
        if isinstance(err, (ValueError, OSError)) and str(path) in str(err):
            raise
        raise ValueError(f"input {path} could not be read as {kind}: {str(err) or type(err).__name__}") from None
    if rows == 0:
        raise ValueError(f"input {path} is empty")


def iter_documents(files, text_field: str = "text", doc_separator: str | None = None):
    """Yield each document's text from the given files, in order."""
    for path in files:
        kind = _kind(path)
        if kind == "txt":
            yield from _read_txt(path, doc_separator)
        else:
            yield from _read_table(path, kind, text_field)


# ---------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------


def clean_corpus(inputs, output_dir, min_sentences: int = 3, min_words: int = 3, bad_words_file=None,
                 text_field: str = "text", doc_separator: str | None = None, dedup: bool = True,
                 unwrap: bool = False) -> dict:
    """Clean ``inputs`` into ``output_dir/cleaned.jsonl`` and ``output_dir/stats.json``; return the stats."""
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    files = collect_inputs(inputs, exclude=output_dir)
    cleaner = C4Cleaner(min_sentences, min_words, load_bad_words(bad_words_file), dedup, unwrap)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    temps = []
    try:
        data_tmp = _temp_file(output_dir, "cleaned.jsonl", temps)
        with open(data_tmp, "w", encoding="utf-8") as out:
            for text in tqdm(iter_documents(files, text_field, doc_separator), desc="clean", unit=" docs",
                             disable=None):
                cleaned = cleaner.clean(text)
                if cleaned is not None:
                    out.write(json.dumps({"text": cleaned}, ensure_ascii=False) + "\n")
        stats = {**cleaner.stats(), "inputs": [str(f) for f in files]}
        stats_tmp = _temp_file(output_dir, "stats.json", temps)
        Path(stats_tmp).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        os.replace(data_tmp, output_dir / "cleaned.jsonl")
        os.replace(stats_tmp, output_dir / "stats.json")
    except BaseException:
        for temp in temps:
            Path(temp).unlink(missing_ok=True)
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()
        raise
    return stats


def _temp_file(folder: Path, name: str, registry: list) -> str:
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    registry.append(temp)
    return temp


def run(args) -> int:
    separator = args.doc_separator
    if separator is not None:
        separator = separator.replace("\\n", "\n").replace("\\t", "\t")
        if not separator:
            raise ValueError("--doc-separator must not be empty")
    stats = clean_corpus(args.input, args.output, args.min_sentences, args.min_words, args.bad_words,
                         args.text_field, separator, not args.no_dedup, args.unwrap)
    dropped = ", ".join(f"{rule} {n}" for rule, n in stats["docs_dropped"].items() if n)
    print(f"kept {stats['kept']} of {stats['total']} documents ({dropped or 'none dropped'}) "
          f"-> {Path(args.output) / 'cleaned.jsonl'}")
    return 0
