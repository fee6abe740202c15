"""Load a text corpus, split it, tokenize it and pack it into fixed-length blocks, cached as Arrow.

    files / folders / Hub name ─ load_corpus ─ DatasetDict{train, validation[, test]} of {"text"}
                                   └─ pack_corpus(tokenizer, block_size) ─ {"input_ids": [block_size]} per row

Documents are joined with the tokenizer's end-of-text token (``separator_id``), so a block may span a document
boundary, as in GPT-2 and nanoGPT. Packed splits are saved under ``cache_dir/<key>``, where the key hashes the
text splits' ``datasets`` fingerprints (file paths and mtimes), the tokenizer and the block size: a second run
with nothing changed loads them instead of tokenizing again. ``stats`` keeps each split's raw byte and token
counts, which turn an eval loss into bits per byte.
"""

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

FORMATS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
PIECE_CHARS = 1 << 16  # long documents are cut into ~64k-char pieces at line starts so num_proc can share them
PACK_VERSION = 1  # bump when the packed format changes, to invalidate old caches


@dataclass
class PackedCorpus:
    """Packed splits (``datasets.Dataset`` or, when streaming, an ``IterableDataset`` for train) and their stats."""

    splits: dict
    stats: dict = field(default_factory=dict)  # split -> {"documents", "bytes", "tokens", "blocks"}
    cache_path: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Loading and splitting
# ---------------------------------------------------------------------------------------------------------------


def resolve_data_files(data_files) -> list[str]:
    """Expand files and folders (recursively, known suffixes only) into a sorted list of readable, non-empty files."""
    paths = [data_files] if isinstance(data_files, str) else list(data_files or [])
    if not paths:
        raise ValueError("data_files is empty: give at least one .txt, .jsonl or .parquet file or folder")
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                           if os.path.splitext(name)[1].lower() in FORMATS)
            if not found:
                raise ValueError(f"folder {path!r} holds no {', '.join(FORMATS)} files")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"data file {path!r} does not exist")
    for path in files:
        _check_readable(path)
    return files


