"""The one image reader: which files of a folder are images, and the pixels of one, as viewers show them.

    paths = list_images("../shared/data/kodak")               # sorted Paths of the image files
    rgb = read_rgb(paths[0])                                  # uint8 [H, W, 3], upright, sRGB
    x = load_image_folder("../shared/data/kodak", size=256)   # uint8 [24, 3, 256, 256]

Training (``load_image_folder``, ``fastae.train.codec.load_photos``), compression
(``fastae compress``, ``Codec.compress(path)``) and evaluation read files through this module, so
they see the same files with the same pixels:

* Which files: everything under the folder, recursively, in sorted order, whose suffix is one of
  ``IMAGE_EXTENSIONS`` (case-insensitive); hidden files and folders (name starting with ``.``) are
  skipped; symlinked folders are followed, each real folder once (a link loop ends).
* Orientation: a file's EXIF orientation tag (phone photos store their pixels sideways and say so)
  is applied, so a 4000 x 3000 photo tagged "rotate 90" reads as 3000 x 4000. Only the tag is
  read: a damaged EXIF block elsewhere changes nothing.
* Colour: an RGB or CMYK image with an embedded ICC profile other than sRGB (Display P3, Adobe RGB,
  linear light, CMYK profiles) is converted to sRGB by Pillow's LittleCMS; a damaged profile is
  ignored (the pixels as stored).
* Depth and modes: grey is repeated into three channels, 16-bit values are rounded to 8 bits
  (v / 257), palettes are expanded, alpha is dropped (``Codec.compress`` refuses an image that is
  not opaque instead; for opaque images both give the same pixels).
"""

import io
import numbers
import os
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"})
CROPS = ("center", "resize")
_RESAMPLE = Image.Resampling.BICUBIC  # Pillow's own default for resize; antialiased when shrinking
_MAX_NAMED = 10  # skipped files named in the warning; the rest are counted

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the stored pixels as viewers do (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}
_SIDEWAYS = (5, 6, 7, 8)  # the orientations that swap width and height
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class NoImagesError(ValueError):
    """A folder holding no image file that Pillow can read."""


# ---------------------------------------------------------------------------------------------- which files


def walk(folder: PathLike, exclude: Optional[PathLike] = None, onerror=None) -> Iterator[tuple]:
    """Walk ``folder`` top-down in sorted order: ``(relative folder, visible file names, repeats)``
    for each folder entered. Hidden files and folders are left out; symlinked folders are followed,
    each real folder once (``repeats`` counts the links to a folder already entered, a loop among
    them); the folder ``exclude`` (e.g. an output folder inside the input) is not entered.
    ``onerror`` is called with the OSError of a folder that cannot be listed (default: ignored)."""
    folder = Path(folder)
    excluded = os.path.realpath(exclude) if exclude is not None else None
    seen = {os.path.realpath(folder)}  # folders entered, by real path
    for root, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=True):
        keep, repeats = [], 0
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(root, d))
            if d.startswith(".") or real == excluded:
                continue
            if real in seen:  # a link back up the tree, or a second link to one folder
                repeats += 1
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        yield Path(os.path.relpath(root, folder)), sorted(n for n in filenames if not n.startswith(".")), repeats


