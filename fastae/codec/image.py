"""Image compression with a learned codec: ``load_codec``, ``Codec.compress`` / ``decompress``,
batched ``encode`` / ``decode``.

    codec = fastae.load_codec(quality=4)          # the pretrained model shipped in the package
    data = codec.compress("kodim01.png")          # bytes of a .fae file
    rgb = codec.decompress(data)                  # H x W x 3 uint8 array

Inputs: a path, a PIL image, an H x W x 3 (or H x W, H x W x 1) uint8/uint16 array, or a
3 x H x W (or 1 x H x W, H x W) tensor, uint8 or float in [0, 1]. Any size from 1 x 1: the image
is padded (edge replicated) to a multiple of 16 and cropped back after decoding.

Channel policy: grey images are coded through the RGB model and decoded back to one channel
(``decompress`` returns H x W x 1); palette and CMYK images are converted to RGB; an alpha
channel that is fully opaque is dropped, any other alpha is rejected (ValueError: fastae does not
code transparency; flatten it first, e.g. ``img.convert("RGB")``). 16-bit images are reduced to
8 bits (the header records the original depth; the decoded image is 8-bit).
"""

import functools
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from fastae._io import atomic_path
from fastae.codec import rans
from fastae.codec.format import CODER_RANS, CodecError, Header, pack, unpack
from fastae.codec.tables import check_tables, from_symbols, pack_varints, tables_from_pmf, to_symbols, unpack_varints
from fastae.models.codec import ImageCodec

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "fastae-factorized-v1"
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


@torch.no_grad()
def derive_tables(model: ImageCodec) -> dict:
    """The integer tables of every quality's entropy model: {"tables.q{q}.cdfs" / ".offsets" / ".sizes"}."""
    support = torch.arange(-_SUPPORT, _SUPPORT + 1)
    out = {}
    for q, prior in enumerate(model.priors, start=1):
        pmf = prior.pmf(support.to(next(prior.parameters()).device)).cpu().numpy()
        cdfs, offsets, sizes = tables_from_pmf(pmf, support.numpy())
        out[f"tables.q{q}.cdfs"] = torch.from_numpy(cdfs)
        out[f"tables.q{q}.offsets"] = torch.from_numpy(offsets)
        out[f"tables.q{q}.sizes"] = torch.from_numpy(sizes)
    return out


def export_codec(model: ImageCodec, path, model_id: str = DEFAULT_MODEL) -> Path:
    """Write ``model`` with its derived integer tables to one safetensors file (atomically)."""
    import json

    model = model.cpu().eval()
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
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


def _read_model_file(path, device) -> _Loaded:
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codec weights {path} not found")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "model_id" not in meta or "config" not in meta:
        raise ValueError(f"{path} is not a fastae codec file (its metadata lacks model_id/config)")
    tensors = load_file(str(path))
    model = ImageCodec(**json.loads(meta["config"]))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    tables = {}
    for q in range(1, model.qualities + 1):
        cdfs, offsets, sizes = (tensors[f"tables.q{q}.{k}"] for k in ("cdfs", "offsets", "sizes"))
        check_tables(cdfs, offsets, sizes)
        tables[q] = (cdfs, offsets, sizes, torch.arange(cdfs.shape[0], dtype=torch.int32))
    # channels_last: oneDNN's convolutions run ~1.3x faster on it than on NCHW (measured on CPU).
    model = model.to(device, memory_format=torch.channels_last).eval()
    return _Loaded(model, meta["model_id"], model_hash(tensors), tables)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, device: str) -> _Loaded:
    return _read_model_file(path, device)


def shipped_models() -> list:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))


def load_codec(quality: int = 4, model: str = DEFAULT_MODEL, device="cpu", weights=None) -> "Codec":
    """The pretrained codec ``model`` (shipped in the package) at ``quality`` (1 = smallest files,
    8 = best images). ``weights``: a file written by ``export_codec`` instead of a shipped model."""
    if weights is None:
        path = WEIGHTS_DIR / f"{model}.safetensors"
        if not path.is_file():
            raise ValueError(f"load_codec: unknown model {model!r}; shipped models: {shipped_models()}")
    else:
        path = Path(weights)
    device = torch.device(device)
    loaded = _load_cached(str(path.resolve()), str(device))
    return Codec(loaded, quality)


# ---------------------------------------------------------------------------------------------- inputs


