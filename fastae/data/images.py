"""Folders of images (PNG, JPEG, anything Pillow opens) -> one uint8 tensor.

    x = load_image_folder("../shared/data/kodak", size=256)   # uint8 [24, 3, 256, 256]
"""

import numbers
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

CROPS = ("center", "resize")
_RESAMPLE = Image.Resampling.BICUBIC  # Pillow's own default for resize; antialiased when shrinking
_MAX_NAMED = 10  # skipped files named in the warning; the rest are counted


class NoImagesError(ValueError):
    """A folder holding no file that Pillow can open."""


def _size_hw(size) -> Optional[tuple[int, int]]:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, numbers.Integral) else size
    if not isinstance(hw, (tuple, list)) or len(hw) != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in hw):
        raise ValueError(f"load_image_folder: expected size a positive int or a pair (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def _warn_skipped(folder: Path, skipped: list) -> None:
    if skipped:
        names = ", ".join(str(p) for p in skipped[:_MAX_NAMED])
        more = f" and {len(skipped) - _MAX_NAMED} more" if len(skipped) > _MAX_NAMED else ""
        warnings.warn(f"{folder}: skipped {len(skipped)} files Pillow cannot read: {names}{more}", stacklevel=3)


def _scan(folder: Path) -> tuple[list, list]:
    """Every file under folder (subfolders included) in sorted order, as ``(found, skipped)``:
    (path, mode, (width, height)) of those Pillow opens, and the paths of the rest. Reads headers only."""
    found, skipped = [], []
    for p in sorted(f for f in folder.rglob("*") if f.is_file()):
        try:
            with Image.open(p) as im:
                found.append((p, im.mode, im.size))
        except OSError:  # PIL.UnidentifiedImageError is one
            skipped.append(p)
    return found, skipped


def _decode(path: Path, channels: int, size: Optional[tuple[int, int]], crop: str) -> np.ndarray:
    """One image as uint8 [H, W, C]."""
    with Image.open(path) as im:
        if im.mode.startswith("I;16"):
            # convert("L") would clip 16-bit grey at 255; keep the high byte, as Pillow does for 16-bit RGB.
            im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))
        im = im.convert("L" if channels == 1 else "RGB")
        if size is not None:
            h, w = size
            im = ImageOps.fit(im, (w, h), _RESAMPLE) if crop == "center" else im.resize((w, h), _RESAMPLE)
        return np.atleast_3d(np.asarray(im))


def load_image_folder(path: Union[str, os.PathLike], size=None, channels: Optional[int] = None,
                      crop: str = "center") -> Tensor:
    """Load every image under a folder, subfolders included, in sorted path order.

    Args:
        path: a folder. Files Pillow cannot open are skipped with a warning naming them.
        size: None (all images must then share one size), an int (square) or ``(height, width)``.
        channels: 1 (grey) or 3 (RGB); None: 3 if any image is colour (palette images count as
            colour), else 1. Alpha is dropped; 16-bit images are scaled to 8 bits.
        crop: with ``size``, ``"center"`` scales the shorter side to fit and center-crops the rest
            (keeps the aspect ratio); ``"resize"`` stretches to ``size``.

    Returns:
        uint8 ``[N, C, H, W]``.

    Raises:
        FileNotFoundError / NotADirectoryError: path is missing / not a folder.
        NoImagesError (a ValueError): no file under path could be read.
        ValueError: a bad ``size``, ``channels`` or ``crop``, or, without ``size``, two images of
            different sizes (both named).
    """
    folder = Path(path)
    size = _size_hw(size)
    if channels not in (None, 1, 3):
        raise ValueError(f"load_image_folder: expected channels 1, 3 or None, got {channels!r}")
    if crop not in CROPS:
        raise ValueError(f"load_image_folder: unknown crop {crop!r}; expected one of {CROPS}")
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder of images, got a file")
    found, skipped = _scan(folder)
    if not found:
        _warn_skipped(folder, skipped)
        raise NoImagesError(f"{folder}: no images (no file under it that Pillow can open)")
    if channels is None:
        channels = 3 if any(Image.getmodebase(mode) != "L" for _, mode, _ in found) else 1
    if size is None:
        first, _, (w0, h0) = found[0]
        for p, _, (w, h) in found[1:]:
            if (w, h) != (w0, h0):
                raise ValueError(f"images differ in size: {first} is {h0}x{w0}, {p} is {h}x{w} (height x width); "
                                 f"pass size= to resize them (fastae train: --size)")
    h, w = size or (h0, w0)
    # Filled in place rather than stacked, so the pixels are never held twice.
    out = torch.empty((len(found), channels, h, w), dtype=torch.uint8)
    buf, n = out.numpy(), 0
    for p, _, _ in found:
        try:
            buf[n] = _decode(p, channels, size, crop).transpose(2, 0, 1)
        except OSError:  # the header opened but the pixels are truncated or corrupt
            skipped.append(p)
            continue
        n += 1
    _warn_skipped(folder, skipped)
    if n == 0:
        raise NoImagesError(f"{folder}: no images (every file under it that Pillow opened failed to decode)")
    return out[:n]
