from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """The first 30,000 characters of Tiny Shakespeare (the bundled copy)."""
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "recipes" / "data" / "tinyshakespeare.txt").read_text()[:30_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def tokenizer(small_text):
    from modeling_minigpt.tokenization import train_tokenizer

    return train_tokenizer(texts=[small_text.read_text()], vocab_size=320, family="gpt", show_progress=False)


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps process-wide singletons; give each test a clean slate."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