def _to_8bit(a: np.ndarray) -> np.ndarray:
    """16-bit values 0..65535 to the nearest 8-bit value (v / 257, rounded)."""
    return ((a.astype(np.int64) + 128) // 257).astype(np.uint8)


def _array_from_pil(img: Image.Image):
    """(H x W x 3 uint8 array, channels, bit depth) following the channel policy of the module docstring."""
    bit_depth = 8
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"image of mode {mode!r} has values outside 0..65535; fastae codes 8 or 16-bit images")
        arr = _to_8bit(arr)
        return np.repeat(arr[:, :, None], 3, axis=2), 1, 16
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"))
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
    return np.array(img.convert("RGB")), 3, bit_depth


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
        path = Path(image)
        try:
            with Image.open(path) as img:
                img.load()
                return _array_from_pil(img)
        except (Image.UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise ValueError(f"{path}: not an image fastae can read ({e})") from None
    if isinstance(image, Image.Image):
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
    quality and the original image size (every image of a batch has the same size)."""
    values: torch.Tensor
    quality: int
    height: int
    width: int


class Codec:
    """A learned image codec at one quality; made by ``fastae.load_codec``. Decompresses files of any
    quality its model serves."""

    def __init__(self, loaded: _Loaded, quality: int):
        self._loaded = loaded
        self.model = loaded.model
        self.model._check_quality(quality)
        self.quality = quality
        self.model_id = loaded.model_id
        self.hash = loaded.hash
        self.device = next(self.model.parameters()).device

    def __repr__(self):
        return f"Codec(model={self.model_id!r}, quality={self.quality}, device={str(self.device)!r})"

    def with_quality(self, quality: int) -> "Codec":
        return Codec(self._loaded, quality)

    # -- batched transforms (GPU friendly) ------------------------------------------------------

    def _pad(self, x):
        h, w = x.shape[-2:]
        s = ImageCodec.stride
        ph, pw = (-h) % s, (-w) % s
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    @torch.inference_mode()
    def encode(self, batch, quality: int = None) -> Latents:
        """Rounded latents of ``batch``: [B, 3, H, W] uint8, or float in [0, 1]."""
        quality = self.quality if quality is None else quality
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != self.model.channels:
            raise ValueError(f"encode: expected a [B, {self.model.channels}, H, W] tensor, got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        x = batch.to(self.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        h, w = x.shape[-2:]
        y = self.model.analysis(self._pad(x).contiguous(memory_format=torch.channels_last), quality)
        return Latents(torch.round(y).to(torch.int32), quality, h, w)

    @torch.inference_mode()
    def decode(self, latents: Latents, dtype=torch.uint8) -> torch.Tensor:
        """Images [B, 3, H, W] from ``latents``: uint8 (default) or float in [0, 1]."""
        y = latents.values.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        x = self.model.synthesis(y, latents.quality)
        x = x[:, :, :latents.height, :latents.width].clamp(0, 1)
        return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)

    # -- files ------------------------------------------------------------------------------------

    def compress(self, image) -> bytes:
        """The bytes of a .fae file holding ``image`` (see the module docstring for accepted inputs)."""
        rgb, channels, bit_depth = to_rgb_array(image)
        return self._compress_array(rgb, channels, bit_depth)

    def _compress_array(self, rgb, channels, bit_depth):
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        latents = self.encode(x)
        values = latents.values[0].cpu()
        m, h, w = values.shape
        cdfs, offsets, sizes, index = self._loaded.tables[self.quality]
        symbols, escaped = to_symbols(values.reshape(m, h * w), offsets, sizes)
        stream = rans.encode(symbols, cdfs, index)
        header = Header(self.model_id, self.hash, self.quality, CODER_RANS, rans.PRECISION, latents.height,
                        latents.width, channels, bit_depth, ((m, h, w),), ())
        return pack(header, [stream, pack_varints(escaped)])

    def reconstruct(self, image) -> np.ndarray:
        """What ``decompress(compress(image))`` returns, computed on the encoder's side."""
        rgb, channels, _ = to_rgb_array(image)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        return _finish(self.decode(self.encode(x))[0], channels, "numpy")

    def decompress(self, data, output: str = "numpy", max_pixels: int = MAX_PIXELS):
        """The image of a .fae file: an H x W x 3 (grey: H x W x 1) uint8 array, or with
        ``output="tensor"`` a C x H x W uint8 tensor. CodecError for any damaged or foreign file."""
        if output not in ("numpy", "tensor"):
            raise ValueError(f"decompress: output must be 'numpy' or 'tensor', got {output!r}")
        header, streams = unpack(data)
        if header.model_id != self.model_id or header.model_hash != self.hash:
            raise CodecError(f"model hash mismatch: the file was made with model {header.model_id!r} "
                             f"(hash {header.model_hash.hex()}), this codec is {self.model_id!r} "
                             f"(hash {self.hash.hex()})")
        if header.precision != rans.PRECISION:
            raise CodecError(f"bad header: coder precision {header.precision}, this model's tables have {rans.PRECISION}")
        if header.quality > self.model.qualities:
            raise CodecError(f"bad header: quality {header.quality} is not one of this model's 1..{self.model.qualities}")
        if header.height * header.width > max_pixels:
            raise CodecError(f"image of {header.height} x {header.width} pixels is larger than max_pixels={max_pixels}")
        s = ImageCodec.stride
        expected = ((self.model.M, math.ceil(header.height / s), math.ceil(header.width / s)),)
        if header.latent_shapes != expected or len(streams) != 2:
            raise CodecError(f"corrupt .fae file: latent shapes {header.latent_shapes} and {len(streams)} streams, "
                             f"expected {expected} and 2 for a {header.height} x {header.width} image")
        m, h, w = expected[0]
        cdfs, offsets, sizes, index = self._loaded.tables[header.quality]
        try:
            symbols = rans.decode(streams[0], cdfs, index, h * w, header.precision)
        except ValueError as e:
            raise CodecError(f"corrupt .fae file: {e}") from None
        escaped = unpack_varints(streams[1], limit=m * h * w)
        values = from_symbols(symbols, escaped, offsets, sizes).reshape(1, m, h, w)
        if values.abs().max() > 1 << 20:
            raise CodecError("corrupt .fae file: a latent value is out of range")
        out = self.decode(Latents(values.to(torch.int32), header.quality, header.height, header.width))[0]
        return _finish(out, header.channels, output)


def _finish(out: torch.Tensor, channels: int, output: str):
    """Decoded [3, H, W] uint8 -> the caller's form; grey images back to one channel."""
    out = out.cpu()
    if channels == 1:
        out = (out.to(torch.int32).sum(0, keepdim=True) + 1).div(3, rounding_mode="floor").to(torch.uint8)
    if output == "tensor":
        return out
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())