def list_images(folder: PathLike) -> list:
    """The image files under ``folder``, recursively, as sorted Paths (see the module docstring:
    ``IMAGE_EXTENSIONS``, hidden entries left out, symlinked folders followed once). The files that
    ``fastae compress`` compresses, ``fastae eval`` evaluates and training reads.

    Raises FileNotFoundError / NotADirectoryError when ``folder`` is missing / not a folder."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder of images, got a file")
    return sorted(folder / rel / name for rel, names, _ in walk(folder) for name in names
                  if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------- one image


def upright(img: Image.Image) -> Image.Image:
    """``img`` (read from a file) rotated/flipped as its EXIF orientation tag says viewers show it.
    Only the tag is read: a damaged EXIF block elsewhere changes nothing."""
    method = _UPRIGHT.get(_orientation(img))
    return img if method is None else img.transpose(method)


def _orientation(img: Image.Image) -> int:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # Pillow raises SyntaxError, OSError, ValueError... on a damaged EXIF block
        return 1
    return orientation if isinstance(orientation, int) else 1


def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.createProfile("sRGB")


def to_srgb(img: Image.Image) -> Image.Image:
    """An RGB or CMYK ``img`` with an ICC profile, in sRGB (any other image as it is). An RGB profile
    that maps every colour of a 6x6x6 test cube to itself within one level is taken to be sRGB, and
    the pixels are kept as they are (LittleCMS would move some by one level); names are not trusted
    ("sRGB linear"). A damaged or unusable profile leaves the pixels as stored."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK"):
        return img
    try:
        from PIL import ImageCms
    except ImportError:  # a Pillow built without LittleCMS
        warnings.warn("Pillow lacks ImageCms (LittleCMS): the image's ICC profile is ignored", stacklevel=3)
        return img
    try:
        transform = ImageCms.buildTransform(ImageCms.ImageCmsProfile(io.BytesIO(icc)), _srgb_profile(), img.mode,
                                            "RGB")
        if img.mode == "RGB":
            levels = np.linspace(0, 255, 6).round().astype(np.uint8)
            cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(36, 6, 3)
            moved = np.asarray(ImageCms.applyTransform(Image.fromarray(cube), transform)).astype(np.int16) - cube
            if np.abs(moved).max() <= 1:
                return img
        return ImageCms.applyTransform(img, transform)
    except (ImageCms.PyCMSError, OSError, ValueError):  # a damaged or unusable profile: the pixels as stored
        return img


