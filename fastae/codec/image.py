"""Image compression with a learned codec: ``load_codec``, ``Codec.compress`` / ``decompress``,
batched ``encode`` / ``decode``.

    codec = fastae.load_codec(quality=4)          # the pretrained model shipped in the package
    data = codec.compress("kodim01.png")          # bytes of a .fae file
    rgb = codec.decompress(data)                  # H x W x 3 uint8 array

Inputs: a path, a PIL image, an H x W x 3 (or H x W, H x W x 1) uint8/uint16 array, or a
3 x H x W (or 1 x H x W, H x W) tensor, uint8 or float in [0, 1]. Any size from 1 x 1: the image
is padded (edge replicated) to a multiple of the model's stride (64 for a hyperprior model, 16
for a factorized one) and cropped back after decoding.

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

Hyperprior models: the Gaussian of each latent is chosen by ``h_s`` from the decoded
hyper-latents, and encoder and decoder must pick the same integer table, or the rest of the
image decodes wrongly. ``h_s`` (and a checkerboard model's context network) therefore runs in
float64 on both sides (on the codec's device):
the scales' 64 tables are 13% apart, so a device-dependent rounding error of relative size e
moves a latent to the neighbouring table with a probability of about e / 0.12 — for float32's
~1e-6 a few latents in every Kodak image (250k latents), for float64's ~1e-15 practically never.
Measured on the 24 Kodak images at quality 8: float32 picks another table than float64 for 31
of 5,898,240 latents with fastae-checkerboard-v2 (28 with fastae-hyperprior-v4's ``h_s``).
"""

import copy
import functools
import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from fastae._device import resolve_device
from fastae._io import atomic_path, read_safetensors, safetensors_metadata
from fastae.codec import DEFAULT_MODEL, rans
from fastae.codec.format import CODER_RANS, CodecError, Header, check_model_id, pack, unpack
from fastae.codec.refine import check_refine, needs_side_search, refine_latents, search_side
from fastae.codec.tables import (check_tables, code_lengths, from_symbols, pack_varints, tables_from_pmf, to_symbols,
                                 unpack_varints)
from fastae.data.images import open_image, to_8bit as _to_8bit, to_srgb as _to_srgb
from fastae.models.codec import (CheckerboardContext, HyperpriorCodec, ImageCodec, build_codec, checkerboard,
                                 scale_table)

WEIGHTS_DIR = Path(__file__).parent / "weights"
# Large images run the analysis and synthesis transforms in bands of rows, so that memory stays
# near what one band needs (about 400 bytes per pixel of a band) instead of growing with the image:
# a band holds about BAND_PIXELS pixels, and each band is computed with HALO latent rows of its
# neighbours on either side, which covers the transforms' reach (under 2 latent rows: four 5x5
# layers of stride 2), so a band's rows are those of the whole image up to float rounding.
BAND_PIXELS = 1 << 21
HALO = 3
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit; decoding refuses larger images
_SUPPORT = 1 << 11  # tables are derived over the integers -2048..2048


# ---------------------------------------------------------------------------------------------- models