def _check_readable(path: str) -> None:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise ValueError(f"data file {path!r} has an unsupported suffix {suffix!r}; use one of {', '.join(FORMATS)}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"data file {path!r} is not readable")
    if os.path.getsize(path) == 0:
        raise ValueError(f"data file {path!r} is empty")


def load_corpus(data_files=None, dataset_name: str | None = None, dataset_config: str | None = None,
                text_column: str = "text", validation_fraction: float = 0.1, test_fraction: float = 0.0,
                split_by: str = "auto", seed: int = 42, streaming: bool = False,
                streaming_validation_documents: int = 1000, cache_dir: str | None = None):
    """Load local files or a Hub dataset as ``{"train", "validation"[, "test"]}`` splits with one ``text`` column.

    ``split_by``: ``tail`` keeps the last ``validation_fraction`` of every document's characters for validation
    (nanoGPT's split: one .txt file gives exactly its final 10%); ``documents`` splits whole documents at random
    (seeded); ``auto`` picks tail for fewer than 100 documents. A Hub dataset's own validation split is kept.
    ``streaming`` holds out the first ``streaming_validation_documents`` documents for validation instead.
    """
    import datasets

    if (data_files is None) == (dataset_name is None):
        raise ValueError("give exactly one of data_files or dataset_name")
    if split_by not in ("auto", "tail", "documents"):
        raise ValueError(f"split_by={split_by!r} must be 'auto', 'tail' or 'documents'")
    if not 0.0 < validation_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 - validation_fraction:
        raise ValueError(f"validation_fraction={validation_fraction} and test_fraction={test_fraction} must be in "
                         "(0, 1) and [0, 1) with a sum below 1")
    if data_files is not None:
        files = resolve_data_files(data_files)
        raw, source = _load_files(files, text_column, streaming, cache_dir), ", ".join(map(repr, files))
    else:
        raw = datasets.load_dataset(dataset_name, dataset_config, streaming=streaming, cache_dir=cache_dir)
        source = repr(dataset_name)
        raw = datasets.IterableDatasetDict({k: _text_only(v, text_column, source) for k, v in raw.items()}) \
            if streaming else datasets.DatasetDict({k: _text_only(v, text_column, source) for k, v in raw.items()})
    if "train" not in raw:
        raise ValueError(f"dataset {source} has no 'train' split (it has {', '.join(raw)})")
    if streaming:  # validation: the first documents of the held-out split (or of train, then skipped there)
        n = streaming_validation_documents
        if "validation" in raw:
            return {"train": raw["train"], "validation": _materialize(raw["validation"].take(n), source)}
        return {"train": raw["train"].skip(n), "validation": _materialize(raw["train"].take(n), source)}
    if "validation" in raw:
        return raw
    return split_corpus(raw["train"], validation_fraction, test_fraction, split_by, seed, source)


def _load_files(files, text_column, streaming, cache_dir):
    import datasets

    formats = {FORMATS[os.path.splitext(f)[1].lower()] for f in files}
    if len(formats) > 1:
        raise ValueError(f"data files mix formats ({', '.join(sorted(formats))}); give files of one kind")
    builder = formats.pop()
    kwargs = {"sample_by": "document"} if builder == "text" else {}  # one row per file; pieces come later
    try:
        raw = datasets.load_dataset(builder, data_files={"train": files}, streaming=streaming, cache_dir=cache_dir,
                                    **kwargs)
    except Exception as err:  # datasets wraps parse errors in its own types; name the files instead
        if builder == "text":  # its error names no cause for a file that is not UTF-8: find it
            from ..tokenization import check_utf8

            for file in files:
                check_utf8(file)
        cause = err.__cause__ or err.__context__  # the parser's own words (a JSON error names the row)
        detail = f"{err}" + (f" ({type(cause).__name__}: {cause})" if cause is not None else "")
        raise ValueError(f"could not read data files {', '.join(map(repr, files))}: {detail}") from err
    raw["train"] = _text_only(raw["train"], text_column, ", ".join(map(repr, files)))
    if not streaming:
        _check_text_rows(raw["train"], ", ".join(map(repr, files)), text_column)
    return raw


def _check_text_rows(ds, source: str, text_column: str) -> None:
    """Every row's text is a string: a null or a number would fail deep inside splitting or tokenizing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = ds.data.column("text")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"{source}: column {text_column!r} holds {column.type}, not text")
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise ValueError(f"{source}: row {row} (from 0) has no {text_column!r} text (null)")


def _text_only(ds, text_column: str, source: str):
    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise ValueError(f"{source} has no column {text_column!r} (columns: {', '.join(columns)}); "
                         "set dataset_text_field")
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    return ds.select_columns(["text"])


def _materialize(stream, source: str):
    from datasets import Dataset

    rows = [row for row in stream]
    if not rows:
        raise ValueError(f"dataset {source} yielded no documents for validation")
    return Dataset.from_list(rows)


def split_corpus(ds, validation_fraction: float, test_fraction: float, split_by: str, seed: int, source: str):
    """Split one Dataset of documents into train / validation[ / test] (see ``load_corpus``)."""
    import datasets

    if split_by == "auto":
        split_by = "tail" if len(ds) < 100 else "documents"
    if split_by == "documents":
        from .splits import split_documents

        train, validation, test = split_documents(ds, validation_fraction, test_fraction, seed)
        splits = {"train": train, "validation": validation, **({"test": test} if test_fraction else {})}
    else:
        bounds = {"train": (0.0, 1.0 - validation_fraction - test_fraction),
                  "validation": (1.0 - validation_fraction, 1.0)}
        if test_fraction:
            bounds["test"] = (bounds["train"][1], bounds["validation"][0])
        splits = {name: ds.map(_char_slice, batched=True, fn_kwargs={"bounds": b}, desc=f"split {name}")
                  for name, b in bounds.items()}
    for name, part in splits.items():
        if len(part) == 0 or not any(len(t) for t in part["text"]):
            raise ValueError(f"the {name} split of {source} is empty: the corpus is too small or empty")
    return datasets.DatasetDict(splits)


def _char_slice(batch, bounds):
    # int(n * fraction) is nanoGPT's cut, so the validation text matches its split character for character
    lo, hi = bounds
    return {"text": [t[int(len(t) * lo) if lo else 0:int(len(t) * hi) if hi < 1.0 else len(t)]
                     for t in batch["text"]]}


def iter_texts(ds, batch_size: int = 1000):
    """Yield the ``text`` column of a Dataset in batches (for tokenizer training)."""
    for start in range(0, len(ds), batch_size):
        yield from ds[start:start + batch_size]["text"]


# ---------------------------------------------------------------------------------------------------------------
# Tokenizing and packing
# ---------------------------------------------------------------------------------------------------------------


def separator_id(tokenizer) -> int:
    """The token that ends a document: eos (gpt, t5), else sep (bert)."""
    for name in ("eos_token_id", "sep_token_id"):
        token_id = getattr(tokenizer, name, None)
        if token_id is not None:
            return token_id
    raise ValueError("the tokenizer has neither an eos nor a sep token to separate documents")


def pack_corpus(corpus, tokenizer, block_size: int, num_proc: int | None = None,
                cache_dir: str | None = None) -> PackedCorpus:
    """Tokenize every split of ``corpus`` and pack it into ``block_size`` blocks; reuse the cache when unchanged.

    Streaming splits (``IterableDataset``) are packed lazily and never cached; they have no stats.
    """
    from datasets import Dataset

    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be at least 2")
    sep = separator_id(tokenizer)
    if not all(isinstance(ds, Dataset) for ds in corpus.values()):
        packed = {name: _pack_split(ds, tokenizer, sep, block_size, None, name) for name, ds in corpus.items()}
        return PackedCorpus({name: p[0] for name, p in packed.items()},
                            {name: p[1] for name, p in packed.items() if p[1]})
    key = cache_key(corpus, tokenizer, block_size, sep)
    path = os.path.join(cache_dir or _default_cache_dir(), key)
    if os.path.isfile(os.path.join(path, "stats.json")):
        logger.info("reusing packed data from %s", path)
        return _load_packed(path)
    splits, stats = {}, {}
    for name, ds in corpus.items():
        splits[name], stats[name] = _pack_split(ds, tokenizer, sep, block_size, num_proc, name, key)
    _save_packed(path, splits, stats)
    return _load_packed(path)


def _pack_split(ds, tokenizer, sep, block_size, num_proc, name, key=None):
    """Cut into pieces, tokenize (adding ``sep`` at each document end), then pack; returns (blocks, stats)."""
    from datasets import Dataset

    if not isinstance(ds, Dataset):  # streaming
        tokens = ds.map(_to_pieces, batched=True, remove_columns=["text"]).map(
            _encode, batched=True, fn_kwargs={"tokenizer": tokenizer, "sep": sep}, remove_columns=["text", "doc_end"])
        return tokens.map(_blocks, batched=True, fn_kwargs={"block_size": block_size},
                          remove_columns=["n_tokens", "n_bytes"]), None
    fingerprint = {"new_fingerprint": f"{key}-{name}-tok"} if key else {}  # skip hashing the tokenizer object
    pieces = ds.map(_to_pieces, batched=True, remove_columns=ds.column_names, desc=f"cut {name}")
    tokens = pieces.map(_encode, batched=True, batch_size=64, num_proc=num_proc, remove_columns=["text", "doc_end"],
                        fn_kwargs={"tokenizer": tokenizer, "sep": sep}, desc=f"tokenize {name}", **fingerprint)
    blocks = tokens.map(_blocks, batched=True, batch_size=256, num_proc=num_proc, fn_kwargs={"block_size": block_size},
                        remove_columns=tokens.column_names, desc=f"pack {name}")
    stats = {"documents": len(ds), "bytes": int(np.sum(tokens["n_bytes"])), "tokens": int(np.sum(tokens["n_tokens"])),
             "blocks": len(blocks)}
    if not len(blocks):
        raise ValueError(f"the {name} split has {stats['tokens']} tokens, fewer than one block of "
                         f"block_size={block_size}: use more text or a smaller block_size")
    return blocks, stats


def cache_key(corpus, tokenizer, block_size: int, sep: int) -> str:
    """Hash of everything the packed blocks depend on (datasets' fingerprints track files and their mtimes)."""
    parts = {"version": PACK_VERSION, "block_size": block_size, "sep": sep,
             "splits": {name: ds._fingerprint for name, ds in sorted(corpus.items())},
             "tokenizer": hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _default_cache_dir() -> str:
    import datasets

    return os.path.join(datasets.config.HF_DATASETS_CACHE, "minigpt-packed")


def _to_pieces(batch):
    texts, ends = [], []
    for text in batch["text"]:
        pieces = list(_cut(text))
        texts += pieces
        ends += [False] * (len(pieces) - 1) + [True]
    return {"text": texts, "doc_end": ends}


def _cut(text: str, size: int = PIECE_CHARS):
    # Cut only before a line that starts with a non-space: byte-level BPE never merges across such a cut.
    start = 0
    while len(text) - start > 2 * size:
        cut = text.find("\n", start + size)
        while cut != -1 and cut + 1 < len(text) and text[cut + 1].isspace():
            cut = text.find("\n", cut + 1)
        if cut == -1 or cut + 1 >= len(text):
            break
        yield text[start:cut + 1]
        start = cut + 1
    yield text[start:]


def _encode(batch, tokenizer, sep):
    ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
    ids = [row + [sep] if end else row for row, end in zip(ids, batch["doc_end"])]
    return {"input_ids": ids, "n_tokens": [len(row) for row in ids],
            "n_bytes": [len(text.encode("utf-8")) for text in batch["text"]]}


def _blocks(batch, block_size):
    ids = np.concatenate([np.asarray(row, dtype=np.int64) for row in batch["input_ids"]])
    usable = len(ids) // block_size * block_size  # the tail of each map batch is dropped, as in run_clm
    return {"input_ids": ids[:usable].reshape(-1, block_size)}  # (n_blocks, block_size)


def _save_packed(path: str, splits: dict, stats: dict) -> None:
    # Build beside the final folder and rename it into place: a crash never leaves a half-written cache.
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    for name, ds in splits.items():
        ds.save_to_disk(os.path.join(tmp, name))
    with open(os.path.join(tmp, "stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    if os.path.isdir(path):  # another process won the race; keep its copy
        shutil.rmtree(tmp)
        return
    os.rename(tmp, path)


def _load_packed(path: str) -> PackedCorpus:
    from datasets import load_from_disk

    with open(os.path.join(path, "stats.json")) as f:
        stats = json.load(f)
    splits = {name: load_from_disk(os.path.join(path, name)).with_format("torch") for name in stats}
    return PackedCorpus(splits, stats, path)
