import os

import pytest
import torch

# Without a GPU the Triton kernels run in the interpreter on CPU tensors. Triton reads this
# when its kernels are defined, so it must be set before fastae.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """The `cuda` marker (pyproject.toml): on the cuda and triton backend cases where CUDA is
    present; a test marked by hand skips where it is not."""
    gpu = torch.cuda.is_available()
    for item in items:
        backend = item.callspec.params.get("backend") if hasattr(item, "callspec") else None
        if gpu and backend in ("cuda", "triton"):  # tests._util.device_for puts both on the GPU
            item.add_marker(pytest.mark.cuda)
        elif not gpu and item.get_closest_marker("cuda") is not None:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session", params=["checkerboard", "factorized", "hyperprior"])
def tiny_codec(request, tmp_path_factory):
    """A small, untrained codec of each kind exported with its tables: tests the machinery, not the quality."""
    from fastae.codec.api import load_codec
    from fastae.codec.model_file import export_codec
    from tests._codec import tiny_model

    path = export_codec(tiny_model(request.param), tmp_path_factory.mktemp("codec") / "tiny.safetensors",
                        model_id="tiny")
    return load_codec(quality=2, weights=path)