def model_hash(tensors: dict) -> bytes:
    """First 8 bytes of SHA-256 over every tensor (sorted by name: name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:8]


def _put_tables(out: dict, name: str, pmf: np.ndarray, support: torch.Tensor):
    cdfs, offsets, sizes = tables_from_pmf(pmf, support.numpy())
    out[f"tables.{name}.cdfs"] = torch.from_numpy(cdfs)
    out[f"tables.{name}.offsets"] = torch.from_numpy(offsets)
    out[f"tables.{name}.sizes"] = torch.from_numpy(sizes)


@torch.no_grad()
def derive_tables(model: ImageCodec) -> dict:
    """The integer tables of the model's entropy models: every quality's factorized model
    {"tables.q{q}.cdfs" / ".offsets" / ".sizes"} (of the latents, or of a hyperprior's
    hyper-latents) and, for a hyperprior, one table per scale of the Gaussian ("tables.gaussian.*",
    with its float64 ".scales")."""
    support = torch.arange(-_SUPPORT, _SUPPORT + 1)
    out = {}
    for q, prior in enumerate(model.priors, start=1):
        _put_tables(out, f"q{q}", prior.pmf(support.to(next(prior.parameters()).device)).cpu().numpy(), support)
    if isinstance(model, HyperpriorCodec):
        out.update({k: v.clone() for k, v in _gaussian_tables().items()})
    return out


@functools.lru_cache(maxsize=1)
def _gaussian_tables() -> dict:
    """The hyperprior's Gaussian tables (they depend on no weight): "tables.gaussian.cdfs" / ".offsets"
    / ".sizes", the float64 ".scales" and the ".thresholds" that choose among them."""
    support = torch.arange(-_SUPPORT, _SUPPORT + 1)
    scales = scale_table()
    out = {}
    _put_tables(out, "gaussian", _discretized_gaussian(scales.numpy(), support.numpy()), support)
    out["tables.gaussian.scales"] = scales
    out["tables.gaussian.thresholds"] = gaussian_thresholds(
        *(out[f"tables.gaussian.{k}"].numpy() for k in ("cdfs", "offsets", "sizes")), scales.numpy())
    return out


def _discretized_gaussian(scales: np.ndarray, support: np.ndarray) -> np.ndarray:
    """[S, K] probabilities of the integers ``support`` under N(0, s) for each of ``scales``."""
    s = torch.as_tensor(scales, dtype=torch.float64)[:, None]
    k = torch.as_tensor(support, dtype=torch.float64)[None, :]
    return (torch.special.ndtr((k + 0.5) / s) - torch.special.ndtr((k - 0.5) / s)).numpy()


def gaussian_thresholds(cdfs, offsets, sizes, scales, grid: int = 256) -> torch.Tensor:
    """float64 [T-1]: a latent whose predicted scale is above ``thresholds[i]`` is coded with table
    i+1 rather than table i, because table i+1 then codes it in fewer bits on average.

    The expected code length of each integer table (symbol bits, escapes included) under the
    discretized Gaussian of scale s is evaluated on a geometric grid of ``grid`` scales between
    neighbouring table scales; the threshold is where the two lengths cross (interpolated in log s).
    Taking the next larger table instead (the rule of files without thresholds) costs
    fastae-hyperprior-v4 2.4% BD-rate on Kodak: the cost of a too-narrow or too-wide Gaussian is
    nearly symmetric in log s, so the best table is about the nearest one."""
    support = np.arange(-_SUPPORT, _SUPPORT + 1)
    bits = code_lengths(cdfs, offsets, sizes, support)
    scales = np.asarray(scales, dtype=np.float64)
    out = np.empty(len(scales) - 1)
    for i in range(len(scales) - 1):
        s = np.exp(np.linspace(np.log(scales[i]), np.log(scales[i + 1]), grid))
        cost = _discretized_gaussian(s, support) @ bits[i:i + 2].T  # [grid, 2] expected bits
        diff = cost[:, 1] - cost[:, 0]  # > 0 while table i is better
        j = int(np.argmax(diff <= 0)) if (diff <= 0).any() else grid
        if j == 0:
            out[i] = s[0]
        elif j == grid:
            out[i] = s[-1]
        else:
            t = diff[j - 1] / (diff[j - 1] - diff[j])
            out[i] = float(np.exp(np.log(s[j - 1]) + t * (np.log(s[j]) - np.log(s[j - 1]))))
    return torch.from_numpy(np.maximum.accumulate(out))


WEIGHTS_DTYPES = ("float32", "float16")


def _conv_weight_names(model: ImageCodec) -> list:
    """State-dict names of the weights of every convolution (nearly all of a codec's parameters)."""
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


def export_codec(model: ImageCodec, path, model_id: str = DEFAULT_MODEL, weights_dtype: str = "float32") -> Path:
    """Write ``model`` with its derived integer tables to one safetensors file (atomically).

    ``weights_dtype="float16"`` stores the convolution weights in half precision (half the file;
    the other parameters, the gains, GDN and entropy models, stay float32). The file then holds
    exactly the model it describes: the weights are rounded to float16 first and the tables
    derived from the rounded model, and loading widens them to float32 without another rounding,
    so the encoder and the decoder compute with the same numbers as with a float32 file.
    """
    import json

    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"export_codec: weights_dtype must be one of {WEIGHTS_DTYPES}, got {weights_dtype!r}")
    check_model_id(model_id)
    model = model.cpu().eval()
    half = set()
    if weights_dtype == "float16":
        model = copy.deepcopy(model)
        state = model.state_dict()
        for name in _conv_weight_names(model):
            w = state[name]
            if not torch.isfinite(w.half()).all():
                raise ValueError(f"export_codec: {name} has values outside float16's range (largest "
                                 f"|w| {w.abs().max().item():.4g}, float16 reaches 65504); export it as float32")
            with torch.no_grad():
                w.copy_(w.half().float())
            half.add(name)
    tensors = {f"model.{k}": (v.half() if k in half else v).detach().contiguous()
               for k, v in model.state_dict().items()}
    tensors.update(derive_tables(model))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"model_id": model_id, "config": json.dumps(model.config)})
    return path


