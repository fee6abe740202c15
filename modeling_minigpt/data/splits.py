"""Deterministic train / validation / test splits of a document collection."""

import math
import random


def split_documents(docs, val_fraction: float = 0.01, test_fraction: float = 0.0, seed: int = 0):
    """Split ``docs`` into (train, validation, test) by a seeded permutation; the same seed gives the same split.

    ``docs`` is a sequence (a list of texts or dicts) or a ``datasets.Dataset``; each part keeps the input's type
    (``Dataset.select`` for datasets) and the documents' original order. A positive fraction always gets at least
    one document, and the rest go to train, which must not end up empty.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}={value!r} must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} must be below 1")
    n = len(docs)
    n_val = max(1, math.floor(n * val_fraction + 0.5)) if val_fraction > 0 else 0
    n_test = max(1, math.floor(n * test_fraction + 0.5)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} documents are too few for val_fraction={val_fraction} and "
                         f"test_fraction={test_fraction}: the train split would be empty")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    return tuple(_take(docs, sorted(part)) for part in (train, val, test))


def _take(docs, indices):
    if hasattr(docs, "select"):  # datasets.Dataset
        return docs.select(indices)
    return [docs[i] for i in indices]
