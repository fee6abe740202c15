"""split_documents: deterministic, disjoint, complete, sized as asked."""

import pytest

from modeling_minigpt.data.splits import split_documents


def test_split_is_deterministic_disjoint_and_complete():
    docs = [f"doc {i}" for i in range(100)]
    train, val, test = split_documents(docs, val_fraction=0.1, test_fraction=0.05, seed=3)
    assert (len(train), len(val), len(test)) == (85, 10, 5)
    assert sorted(train + val + test, key=docs.index) == docs
    assert all(part == sorted(part, key=docs.index) for part in (train, val, test))  # original order kept
    assert (train, val, test) == split_documents(docs, 0.1, 0.05, seed=3)
    assert val != split_documents(docs, 0.1, 0.05, seed=4)[1]


def test_small_corpora_get_one_document_per_positive_fraction():
    train, val, test = split_documents(["a", "b", "c"], val_fraction=0.01, test_fraction=0.0)
    assert (len(train), len(val), test) == (2, 1, [])


def test_datasets_input_keeps_its_type():
    from datasets import Dataset

    ds = Dataset.from_dict({"text": [str(i) for i in range(10)]})
    train, val, test = split_documents(ds, 0.2, 0.2, seed=0)
    assert isinstance(val, Dataset) and (len(train), len(val), len(test)) == (6, 2, 2)
    assert sorted([*train["text"], *val["text"], *test["text"]], key=int) == list(ds["text"])


@pytest.mark.parametrize("docs, val, test, needle", [
    (["a"] * 10, 1.0, 0.0, "val_fraction"),
    (["a"] * 10, 0.1, -0.1, "test_fraction"),
    (["a"] * 10, 0.5, 0.5, "must be below 1"),
    (["a", "b"], 0.3, 0.3, "train split would be empty"),
])
def test_bad_fractions_are_rejected(docs, val, test, needle):
    with pytest.raises(ValueError, match=needle):
        split_documents(docs, val, test)