@dataclass
class _Loaded:
    model: ImageCodec
    model_id: str
    hash: bytes
    tables: dict  # quality -> (cdfs, offsets, sizes, index)
    gaussian: Optional[tuple] = None  # hyperprior: (cdfs, offsets, sizes, scales float64, thresholds float64)
    h_s64: Optional[torch.nn.Module] = None  # hyperprior: h_s in float64 (see the module docstring)
    ctx64: Optional[torch.nn.Module] = None  # checkerboard: its context in float64


def _read_model_file(path, device) -> _Loaded:
    import json

    path = Path(path)
    if path.is_dir() and (path / "codec.safetensors").is_file():
        raise FileNotFoundError(f"codec weights {path} is a folder: pass the codec file in it, "
                                f"{path / 'codec.safetensors'}")
    if not path.is_file():
        raise FileNotFoundError(f"codec weights {path} not found")
    meta = safetensors_metadata(path)
    if "model_id" not in meta or "config" not in meta:
        raise ValueError(f"{path} is not a fastae codec file (its metadata lacks model_id/config)")
    tensors = read_safetensors(path)
    model = build_codec(json.loads(meta["config"]))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    tables = {}
    for q in range(1, model.qualities + 1):
        cdfs, offsets, sizes = (tensors[f"tables.q{q}.{k}"] for k in ("cdfs", "offsets", "sizes"))
        check_tables(cdfs, offsets, sizes)
        tables[q] = (cdfs, offsets, sizes, torch.arange(cdfs.shape[0], dtype=torch.int32))
    gaussian = h_s64 = ctx64 = None
    if isinstance(model, HyperpriorCodec):
        gaussian = tuple(tensors[f"tables.gaussian.{k}"] for k in ("cdfs", "offsets", "sizes", "scales"))
        check_tables(*gaussian[:3])
        scales = gaussian[3]
        if scales.dtype != torch.float64 or scales.shape != (gaussian[0].shape[0],) or not (scales > 0).all() \
                or not (scales[1:] > scales[:-1]).all():
            raise ValueError(f"{path}: the Gaussian tables' scales must be increasing positive float64, one per table")
        # Files written before thresholds existed code each latent with the next larger table.
        thresholds = tensors.get("tables.gaussian.thresholds", scales[:-1])
        if thresholds.dtype != torch.float64 or thresholds.shape != (len(scales) - 1,) or \
                not torch.isfinite(thresholds).all() or (thresholds[1:] < thresholds[:-1]).any():
            raise ValueError(f"{path}: the Gaussian tables' thresholds must be non-decreasing finite float64, "
                             f"one between each two tables ({len(scales) - 1})")
        gaussian = (*gaussian, thresholds)
        ratio = model.stride // model.latent_stride
        h_s64 = _BandedHyperSynthesis(copy.deepcopy(model.h_s), ratio).to(device, torch.float64).eval()
        if hasattr(model, "ctx"):
            ctx64 = _BandedContext(model.M)
            ctx64.load_state_dict(model.ctx.state_dict())
            ctx64 = ctx64.to(device, torch.float64).eval()
    # channels_last: oneDNN's convolutions run ~1.3x faster on it than on NCHW (measured on CPU).
    model = model.to(device, memory_format=torch.channels_last).eval()
    return _Loaded(model, meta["model_id"], model_hash(tensors), tables, gaussian, h_s64, ctx64)


# float64 convolutions on the CPU unfold their input (im2col): a 5x5 convolution of M=160
# channels holds 32 kB per latent position, 125 bytes per pixel of the image. The entropy
# networks therefore run on bands of about ENTROPY_POSITIONS latent positions at a time.
ENTROPY_POSITIONS = 1 << 13


def _by_rows(fn, inputs, bands, halo: int, scale_in: int = 1, scale_out: int = 1):
    """``fn(*inputs)`` computed band by band and the bands' rows put together. ``bands``: (first,
    end) rows of a grid, each computed with ``halo`` rows of its neighbours either side; an input
    has ``scale_in`` rows per grid row (``None`` passes through), the output ``scale_out``. ``fn``
    must map rows to rows and see fewer than ``halo`` grid rows either side of each output row."""
    if len(bands) == 1:
        return fn(*inputs)
    rows = bands[-1][1]
    out = None
    for a, b in bands:
        lo, hi = max(a - halo, 0), min(b + halo, rows)
        part = fn(*(None if t is None else t[:, :, lo * scale_in:hi * scale_in] for t in inputs))
        part = part[:, :, (a - lo) * scale_out:(b - lo) * scale_out]
        if out is None:
            out = part.new_empty((part.shape[0], part.shape[1], rows * scale_out, part.shape[3]))
        out[:, :, a * scale_out:b * scale_out] = part
    return out


