"""Helpers shared by the op tests: which backends run here and on which device."""

from pathlib import Path

import pytest
import torch

import fastae

AVAILABLE = fastae.ops.available_backends()


def backend_params(names=fastae.ops.BACKENDS):
    """Each backend as a pytest param, skipped with its reason where this install lacks it."""
    return [
        pytest.param(name, marks=pytest.mark.skipif(not AVAILABLE[name][0], reason=AVAILABLE[name][1]), id=name)
        for name in names
    ]


def device_for(backend):
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def assert_close(actual, expected, atol, rtol):
    """Element-wise closeness with atol scaled to the tensor's magnitude: matmul outputs of
    larger norm carry larger rounding error in every element."""
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol * scale, rtol=rtol)


# Fixtures checked in under tests/data: mnist/ holds the first 300 digits of MNIST's t10k files
# (images and labels, in their original gzipped IDX format).
FIXTURES = Path(__file__).resolve().parent / "data"
MNIST = FIXTURES / "mnist"

# Real data beside the repository (../shared/data); tests that need it skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KODAK = SHARED_DATA / "kodak"
PHOTOS = SHARED_DATA / "photos-train"


def experiment_script(name: str):
    """The module of experiments/NAME.py (the experiments are not a package), loaded for a test."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
