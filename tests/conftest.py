import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors. Triton reads this
# when its kernels are defined, so it must be set before fastae.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains or runs for more than a few seconds (deselect with -m 'not slow')")


@pytest.fixture(scope="session", params=["checkerboard", "factorized", "hyperprior"])
def tiny_codec(request, tmp_path_factory):
    """A small, untrained codec of each kind exported with its tables: tests the machinery, not the quality."""
    from fastae.codec.api import load_codec
    from fastae.codec.model_file import export_codec
    from tests._codec import tiny_model

    path = export_codec(tiny_model(request.param), tmp_path_factory.mktemp("codec") / "tiny.safetensors",
                        model_id="tiny")
    return load_codec(quality=2, weights=path)
