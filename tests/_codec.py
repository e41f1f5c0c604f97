"""Helpers of the codec tests: real photo crops from tests/data/codec and tiny untrained models."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests._util import KODAK

DATA = Path(__file__).parent / "data" / "codec"

# The checks of the shipped model that measure it on Kodak (rates and PSNR recorded when it was
# shipped, its known defects): they need ../shared/data/kodak and skip without it.
kodak = pytest.mark.skipif(not (KODAK / "kodim01.png").exists(),
                           reason="measures the shipped model on Kodak: ../shared/data/kodak is not here")


def kodak_crop(name: str, top: int, left: int, size: tuple) -> np.ndarray:
    with Image.open(KODAK / name) as img:
        return np.asarray(img.convert("RGB"))[top:top + size[0], left:left + size[1]].copy()


@functools.cache
def _mosaic() -> np.ndarray:
    """96 x 152 x 3: tiger.png and arches.png side by side, above the same turned half a turn."""
    crops = []
    for name in ("tiger.png", "arches.png"):
        with Image.open(DATA / name) as img:
            crops.append(np.asarray(img.convert("RGB")))
    top = np.concatenate(crops, axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1, ::-1]], axis=0))


def photo(size=(40, 56)) -> np.ndarray:
    """An h x w x 3 uint8 image of real photo content (the fixture crops, tiled past 96 x 152)."""
    h, w = size
    m = _mosaic()
    return np.tile(m, (-(-h // m.shape[0]), -(-w // m.shape[1]), 1))[:h, :w].copy()


def tiny_model(kind: str, **config):
    """An untrained codec model of ``kind``, N=8, M=8, 2 qualities unless ``config`` says otherwise,
    seeded; a checkerboard model's context switched on (it starts as a zero correction)."""
    from fastae.models.codec import build_codec

    torch.manual_seed(0)
    model = build_codec({"kind": kind, "N": 8, "M": 8, "lambdas": [0.01, 0.1], **config})
    if kind == "checkerboard":
        torch.nn.init.normal_(model.ctx.params[-1].weight, std=0.3)
    return model


def rewrite_model_file(path, out, changes: dict):
    """A copy of the weights file ``path`` at ``out`` with the tensors of ``changes`` replaced (a
    value None removes the tensor), its metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    for name, value in changes.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value.contiguous()
    save_file(tensors, str(out), metadata=meta)
    return out


def cpu_vendor() -> str:
    """The CPU's vendor_id (GenuineIntel, AuthenticAMD, ...; "unknown" without /proc/cpuinfo): float
    kernels round differently on another vendor's CPU even at the same torch CPU capability."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
