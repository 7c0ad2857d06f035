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


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(engine, url): the app over the tiny shapes gallery and an image-sensitive tiny checkpoint,
    served in-process for one test module."""
    from tiny_gallery import serving, tiny_engine, write_image_sensitive_checkpoint, write_tiny_shapes

    root = tmp_path_factory.mktemp("app")
    checkpoint = write_image_sensitive_checkpoint(root / "model")
    engine = tiny_engine(checkpoint, write_tiny_shapes(root / "shapes"), root / "cache")
    with serving(engine) as url:
        yield engine, url
