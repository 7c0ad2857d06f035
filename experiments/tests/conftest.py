"""The experiments' tests: slow by nature (they train and render), so the fast subset skips them."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the shared helpers (tiny_gallery, ...)

import pytest  # noqa: E402
import torch  # noqa: E402

import cir_core  # noqa: E402


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model():
    """A random tiny-test model in eval mode (do not mutate: shared by the session)."""
    torch.manual_seed(0)
    return cir_core.create_model("tiny-test").eval()
