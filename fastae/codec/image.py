"""Input policy: how an image given to the codec becomes the pixels it codes (``to_rgb_array``).

Inputs: a path, a PIL image, an H x W x 3 (or H x W, H x W x 1) uint8/uint16 array, or a
3 x H x W (or 1 x H x W, H x W) tensor, uint8 or float in [0, 1], of any size from 1 x 1.

Channel policy: grey images are coded through the RGB model and decoded back to one channel
(``decompress`` returns H x W x 1); palette and CMYK images are converted to RGB; an alpha
channel that is fully opaque is dropped, any other alpha is rejected (ValueError: fastae does not
code transparency; flatten it first, e.g. ``img.convert("RGB")``). 16-bit images are reduced to
8 bits (the header records the original depth; the decoded image is 8-bit).

Files as viewers show them: an image file with an EXIF orientation tag (phone photos store their
pixels sideways and say so in EXIF) is turned upright first, so a 4000 x 3000 photo tagged
"rotate 90" decodes to 3000 x 4000. A PIL image is taken as its pixels are (Pillow's own
transpose keeps a stale tag; use ``ImageOps.exif_transpose`` first for one opened by hand). A
colour file or PIL image with an embedded ICC profile other than sRGB (Display P3, Adobe RGB,
linear light, CMYK profiles) is converted to sRGB by Pillow's LittleCMS, since the .fae file keeps
no profile and the decoded image is sRGB. A damaged EXIF block or profile is ignored (the pixels
are coded as stored); arrays and tensors are taken as they are.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastae.data.images import open_image, to_8bit as _to_8bit, to_srgb as _to_srgb


def _array_from_pil(img: Image.Image):
    """(H x W x 3 uint8 array, channels, bit depth) following the channel and orientation policy of
    the module docstring."""
    bit_depth = 8
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"image of mode {mode!r} has values outside 0..65535; fastae codes 8 or 16-bit images")
        if mode == "I" and (not arr.size or arr.max() <= 255):  # 32-bit mode of 8-bit values (e.g. convert("I"))
            return np.repeat(arr.astype(np.uint8)[:, :, None], 3, axis=2), 1, 8
        arr = _to_8bit(arr)
        return np.repeat(arr[:, :, None], 3, axis=2), 1, 16
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel(img.getbands()[-1]))  # "A", or "a" of the premultiplied modes
        if (alpha != 255).any():
            raise ValueError(f"image has transparency (mode {mode!r}); fastae does not code alpha: flatten it "
                             f"first, e.g. img.convert('RGB')")
        img = img.convert("L" if mode.startswith("L") else "RGB")
        mode = img.mode
    if mode in ("1", "L"):
        arr = np.array(img.convert("L"))
        return np.repeat(arr[:, :, None], 3, axis=2), 1, bit_depth
    if mode == "F":
        raise ValueError("image of mode 'F' (32-bit float) is not supported; fastae codes 8 or 16-bit images")
    return np.array(_to_srgb(img).convert("RGB")), 3, bit_depth


def _array_from_numpy(a: np.ndarray, what="array"):
    if a.ndim == 3 and a.shape[2] == 4:
        if a.dtype == np.uint8 and (a[:, :, 3] != 255).any() or a.dtype == np.uint16 and (a[:, :, 3] != 65535).any():
            raise ValueError(f"{what} has transparency (4 channels); fastae does not code alpha: drop it first")
        a = a[:, :, :3]
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"expected an H x W x 3 (or H x W, H x W x 1) {what}, got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an image of at least 1 x 1 pixels, got shape {a.shape}")
    bit_depth = 8
    if a.dtype == np.uint16:
        a, bit_depth = _to_8bit(a), 16
    elif a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 or uint16 {what}, got dtype {a.dtype}")
    channels = a.shape[2]
    if channels == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a), channels, bit_depth


def to_rgb_array(image):
    """``(H x W x 3 uint8 array, original channels, original bit depth)`` of any supported input."""
    if isinstance(image, (str, Path)):
        return _array_from_pil(open_image(image))
    if isinstance(image, Image.Image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"expected an image of at least 1 x 1 pixels, got {image.width} x {image.height}")
        return _array_from_pil(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        elif t.dim() != 2:
            raise ValueError(f"expected a 3 x H x W (or 1 x H x W, H x W) tensor, got shape {tuple(image.shape)}")
        if t.is_floating_point():
            if t.numel() and (t.min() < 0 or t.max() > 1 or not torch.isfinite(t).all()):
                raise ValueError("a float image tensor must hold values in [0, 1]")
            t = (t * 255).round().to(torch.uint8)
        elif t.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 or float tensor, got dtype {t.dtype}")
        return _array_from_numpy(t.numpy(), "tensor")
    if isinstance(image, np.ndarray):
        return _array_from_numpy(image)
    raise TypeError(f"expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")

