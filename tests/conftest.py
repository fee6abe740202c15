from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()

# Tiny test models: thread hand-offs cost more than they save (10x slower on a busy 2-core machine).
torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"the shared test data is expected beside the repository at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def flex_calls(monkeypatch) -> list:
    """Counts the calls of transformers' registered flex_attention function: proof that a model ran through it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls, flex = [], ALL_ATTENTION_FUNCTIONS["flex_attention"]
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "flex_attention", lambda *a, **k: calls.append(1) or flex(*a, **k))
    return calls


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: without it they are deselected (counted as such), not skipped."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if "gpu" in item.keywords]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if "gpu" not in item.keywords]
