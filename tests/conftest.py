import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import cir_core


@pytest.fixture(scope="session")
def tiny_model():
    """A random tiny-test model in eval mode (do not mutate: shared by the session)."""
    torch.manual_seed(0)
    return cir_core.create_model("tiny-test").eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """The tiny model saved as a checkpoint folder."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    cir_core.save_model(tiny_model, path)
    return path