def to_8bit(a: np.ndarray) -> np.ndarray:
    """16-bit values 0..65535 to the nearest 8-bit value (v / 257, rounded): uint8 of ``a``'s shape."""
    return ((a.astype(np.int64) + 128) // 257).astype(np.uint8)


def open_image(path: Union[PathLike, bytes], name: Optional[str] = None) -> Image.Image:
    """The image file ``path``, decoded and turned upright as its EXIF orientation says (its mode
    and ICC profile as stored: ``read_rgb`` takes it on to sRGB pixels). ``path`` may also be the
    bytes of an image file (a Parquet cell, a tar member), named ``name`` in errors.

    Raises ValueError naming the file when Pillow cannot identify it (or it is a decompression
    bomb); OSError when it cannot be read or its pixels are truncated."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        source, path = io.BytesIO(path), name or "image bytes"
    else:
        source = path = Path(path)
    try:
        with Image.open(source) as img:
            img.load()
            return upright(img)
    except (Image.UnidentifiedImageError, Image.DecompressionBombError) as e:
        why = "Pillow cannot identify it" if isinstance(e, Image.UnidentifiedImageError) and path != source else e
        raise ValueError(f"{path}: not an image fastae can read ({why})") from None


def read_rgb(path: PathLike) -> np.ndarray:
    """The pixels of the image file ``path`` as viewers show them: uint8 ``[H, W, 3]``, upright
    (EXIF), sRGB (ICC), grey repeated into three channels, 16-bit rounded to 8, alpha dropped.

    Raises as ``open_image``; ValueError for 32-bit float images (mode ``F``)."""
    img = open_image(path)
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in _SIXTEEN_BIT or mode == "I":
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{path}: mode {mode!r} holds values outside 0..65535; expected an 8 or 16-bit image")
        grey = a.astype(np.uint8) if mode == "I" and (not a.size or a.max() <= 255) else to_8bit(a)
        return np.repeat(grey[:, :, None], 3, axis=2)
    elif mode == "F":
        raise ValueError(f"{path}: mode 'F' (32-bit float) is not supported; expected an 8 or 16-bit image")
    if img.mode in _ALPHA:
        img = img.convert("L" if img.mode.startswith("L") else "RGB")
    if img.mode in ("1", "L"):
        return np.repeat(np.asarray(img.convert("L"))[:, :, None], 3, axis=2)
    return np.array(to_srgb(img).convert("RGB"))


# ---------------------------------------------------------------------------------------------- a folder


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
        warnings.warn(f"{folder}: skipped {len(skipped)} image files Pillow cannot read: {names}{more}", stacklevel=3)


def _scan(folder: Path) -> tuple[list, list]:
    """The image files under folder as ``(found, skipped)``: (path, mode, (width, height) upright)
    of those Pillow opens, and the paths of the rest. Reads headers only."""
    found, skipped = [], []
    for p in list_images(folder):
        try:
            with Image.open(p) as im:
                w, h = im.size
                # A PNG's getexif() decodes the pixels when no eXIf chunk precedes them: not for a header scan.
                sideways = (im.format != "PNG" or "exif" in im.info) and _orientation(im) in _SIDEWAYS
                found.append((p, im.mode, (h, w) if sideways else (w, h)))
        except (OSError, Image.DecompressionBombError):  # PIL.UnidentifiedImageError is an OSError
            skipped.append(p)
    return found, skipped


def _decode(path: Path, channels: int, size: Optional[tuple[int, int]], crop: str) -> np.ndarray:
    """One image as uint8 [H, W, C]."""
    im = Image.fromarray(read_rgb(path))
    if channels == 1:
        im = im.convert("L")  # exact for grey images, whose three channels are equal
    if size is not None:
        h, w = size
        im = ImageOps.fit(im, (w, h), _RESAMPLE) if crop == "center" else im.resize((w, h), _RESAMPLE)
    return np.atleast_3d(np.asarray(im))


def load_image_folder(path: PathLike, size=None, channels: Optional[int] = None, crop: str = "center") -> Tensor:
    """Load every image under a folder (``list_images``), read as ``read_rgb`` reads it, in sorted path order.

    Args:
        path: a folder. Image files Pillow cannot read are skipped with a warning naming them.
        size: None (all images must then share one size), an int (square) or ``(height, width)``.
        channels: 1 (grey) or 3 (RGB); None: 3 if any image is colour (palette images count as
            colour), else 1.
        crop: with ``size``, ``"center"`` scales the shorter side to fit and center-crops the rest
            (keeps the aspect ratio); ``"resize"`` stretches to ``size``.

    Returns:
        uint8 ``[N, C, H, W]``.

    Raises:
        FileNotFoundError / NotADirectoryError: path is missing / not a folder.
        NoImagesError (a ValueError): no image file under path could be read.
        ValueError: a bad ``size``, ``channels`` or ``crop``, or, without ``size``, two images of
            different sizes (both named).
    """
    folder = Path(path)
    size = _size_hw(size)
    if channels not in (None, 1, 3):
        raise ValueError(f"load_image_folder: expected channels 1, 3 or None, got {channels!r}")
    if crop not in CROPS:
        raise ValueError(f"load_image_folder: unknown crop {crop!r}; expected one of {CROPS}")
    found, skipped = _scan(folder)
    if not found:
        _warn_skipped(folder, skipped)
        raise NoImagesError(f"{folder}: no images (no image file under it that Pillow can open)")
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
            pixels = _decode(p, channels, size, crop)
        except (OSError, ValueError):  # the header opened but the pixels are truncated, corrupt or unsupported
            skipped.append(p)
            continue
        if pixels.shape[:2] != (h, w):  # a PNG whose EXIF orientation follows its pixels
            raise ValueError(f"images differ in size: {found[0][0]} is {h}x{w}, {p} is {pixels.shape[0]}x"
                             f"{pixels.shape[1]} (height x width); pass size= to resize them (fastae train: --size)")
        buf[n] = pixels.transpose(2, 0, 1)
        n += 1
    _warn_skipped(folder, skipped)
    if n == 0:
        raise NoImagesError(f"{folder}: no images (every image file under it failed to decode)")
    return out[:n]
