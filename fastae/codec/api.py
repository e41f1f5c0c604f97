"""The image codec: ``load_codec``, ``Codec.compress`` / ``decompress`` (bytes <-> images), batched
``encode`` / ``decode``.

    codec = fastae.load_codec(quality=4)          # the pretrained model shipped in the package
    data = codec.compress("kodim01.png")          # bytes of a .fae file
    rgb = codec.decompress(data)                  # H x W x 3 uint8 array

Inputs: a path, a PIL image, an H x W x 3 (or H x W, H x W x 1) uint8/uint16 array, or a
3 x H x W (or 1 x H x W, H x W) tensor, uint8 or float in [0, 1] (fastae.codec.image says how each
becomes pixels: modes, bit depth, alpha, EXIF orientation, ICC profiles). Any size from 1 x 1: the
image is padded (edge replicated) to a multiple of the model's stride (64 for a hyperprior model,
16 for a factorized one) and cropped back after decoding; large images run in bands
(fastae.codec.bands). What the file holds for each model kind is in fastae.codec.layouts, the
file format in fastae.codec.format, the weights file in fastae.codec.model_file.
"""

import dataclasses
import functools
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastae._device import cpu_has_bf16, resolve_device
from fastae.codec import DEFAULT_MODEL, bands, model_file, rans
from fastae.codec.format import CODER_RANS, CodecError, Header, pack, remember_model, unpack
from fastae.codec.image import to_rgb_array
from fastae.codec.layouts import layout_for
from fastae.codec.refine import check_refine, refine_latents
from fastae.models.codec import CodecModel
from fastae.nn.subpixel import SubpixelConvTranspose2d

MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit; decoding refuses larger images
#: Precisions of the analysis and synthesis transforms. They change pixels (and, in the analysis, a
#: few latents), never what a decoder reads: the entropy path does not depend on them.
PRECISIONS = ("auto", "float32", "bfloat16")