def _entropy_bands(grid: torch.Tensor, halo: int, positions: int):
    """The bands of an entropy network's input ``grid`` [B, C, R, W]: about ``positions`` of its
    positions (the batch counted) each; one band when they would be barely fewer."""
    rows, width = grid.shape[2], grid.shape[0] * grid.shape[3]
    step = max(2 * halo, positions // max(width, 1))
    if rows <= step + 2 * halo:
        return [(0, rows)]
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


class _BandedHyperSynthesis(torch.nn.Module):
    """``h_s`` (hyper-latents -> means and scales, 4x the rows) run by ``_by_rows``."""

    def __init__(self, h_s: torch.nn.Module, ratio: int):
        super().__init__()
        self.h_s, self.ratio = h_s, ratio

    def forward(self, side):
        bands = _entropy_bands(side, 2, ENTROPY_POSITIONS // self.ratio ** 2)
        return _by_rows(self.h_s, (side,), bands, 2, scale_out=self.ratio)


class _BandedContext(CheckerboardContext):
    """A CheckerboardContext whose passes run by ``_by_rows`` (its 5x5 convolution sees 2 rows)."""

    def forward(self, hyper, anchors=None):
        return _by_rows(super().forward, (hyper, anchors), _entropy_bands(hyper, 2, ENTROPY_POSITIONS), 2)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, device: str) -> _Loaded:
    return _read_model_file(path, device)


def shipped_models() -> list:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def load_codec(quality: Optional[int] = None, model: str = DEFAULT_MODEL, device="cpu", weights=None,
               refine: int = 0, side_search: bool = True) -> "Codec":
    """The pretrained codec ``model`` (shipped in the package) at ``quality`` (1 = smallest files,
    8 = best images; None: 4, or the model's highest quality if it has fewer). ``weights``: a file
    written by ``export_codec`` instead of a shipped model.
    ``refine``: steps of encoder-side latent refinement per image (0: off; see fastae.codec.refine),
    slower compression for a lower rate-distortion cost, files any decoder of the model reads.
    ``side_search``: a hyperprior model searches other hyper-latents for an image whose first ones
    predict some latents very badly (``fastae.codec.refine.search_side``); False codes the
    analysis' own."""
    check_refine(refine)
    if weights is None:
        path = WEIGHTS_DIR / f"{model}.safetensors"
        if not path.is_file():
            raise ValueError(f"load_codec: unknown model {model!r}; shipped models: {shipped_models()}")
    else:
        path = Path(weights)
    device = resolve_device(device, "load_codec: device")
    loaded = _load_cached(str(path.resolve()), str(device))
    if quality is None:
        quality = min(4, loaded.model.qualities)
    return Codec(loaded, quality, refine, side_search)


# ---------------------------------------------------------------------------------------------- inputs


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


# ---------------------------------------------------------------------------------------------- codec


@dataclass
class Latents:
    """Rounded latents of a batch: ``values`` int32 [B, M, h, w] (on the codec's device), the
    quality and the original image size (every image of a batch has the same size). For a
    hyperprior model ``values`` are the latents minus their predicted means, rounded, and ``side``
    the rounded hyper-latents int32 [B, N, h/4, w/4] the means are predicted from."""
    values: torch.Tensor
    quality: int
    height: int
    width: int
    side: Optional[torch.Tensor] = None


class Codec:
    """A learned image codec at one quality; made by ``fastae.load_codec``. Decompresses files of any
    quality its model serves."""

    def __init__(self, loaded: _Loaded, quality: int, refine: int = 0, side_search: bool = True):
        self._loaded = loaded
        self.model = loaded.model
        self.model._check_quality(quality)
        self.quality = int(quality)
        self.refine = check_refine(refine)
        if not isinstance(side_search, bool):
            raise ValueError(f"side_search must be True or False, got {side_search!r}")
        self.side_search = side_search
        self.model_id = loaded.model_id
        self.hash = loaded.hash
        self.device = next(self.model.parameters()).device

    def __repr__(self):
        refine = f", refine={self.refine}" if self.refine else ""
        search = "" if self.side_search else ", side_search=False"
        return f"Codec(model={self.model_id!r}, quality={self.quality}{refine}{search}, device={str(self.device)!r})"

    def with_quality(self, quality: int) -> "Codec":
        return Codec(self._loaded, quality, self.refine, self.side_search)

    # -- batched transforms (GPU friendly) ------------------------------------------------------

    def _pad(self, x):
        h, w = x.shape[-2:]
        s = self.model.stride
        ph, pw = (-h) % s, (-w) % s
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def latent_shapes(self, height: int, width: int) -> tuple:
        """Shapes of the coded latents of an image of ``height`` x ``width`` (y, then z for a hyperprior)."""
        s, ls = self.model.stride, self.model.latent_stride
        h, w = math.ceil(height / s) * s // ls, math.ceil(width / s) * s // ls
        if self._loaded.h_s64 is not None:
            r = s // ls
            return (self.model.M, h, w), (self.model.N, h // r, w // r)
        return ((self.model.M, h, w),)

    def _entropy(self, side: torch.Tensor, anchor_values=None):
        """float64 (means, scales) of the latents given the hyper-latents ``side``, and None. With a
        checkerboard context the anchors' come first; ``anchor_values(means, scales)`` then gives the
        rounded latents [B, M, h, w] of which the anchors are read (the encoder rounds its latents,
        the decoder decodes the anchors' stream), and the third result is what it returned."""
        hyper = self._loaded.h_s64(side.to(self.device, torch.float64))
        if self._loaded.ctx64 is None:
            return (*hyper.chunk(2, dim=1), None)
        params, values = self._loaded.ctx64.two_pass(hyper, anchor_values)
        return (*params.chunk(2, dim=1), values)

    def _index(self, scales: torch.Tensor) -> torch.Tensor:
        """int32 table index of each latent of predicted ``scales`` (see ``gaussian_thresholds``)."""
        thresholds = self._loaded.gaussian[4].to(scales.device)
        return torch.searchsorted(thresholds, scales.contiguous()).to(torch.int32)

    def _stream_count(self, shapes) -> int:
        """Streams of a file (a coded stream and its escapes per latent tensor; a checkerboard
        model codes its anchors and the other latents apart)."""
        return 2 * len(shapes) + (2 if self._loaded.ctx64 is not None else 0)

    @torch.inference_mode()
    def encode(self, batch, quality: int = None) -> Latents:
        """Rounded latents of ``batch``: [B, 3, H, W] uint8, or float in [0, 1] (refined first when
        the codec was loaded with ``refine``; a hyperprior's hyper-latents searched for the images
        that need it unless it was loaded with ``side_search=False``)."""
        return self._encode(batch, quality)[0]

    def _encode(self, batch, quality):
        quality = self.quality if quality is None else quality
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != self.model.channels:
            raise ValueError(f"encode: expected a [B, {self.model.channels}, H, W] tensor, got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        if min(batch.shape) == 0:
            raise ValueError(f"encode: expected a batch of at least one image of at least 1 x 1 pixels, got "
                             f"{tuple(batch.shape)}")
        if batch.dtype != torch.uint8 and not batch.is_floating_point():
            raise TypeError(f"encode: expected a uint8 batch (0..255) or a float one in [0, 1], got dtype {batch.dtype}")
        x = batch.to(self.device)
        if x.is_floating_point() and not bool(((x >= 0) & (x <= 1)).all()):  # also catches NaN
            raise ValueError("encode: a float batch must hold finite values in [0, 1] (for 0..255 pass uint8)")
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        h, w = x.shape[-2:]
        x = self._pad(x).contiguous(memory_format=torch.channels_last)
        z = None
        if self.refine:  # refinement optimises the latents of the whole image in one graph: no bands
            y, z = refine_latents(self.model, x, self.model.analysis(x, quality), quality, self.refine, h, w)
        else:
            y = self._banded_analysis(x, quality)
        if self._loaded.h_s64 is None:
            return Latents(torch.round(y).to(torch.int32), quality, h, w), None
        z = self.model.h_a(y) if z is None else z
        side = torch.round(z).to(torch.int32)
        values, scales = self._values(y, side)
        if self.side_search and not self.refine:  # refinement has already chosen z for its latents
            redo = needs_side_search(values, scales)
            if redo.any():
                found = torch.round(search_side(self.model, y[redo], z[redo], quality)).to(torch.int32)
                side[redo] = found
                values[redo], scales[redo] = self._values(y[redo], found)
        return Latents(values.to(torch.int32), quality, h, w, side), self._index(scales)

    def _values(self, y, side):
        """(the latents ``y`` minus their means, rounded; their scales), the means and scales
        predicted from the rounded hyper-latents ``side``."""
        if self._loaded.ctx64 is None:
            means, scales, _ = self._entropy(side)
            return torch.round(y - means.float()), scales
        y = y.double()  # the anchors' values must be those the context was computed from: all in float64
        means, scales, _ = self._entropy(side, lambda m, s: torch.round(y - m))
        return torch.round(y - means), scales

    @torch.inference_mode()
    def decode(self, latents: Latents, dtype=torch.uint8) -> torch.Tensor:
        """Images [B, 3, H, W] from ``latents``: uint8 (default) or float in [0, 1]."""
        self._check_latents(latents, dtype)
        means = None
        if self._loaded.h_s64 is not None:
            means = self._entropy(latents.side, lambda m, s: latents.values)[0].float()
        return self._synthesize(latents, means, dtype)

    def _check_latents(self, latents, dtype):
        """ValueError/TypeError unless ``latents`` are what ``encode`` gives for this model."""
        if not isinstance(latents, Latents):
            raise TypeError(f"decode: expected the Latents that encode returns, got {type(latents).__name__}")
        if not isinstance(dtype, torch.dtype) or dtype != torch.uint8 and not dtype.is_floating_point:
            raise TypeError(f"decode: dtype must be torch.uint8 or a float dtype, got {dtype!r}")
        self.model._check_quality(latents.quality)
        for name in ("height", "width"):
            v = getattr(latents, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"decode: latents.{name} must be a positive integer, got {v!r}")
        hyper = self._loaded.h_s64 is not None
        tensors = (latents.values, latents.side) if hyper else (latents.values,)
        if hyper and latents.side is None:
            raise ValueError("decode: a hyperprior codec needs the latents' side (hyper-latents)")
        for name, t, shape in zip(("values", "side"), tensors, self.latent_shapes(latents.height, latents.width)):
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dim() != 4 \
                    or tuple(t.shape[1:]) != shape or t.shape[0] != latents.values.shape[0] or t.shape[0] == 0:
                raise ValueError(f"decode: latents.{name} must be an integer tensor [B, {', '.join(map(str, shape))}] "
                                 f"for a {latents.height} x {latents.width} image, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")

    def _bands(self, rows: int, width: int):
        """(first, end) latent rows of the bands of a latent grid ``rows`` x ``width``: one band
        unless the image has more than 1.5 x BAND_PIXELS pixels."""
        ls = self.model.latent_stride
        if rows * width * ls * ls <= 1.5 * BAND_PIXELS:
            return [(0, rows)]
        step = max(2 * HALO, BAND_PIXELS // (width * ls * ls))
        return [(a, min(a + step, rows)) for a in range(0, rows, step)]

    def _banded_analysis(self, x, quality):
        """``model.analysis`` of the padded batch ``x``, band by band (see BAND_PIXELS)."""
        ls = self.model.latent_stride
        return _by_rows(lambda part: self.model.analysis(part.contiguous(memory_format=torch.channels_last), quality),
                        (x,), self._bands(x.shape[2] // ls, x.shape[3] // ls), HALO, scale_in=ls)

    def _synthesize(self, latents: Latents, means, dtype):
        y = latents.values.to(self.device, torch.float32)
        if means is not None:
            y = y + means
        y = y.contiguous(memory_format=torch.channels_last)

        def finished(part):  # each band's pixels clamped and converted at once: no float image is ever whole
            x = self.model.synthesis(part, latents.quality).clamp(0, 1)
            return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)

        ls = self.model.latent_stride
        x = _by_rows(finished, (y,), self._bands(*y.shape[2:]), HALO, scale_out=ls)
        return x[:, :, :latents.height, :latents.width]

    # -- files ------------------------------------------------------------------------------------

    def compress(self, image) -> bytes:
        """The bytes of a .fae file holding ``image`` (see the module docstring for accepted inputs)."""
        rgb, channels, bit_depth = to_rgb_array(image)
        return self._compress_array(rgb, channels, bit_depth)

    def _compress_array(self, rgb, channels, bit_depth):
        x = torch.from_numpy(np.require(rgb, requirements="W")).permute(2, 0, 1)[None]
        x = self._model_channels(x, channels)
        with torch.inference_mode():
            latents, index = self._encode(x, self.quality)
        return self._pack(latents, index, 0, channels, bit_depth)

    def compress_batch(self, batch) -> list:
        """The .fae bytes of every image of ``batch`` ([B, 3, H, W] uint8, or float in [0, 1]):
        one batched ``encode`` on the codec's device, then entropy coding image by image. Each
        file is the one ``compress`` writes for that image."""
        with torch.inference_mode():
            latents, index = self._encode(batch, self.quality)
        return [self._pack(latents, index, i, self.model.channels, 8) for i in range(latents.values.shape[0])]

    def _pack(self, latents: Latents, index, i: int, channels: int, bit_depth: int) -> bytes:
        """The .fae bytes of image ``i`` of ``latents`` (``index``: a hyperprior's table indexes)."""
        values = latents.values[i].cpu()
        if latents.side is None:  # factorized: one table per channel
            streams = _code(values, self._loaded.tables[latents.quality])
        else:  # hyperprior: each latent with the table of its scale, then the hyper-latents per channel
            index = index[i].cpu()
            if self._loaded.ctx64 is None:
                streams = _code(values.reshape(-1, 1), self._loaded.gaussian, index.reshape(-1))
            else:  # the anchors, then the others
                mask = checkerboard(*values.shape[-2:])[0].expand_as(values)
                streams = _code(values[mask][:, None], self._loaded.gaussian, index[mask])
                streams += _code(values[~mask][:, None], self._loaded.gaussian, index[~mask])
            streams += _code(latents.side[i].cpu(), self._loaded.tables[latents.quality])
        header = Header(self.model_id, self.hash, latents.quality, CODER_RANS, rans.PRECISION, latents.height,
                        latents.width, channels, bit_depth, self.latent_shapes(latents.height, latents.width), ())
        return pack(header, streams)

    def _model_channels(self, x, channels):
        """The [1, 3, H, W] image ``x`` as the model takes it: a one-channel (grey) model codes grey images."""
        if self.model.channels == 1:
            if channels != 1:
                raise ValueError(f"{self.model_id} codes grey images (a one-channel model); got a colour image: "
                                 f"convert it first, e.g. img.convert('L')")
            return x[:, :1]
        return x

    def reconstruct(self, image) -> np.ndarray:
        """What ``decompress(compress(image))`` returns, computed on the encoder's side."""
        rgb, channels, _ = to_rgb_array(image)
        x = self._model_channels(torch.from_numpy(np.require(rgb, requirements="W")).permute(2, 0, 1)[None], channels)
        return _finish(self.decode(self.encode(x))[0], channels, "numpy")

    def decompress(self, data, output: str = "numpy", max_pixels: int = MAX_PIXELS):
        """The image of a .fae file: an H x W x 3 (grey: H x W x 1) uint8 array, or with
        ``output="tensor"`` a C x H x W uint8 tensor. CodecError for any damaged or foreign file."""
        if output not in ("numpy", "tensor"):
            raise ValueError(f"decompress: output must be 'numpy' or 'tensor', got {output!r}")
        header, latents, means = self._read(data, max_pixels)
        with torch.inference_mode():
            out = self._synthesize(latents, means, torch.uint8)
        return _finish(out[0], header.channels, output)

    def decompress_batch(self, files, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
        """uint8 [B, 3, H, W] images (on the codec's device) of .fae files of one size and
        quality: entropy decoding file by file, then one batched synthesis. Grey files come back
        with three equal channels (``decompress`` returns them as one)."""
        if isinstance(files, (bytes, bytearray, memoryview, str)):
            raise TypeError(f"decompress_batch: expected a list of .fae files' bytes, got one "
                            f"{type(files).__name__} (decompress reads one file)")
        read = [self._read(data, max_pixels) for data in files]
        if not read:
            raise ValueError("decompress_batch: no files")
        first = read[0][1]
        for k, (_, latents, _) in enumerate(read):
            if (latents.quality, latents.height, latents.width) != (first.quality, first.height, first.width):
                raise ValueError(f"decompress_batch: file {k} is {latents.height} x {latents.width} at quality "
                                 f"{latents.quality}, file 0 {first.height} x {first.width} at quality "
                                 f"{first.quality}; a batch needs one size and quality")
        values = torch.cat([latents.values for _, latents, _ in read])
        means = None if read[0][2] is None else torch.cat([m for _, _, m in read])
        with torch.inference_mode():
            return self._synthesize(Latents(values, first.quality, first.height, first.width), means, torch.uint8)

    def _read(self, data, max_pixels):
        """(header, Latents of one image, the latents' means or None) of a .fae file; CodecError
        for any damaged or foreign file."""
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        header, streams = unpack(data)
        if header.model_id != self.model_id or header.model_hash != self.hash:
            if header.model_id == self.model_id:
                hint = "a model of the same name with other weights made it: decode it with those weights"
            elif header.model_id in shipped_models():
                hint = f"decode it with load_codec(model={header.model_id!r}) or --model {header.model_id}"
            else:
                hint = (f"{header.model_id!r} is not shipped in this package: decode it with that model's weights "
                        f"file, load_codec(weights=FILE) or --weights FILE")
            raise CodecError(f"model hash mismatch: the file was made with model {header.model_id!r} "
                             f"(hash {header.model_hash.hex()}), this codec is {self.model_id!r} "
                             f"(hash {self.hash.hex()}); {hint}")
        if header.precision != rans.PRECISION:
            raise CodecError(f"bad header: coder precision {header.precision}, this model's tables have {rans.PRECISION}")
        if header.quality > self.model.qualities:
            raise CodecError(f"bad header: quality {header.quality} is not one of this model's 1..{self.model.qualities}")
        if header.height * header.width > max_pixels:
            raise CodecError(f"image of {header.height} x {header.width} pixels is larger than max_pixels={max_pixels}")
        expected = self.latent_shapes(header.height, header.width)
        if header.latent_shapes != expected or len(streams) != self._stream_count(expected):
            raise CodecError(f"corrupt .fae file: latent shapes {header.latent_shapes} and {len(streams)} streams, "
                             f"expected {expected} and {self._stream_count(expected)} for a {header.height} x "
                             f"{header.width} image")
        tables = self._loaded.tables[header.quality]
        means = side = None
        if len(expected) == 1:
            values = _decode(streams[0], streams[1], expected[0], tables)
        elif self._loaded.ctx64 is None:
            (m, h, w), z_shape = expected
            side = _decode(streams[2], streams[3], z_shape, tables)[None]
            with torch.inference_mode():
                means, scales, _ = self._entropy(side)
                means = means.float()
            values = _decode(streams[0], streams[1], (m * h * w, 1), self._loaded.gaussian,
                             self._index(scales).cpu().reshape(-1)).reshape(m, h, w)
        else:  # checkerboard: the anchors, whose values give the others' means and scales, then the others
            (m, h, w), z_shape = expected
            side = _decode(streams[4], streams[5], z_shape, tables)[None]
            mask = checkerboard(h, w)[0].expand(m, h, w)
            count = int(mask.sum())

            def anchors(means, scales):
                out = torch.zeros(m, h, w, dtype=torch.int32)
                out[mask] = _decode(streams[0], streams[1], (count, 1), self._loaded.gaussian,
                                    self._index(scales)[0].cpu()[mask]).reshape(-1)
                return out[None]

            with torch.inference_mode():
                means, scales, values = self._entropy(side, anchors)
                values = values[0]
                values[~mask] = _decode(streams[2], streams[3], (m * h * w - count, 1), self._loaded.gaussian,
                                        self._index(scales)[0].cpu()[~mask]).reshape(-1)
                means = means.float()
        return header, Latents(values[None], header.quality, header.height, header.width, side), means


def _code(values: torch.Tensor, tables: tuple, index: torch.Tensor = None) -> list:
    """[rANS stream, escape stream] of integer ``values`` [rows, ...]; row r is coded with table
    ``index[r]`` (default: table r)."""
    cdfs, offsets, sizes = tables[:3]
    if index is None:
        index = torch.arange(cdfs.shape[0], dtype=torch.int32)
    values = values.reshape(values.shape[0], -1)
    symbols, escaped = to_symbols(values, offsets[index], sizes[index])
    return [rans.encode(symbols, cdfs, index), pack_varints(escaped)]


def _decode(stream: bytes, escapes: bytes, shape: tuple, tables: tuple, index: torch.Tensor = None) -> torch.Tensor:
    """Inverse of _code: int32 values of ``shape`` (rows first); CodecError for a corrupt stream."""
    cdfs, offsets, sizes = tables[:3]
    if index is None:
        index = torch.arange(cdfs.shape[0], dtype=torch.int32)
    rows, length = shape[0], math.prod(shape[1:])
    try:
        symbols = rans.decode(stream, cdfs, index, length, rans.PRECISION)
    except ValueError as e:
        raise CodecError(f"corrupt .fae file: {e}") from None
    escaped = unpack_varints(escapes, limit=rows * length)
    values = from_symbols(symbols, escaped, offsets[index], sizes[index])
    if values.numel() and values.abs().max() > 1 << 20:
        raise CodecError("corrupt .fae file: a latent value is out of range")
    return values.to(torch.int32).reshape(shape)


def _finish(out: torch.Tensor, channels: int, output: str):
    """Decoded [3, H, W] uint8 -> the caller's form; grey images back to one channel."""
    out = out.cpu()
    if channels == 1 and out.shape[0] == 3:
        out = (out.to(torch.int32).sum(0, keepdim=True) + 1).div(3, rounding_mode="floor").to(torch.uint8)
    if output == "tensor":
        return out
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())