def _check_precision(precision, device) -> str:
    """``precision`` resolved for ``device``: "auto" is bfloat16 where the hardware computes it
    natively (a GPU with bf16, a CPU with AVX512-BF16/AMX), else float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"load_codec: precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_has_bf16()
    return "bfloat16" if native else "float32"


@dataclass
class _Loaded:
    model: CodecModel
    model_id: str
    hash: bytes
    layout: object  # the FactorizedLayout (or subclass) of the model's kind: fastae.codec.layouts
    fast_synthesis: torch.nn.Module  # g_s as the bfloat16 path runs it (see _fast_synthesis)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, device: str) -> _Loaded:
    model, model_id, model_hash = model_file.read_model_file(path)
    remember_model(model_hash, model_id)  # names the model of version 2 files in messages
    layout = layout_for(model, device)  # first: its float64 networks are copied from the contiguous CPU weights
    # channels_last: oneDNN's convolutions run ~1.3x faster on it than on NCHW (measured on CPU).
    model = model.to(device, memory_format=torch.channels_last).eval()
    return _Loaded(model, model_id, model_hash, layout, _fast_synthesis(model.g_s, torch.device(device)))


def _fast_synthesis(g_s: torch.nn.Sequential, device) -> torch.nn.Module:
    """``g_s`` for the bfloat16 path: on a CPU its last layer, a transposed convolution to a few
    channels, as a convolution and a pixel shuffle (fastae.nn.subpixel; measured 2.5x faster in
    oneDNN bf16 for 96 -> 3 channels, while for 96 -> 96 the transposed one is 1.6x faster),
    computing the pixels minus 0.5 in bf16 and adding 0.5 in fp32, which halves the bf16 rounding
    of the brighter pixels. Pixels within the bf16 path's rounding of the fp32 path's."""
    last = g_s[-1]
    if device.type != "cpu" or not isinstance(last, torch.nn.ConvTranspose2d) or last.out_channels > 16:
        return g_s
    try:
        fast = SubpixelConvTranspose2d(last, center=0.5)
    except ValueError:  # another kernel or stride: keep it as it is
        return g_s
    return torch.nn.Sequential(*g_s[:-1], fast.to(memory_format=torch.channels_last))


def load_codec(quality: Optional[int] = None, model: str = DEFAULT_MODEL, device="cpu", weights=None,
               refine: int = 0, side_search: bool = True, precision: str = "auto") -> "Codec":
    """The pretrained codec ``model`` (shipped in the package) at ``quality`` (1 = smallest files,
    8 = best images; None: 4, or the model's highest quality if it has fewer). ``weights``: a file
    written by ``export_codec`` instead of a shipped model.
    ``refine``: steps of encoder-side latent refinement per image (0: off; see fastae.codec.refine),
    slower compression for a lower rate-distortion cost, files any decoder of the model reads.
    ``side_search``: a hyperprior model searches other hyper-latents for an image whose first ones
    predict some latents very badly (``fastae.codec.refine.search_side``); False codes the
    analysis' own.
    ``precision`` of the analysis and synthesis transforms: "bfloat16" (autocast; about twice as
    fast where the hardware computes it natively), "float32" (the exact path: a file decodes to
    exactly the pixels that earlier fastae versions decoded), or "auto" (the default: bfloat16
    where native, else float32). Files are decodable whatever the precision of either side."""
    check_refine(refine)
    if weights is None:
        path = model_file.WEIGHTS_DIR / f"{model}.safetensors"
        if not path.is_file():
            raise ValueError(f"load_codec: unknown model {model!r}; shipped models: {model_file.shipped_models()}")
    else:
        path = Path(weights)
    device = resolve_device(device, "load_codec: device")
    precision = _check_precision(precision, device)
    loaded = _load_cached(str(path.resolve()), str(device))
    if quality is None:
        quality = min(4, loaded.model.qualities)
    return Codec(loaded, quality, refine, side_search, precision)


class CodecFactory:
    """A picklable zero-argument callable returning ``load_codec(**kwargs)``, for the code that
    makes a codec per worker (fastae.codec.folder, fastae.datasets). It makes one at once, so bad
    arguments fail before any work, and hands that one out again in this process; a pickled copy
    (a worker process, a Ray actor) makes its own."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self._codec = load_codec(**kwargs)

    def __call__(self):
        if self._codec is None:
            self._codec = load_codec(**self.kwargs)
        return self._codec

    def __getstate__(self):
        return {"kwargs": self.kwargs, "_codec": None}


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

    def __init__(self, loaded: _Loaded, quality: int, refine: int = 0, side_search: bool = True,
                 precision: str = "auto"):
        self._loaded = loaded
        self.model = loaded.model
        self.model._check_quality(quality)
        self.quality = int(quality)
        self.refine = check_refine(refine)
        if not isinstance(side_search, bool):
            raise ValueError(f"side_search must be True or False, got {side_search!r}")
        self.side_search = side_search
        self.precision = _check_precision(precision, torch.device(next(loaded.model.parameters()).device))
        self.model_id = loaded.model_id
        self.hash = loaded.hash
        self.layout = loaded.layout  # what the model's kind codes, and how: fastae.codec.layouts
        self.device = next(self.model.parameters()).device

    def __repr__(self):
        refine = f", refine={self.refine}" if self.refine else ""
        search = "" if self.side_search else ", side_search=False"
        return (f"Codec(model={self.model_id!r}, quality={self.quality}{refine}{search}, "
                f"precision={self.precision!r}, device={str(self.device)!r})")

    def with_quality(self, quality: int) -> "Codec":
        return Codec(self._loaded, quality, self.refine, self.side_search, self.precision)

    def with_precision(self, precision: str) -> "Codec":
        """The same model and settings with the transforms in ``precision`` (see ``load_codec``)."""
        return Codec(self._loaded, self.quality, self.refine, self.side_search, precision)

    def _transforms(self):
        """The context the analysis and synthesis run in: bf16 autocast, or for "float32" the
        reference formulas of the fused ops (GDN), which give the pixels of earlier versions."""
        if self.precision == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        from fastae.ops import backend

        return backend("torch")

    # -- batched transforms (GPU friendly) ------------------------------------------------------

    def _pad(self, x):
        h, w = x.shape[-2:]
        s = self.model.stride
        ph, pw = (-h) % s, (-w) % s
        return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x

    def latent_shapes(self, height: int, width: int) -> tuple:
        """Shapes of the coded latents of an image of ``height`` x ``width`` (y, then z for a hyperprior)."""
        return self.layout.latent_shapes(height, width)

    @torch.inference_mode()
    def encode(self, batch, quality: int = None) -> Latents:
        """Rounded latents of ``batch``: [B, 3, H, W] uint8, or float in [0, 1] (refined first when
        the codec was loaded with ``refine``; a hyperprior's hyper-latents searched for the images
        that need it unless it was loaded with ``side_search=False``)."""
        return self._encode(batch, quality)[0]

    def _check_batch(self, batch, name="encode"):
        if not isinstance(batch, torch.Tensor) or batch.dim() != 4 or batch.shape[1] != self.model.channels:
            raise ValueError(f"{name}: expected a [B, {self.model.channels}, H, W] tensor, got "
                             f"{getattr(batch, 'shape', type(batch).__name__)}")
        if min(batch.shape) == 0:
            raise ValueError(f"{name}: expected a batch of at least one image of at least 1 x 1 pixels, got "
                             f"{tuple(batch.shape)}")
        if batch.dtype != torch.uint8 and not batch.is_floating_point():
            raise TypeError(f"{name}: expected a uint8 batch (0..255) or a float one in [0, 1], got dtype {batch.dtype}")

    def _encode(self, batch, quality):
        quality = self.quality if quality is None else quality
        self._check_batch(batch)
        x = batch.to(self.device)
        if x.is_floating_point() and not bool(((x >= 0) & (x <= 1)).all()):  # also catches NaN
            raise ValueError("encode: a float batch must hold finite values in [0, 1] (for 0..255 pass uint8)")
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        h, w = x.shape[-2:]
        x = self._pad(x).contiguous(memory_format=torch.channels_last)
        z = None
        with self._transforms():
            if self.refine:  # refinement optimises the latents of the whole image in one graph: no bands
                y, z = refine_latents(self.model, x, self.model.analysis(x, quality).float(), quality, self.refine,
                                      h, w)
            else:
                y = self._banded_analysis(x, quality)
        # refinement has already chosen the hyper-latents for its latents: no side search after it
        values, side, index = self.layout.quantize(y, z, quality, self.side_search and not self.refine,
                                                   self.precision)
        return Latents(values, quality, h, w, side), index

    @torch.inference_mode()
    def decode(self, latents: Latents, dtype=torch.uint8) -> torch.Tensor:
        """Images [B, 3, H, W] from ``latents``: uint8 (default) or float in [0, 1]."""
        self._check_latents(latents, dtype)
        y_hat = self.layout.dequantize(latents.values, latents.side)
        return self._synthesize(y_hat, latents.quality, latents.height, latents.width, dtype)

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
        for name, shape in zip(("values", "side"), self.latent_shapes(latents.height, latents.width)):
            t = getattr(latents, name)
            if t is None:
                raise ValueError(f"decode: a {self.model.kind} model needs latents.{name}")
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dim() != 4 \
                    or tuple(t.shape[1:]) != shape or t.shape[0] != latents.values.shape[0] or t.shape[0] == 0:
                raise ValueError(f"decode: latents.{name} must be an integer tensor [B, {', '.join(map(str, shape))}] "
                                 f"for a {latents.height} x {latents.width} image, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")

    def _bands(self, rows: int, width: int) -> list:
        return bands.image_bands(rows, width, self.model.latent_stride)

    def _banded_analysis(self, x, quality):
        """``model.analysis`` of the padded batch ``x``, band by band (fastae.codec.bands)."""
        ls = self.model.latent_stride
        return bands.by_rows(lambda part: self.model.analysis(part.contiguous(memory_format=torch.channels_last),
                                                              quality).float(),
                             (x,), self._bands(x.shape[2] // ls, x.shape[3] // ls), bands.HALO, scale_in=ls)

    def _synthesize(self, y_hat, quality: int, height: int, width: int, dtype):
        """Images [B, C, height, width] of ``dtype`` from the float latents ``y_hat``, band by band."""
        y = y_hat.contiguous(memory_format=torch.channels_last)

        g_s = self._loaded.fast_synthesis if self.precision == "bfloat16" else self.model.g_s

        def finished(part):  # each band's pixels clamped and converted at once: no float image is ever whole
            x = self.model.synthesis(part, quality, g_s).float().clamp(0, 1)  # float32 before rounding to 8 bits
            return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)

        ls = self.model.latent_stride
        with self._transforms():
            x = bands.by_rows(finished, (y,), self._bands(*y.shape[2:]), bands.HALO, scale_out=ls)
        return x[:, :, :height, :width]

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

    def compress_batch(self, batch, batch_size: Optional[int] = None) -> list:
        """The .fae bytes of every image of ``batch``: a [B, 3, H, W] tensor (uint8, or float in
        [0, 1]), or a list of images of any sizes, each anything ``compress`` takes. The images are
        bucketed by their size padded to the model's stride (an image is padded so anyway) and each
        bucket runs batched ``encode``s of at most ``batch_size`` images (None: the whole bucket)
        on the codec's device, then entropy coding image by image. Each file is the one
        ``compress`` writes for that image."""
        _check_batch_size(batch_size)
        if isinstance(batch, torch.Tensor):
            self._check_batch(batch)
            items = [(image[None], self.model.channels, 8) for image in batch]
        else:
            if isinstance(batch, (str, Path, bytes, Image.Image, np.ndarray)):
                raise TypeError(f"compress_batch: expected a [B, 3, H, W] tensor or a list of images, got one "
                                f"{type(batch).__name__} (compress takes one image)")
            items = [self._prepare(image) for image in batch]
        return self._compress_prepared(items, batch_size)

    def _prepare(self, image):
        """``(x [1, C, H, W] uint8 or uint16, channels, bit depth)`` of an image as compress reads it."""
        rgb, channels, bit_depth = to_rgb_array(image)
        x = torch.from_numpy(np.require(rgb, requirements="W")).permute(2, 0, 1)[None]
        return self._model_channels(x, channels), channels, bit_depth

    def _compress_prepared(self, items, batch_size=None) -> list:
        out = [None] * len(items)
        for group in self._buckets([x.shape[-2:] for x, _, _ in items], batch_size):
            x = torch.cat([self._pad(_unit(items[k][0])) for k in group])
            with torch.inference_mode():
                latents, index = self._encode(x, self.quality)
            for i, k in enumerate(group):
                h, w = items[k][0].shape[-2:]
                out[k] = self._pack(dataclasses.replace(latents, height=int(h), width=int(w)), index, i,
                                    items[k][1], items[k][2])
        return out

    def _buckets(self, sizes, batch_size) -> list:
        """Lists of indices of ``sizes`` (H, W) whose sizes padded to the stride are the same, in
        chunks of at most ``batch_size``; in order of first appearance."""
        s = self.model.stride
        buckets = {}
        for k, (h, w) in enumerate(sizes):
            buckets.setdefault((-(-int(h) // s), -(-int(w) // s)), []).append(k)
        step = batch_size or max(len(sizes), 1)
        return [group[i:i + step] for group in buckets.values() for i in range(0, len(group), step)]

    def _pack(self, latents: Latents, index, i: int, channels: int, bit_depth: int) -> bytes:
        """The .fae bytes of image ``i`` of ``latents`` (``index``: what the layout's ``quantize`` gave)."""
        streams = self.layout.to_streams(latents, index, i)
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
        header, latents, y_hat = self._read(data, max_pixels)
        with torch.inference_mode():
            out = self._synthesize(y_hat, latents.quality, latents.height, latents.width, torch.uint8)
        return _finish(out[0], header.channels, output)

    def decompress_many(self, files, output: str = "numpy", batch_size: Optional[int] = None,
                        max_pixels: int = MAX_PIXELS) -> list:
        """What ``decompress`` returns for each of the .fae ``files`` (bytes), in order, of any sizes
        and qualities: entropy decoding file by file, then batched syntheses of at most
        ``batch_size`` files (None: all) of one quality and padded size (the synthesis of a padded
        size is cropped to each file's own). CodecError for a damaged file (none is returned)."""
        if output not in ("numpy", "tensor"):
            raise ValueError(f"decompress_many: output must be 'numpy' or 'tensor', got {output!r}")
        _check_batch_size(batch_size)
        if isinstance(files, (bytes, bytearray, memoryview, str)):
            raise TypeError(f"decompress_many: expected a list of .fae files' bytes, got one "
                            f"{type(files).__name__} (decompress reads one file)")
        read = [self._read(data, max_pixels) for data in files]
        out = [None] * len(read)
        for quality in sorted({latents.quality for _, latents, _ in read}):
            same = [k for k, (_, latents, _) in enumerate(read) if latents.quality == quality]
            for group in self._buckets([(read[k][1].height, read[k][1].width) for k in same], batch_size):
                group = [same[i] for i in group]
                y_hat = torch.cat([read[k][2] for k in group])
                ls = self.model.latent_stride
                with torch.inference_mode():
                    x = self._synthesize(y_hat, quality, y_hat.shape[2] * ls, y_hat.shape[3] * ls, torch.uint8)
                for i, k in enumerate(group):
                    header, latents, _ = read[k]
                    out[k] = _finish(x[i, :, :latents.height, :latents.width], header.channels, output)
        return out

    def decompress_batch(self, files, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
        """uint8 [B, 3, H, W] images (on the codec's device) of .fae files of one size and
        quality: entropy decoding file by file, then one batched synthesis. Grey files come back
        with three equal channels (``decompress`` returns them as one). Files of mixed sizes:
        ``decompress_many``."""
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
        y_hat = torch.cat([y for _, _, y in read])
        with torch.inference_mode():
            return self._synthesize(y_hat, first.quality, first.height, first.width, torch.uint8)

    def _read(self, data, max_pixels):
        """(header, Latents of one image, their float latents for the synthesis) of a .fae file;
        CodecError for any damaged or foreign file."""
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        header, streams = unpack(data)
        if header.model_hash != self.hash or (header.version == 1 and header.model_id != self.model_id):
            if header.model_id is None:  # a version 2 file of a model unknown here
                hint = ("a model this fastae does not know made it (neither shipped nor loaded here): decode it "
                        "with that model's weights file, load_codec(weights=FILE) or --weights FILE")
            elif header.model_id == self.model_id:
                hint = "a model of the same name with other weights made it: decode it with those weights"
            elif header.model_id in model_file.shipped_models():
                hint = f"decode it with load_codec(model={header.model_id!r}) or --model {header.model_id}"
            else:
                hint = (f"{header.model_id!r} is not shipped in this package: decode it with that model's weights "
                        f"file, load_codec(weights=FILE) or --weights FILE")
            made_by = "an unknown model" if header.model_id is None else f"model {header.model_id!r}"
            raise CodecError(f"model hash mismatch: the file was made with {made_by} "
                             f"(hash {header.model_hash.hex()}), this codec is {self.model_id!r} "
                             f"(hash {self.hash.hex()}); {hint}")
        if header.precision != rans.PRECISION:
            raise CodecError(f"bad header: coder precision {header.precision}, this model's tables have {rans.PRECISION}")
        if header.quality > self.model.qualities:
            raise CodecError(f"bad header: quality {header.quality} is not one of this model's 1..{self.model.qualities}")
        if header.height * header.width > max_pixels:
            raise CodecError(f"image of {header.height} x {header.width} pixels is larger than max_pixels={max_pixels}")
        expected = self.latent_shapes(header.height, header.width)
        stored = header.latent_shapes if header.version == 1 else expected  # version 2 does not store them
        if stored != expected or len(streams) != self.layout.streams:
            raise CodecError(f"corrupt .fae file: latent shapes {header.latent_shapes} and {len(streams)} streams, "
                             f"expected {expected} and {self.layout.streams} for a {header.height} x "
                             f"{header.width} image")
        values, side, y_hat = self.layout.from_streams(streams, header.quality, expected)
        return header, Latents(values, header.quality, header.height, header.width, side), y_hat


def _check_batch_size(batch_size):
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")


def _unit(x: torch.Tensor) -> torch.Tensor:
    """A uint8 (0..255) or float (0..1) image batch as float32 in [0, 1], as ``encode`` reads it."""
    return x.float() / 255 if x.dtype == torch.uint8 else x.float()


def _finish(out: torch.Tensor, channels: int, output: str):
    """Decoded [3, H, W] uint8 -> the caller's form; grey images back to one channel."""
    out = out.cpu()
    if channels == 1 and out.shape[0] == 3:
        out = (out.to(torch.int32).sum(0, keepdim=True) + 1).div(3, rounding_mode="floor").to(torch.uint8)
    if output == "tensor":
        return out
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy())
