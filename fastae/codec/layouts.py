"""What each kind of codec model writes into a .fae file: which latents, coded with which entropy
model, in which streams and in which order.

=============  ===============================  ===============================================
kind           latent shapes (header order)     streams
=============  ===============================  ===============================================
factorized     y [M, h, w]                      y (a table per channel), its escapes
hyperprior     y [M, h, w], z [N, h/4, w/4]     y (a table per latent, chosen by its predicted
                                                scale), its escapes; z (a table per channel),
                                                its escapes
checkerboard   as hyperprior                    the anchors of y (i + j even, in [M, h, w]
                                                order), their escapes; the other latents of y,
                                                theirs; z, its escapes
=============  ===============================  ===============================================

h and w are the image's height and width padded to the model's stride, over 16. A hyperprior's
y are coded as the latents minus their predicted means, rounded; the means and scales come from
``fastae.codec.parameters`` (float64), the tables from the model's entropy models, whose integer
tables were read with its weights. ``Codec`` (fastae.codec.api) asks the layout of its model's
kind (``layout_for``) and tests no kind itself.
"""

import functools
import math

import torch

from fastae.codec.parameters import entropy_parameters
from fastae.codec.refine import needs_side_search, search_side
from fastae.models.codec import checkerboard


class FactorizedLayout:
    """The layout of a FactorizedCodec: the rounded latents y, one table per channel."""

    kind = "factorized"
    streams = 2

    def __init__(self, model, device):
        self.model, self.device = model, torch.device(device)

    def latent_shapes(self, height: int, width: int) -> tuple:
        """Shapes of the coded latents of an image of ``height`` x ``width``."""
        s, ls = self.model.stride, self.model.latent_stride
        h, w = math.ceil(height / s) * s // ls, math.ceil(width / s) * s // ls
        return ((self.model.M, h, w),)

    def quantize(self, y, z, quality: int, side_search: bool, precision: str = "float32"):
        """(values int32 [B, M, h, w], side, index) of the analysis' latents ``y``: side and index
        None (``z``, ``side_search`` and ``precision`` are for models with hyper-latents)."""
        return torch.round(y).to(torch.int32), None, None

    def dequantize(self, values, side) -> torch.Tensor:
        """float32 latents [B, M, h, w] on the codec's device, as the synthesis reads them."""
        return values.to(self.device, torch.float32)

    def to_streams(self, latents, index, i: int) -> list:
        """The streams of image ``i`` of ``latents`` (``index``: what ``quantize`` gave)."""
        return self.model.priors[latents.quality - 1].compress(latents.values[i].cpu())

    def from_streams(self, streams, quality: int, shapes) -> tuple:
        """(values [1, M, h, w], side or None, float32 latents for the synthesis) of one file's
        ``streams``, whose latent shapes ``shapes`` were checked; CodecError for corrupt streams."""
        values = self.model.priors[quality - 1].decompress(streams[0], streams[1], shapes[0])[None]
        return values, None, self.dequantize(values, None)


class HyperpriorLayout(FactorizedLayout):
    """The layout of a HyperpriorCodec: y minus its predicted means, each latent with the table of
    its predicted scale, then the hyper-latents z, one table per channel."""

    kind = "hyperprior"
    streams = 4

    def __init__(self, model, device):
        super().__init__(model, device)
        self.gaussian = model.gaussian
        self.parameters = entropy_parameters(model, device)

    def latent_shapes(self, height: int, width: int) -> tuple:
        ((m, h, w),) = super().latent_shapes(height, width)
        r = self.model.stride // self.model.latent_stride
        return (m, h, w), (self.model.N, h // r, w // r)

    def quantize(self, y, z, quality: int, side_search: bool, precision: str = "float32"):
        """(values, side, index): the latents minus their means, rounded, int32 [B, M, h, w], the
        rounded hyper-latents int32 [B, N, h/4, w/4] (of ``z``, or of ``h_a(y)`` when ``z`` is None),
        and each latent's table int32 [B, M, h, w]. With ``side_search`` the images whose first
        hyper-latents predict some latents very badly get searched ones (fastae.codec.refine), the
        search's convolutions in ``precision``."""
        z = self.model.h_a(y) if z is None else z
        side = torch.round(z).to(torch.int32)
        values, scales = self._values(y, side)
        if side_search:
            redo = needs_side_search(values, scales)
            if redo.any():
                found = torch.round(search_side(self.model, y[redo], z[redo], quality,
                                                precision=precision)).to(torch.int32)
                side[redo] = found
                values[redo], scales[redo] = self._values(y[redo], found)
        return values.to(torch.int32), side, self.gaussian.index(scales)

    def _values(self, y, side):
        """(the latents ``y`` minus their means, rounded; their scales), both predicted from ``side``."""
        means, scales, _ = self.parameters(side)
        return torch.round(y - means.float()), scales

    def dequantize(self, values, side) -> torch.Tensor:
        means = self.parameters(side, lambda m, s: values)[0].float()
        return values.to(self.device, torch.float32) + means

    def to_streams(self, latents, index, i: int) -> list:
        values, index = latents.values[i].cpu(), index[i].cpu()
        return self._latent_streams(values, index) + \
            self.model.priors[latents.quality - 1].compress(latents.side[i].cpu())

    def _latent_streams(self, values, index) -> list:
        return self.gaussian.compress(values, index)

    def from_streams(self, streams, quality: int, shapes) -> tuple:
        (m, h, w), z_shape = shapes
        side = self.model.priors[quality - 1].decompress(streams[-2], streams[-1], z_shape)[None]
        with torch.inference_mode():
            means, values = self._decode_latents(streams, side, (m, h, w))
            y_hat = values[None].to(self.device, torch.float32) + means.float()
        return values[None], side, y_hat

    def _decode_latents(self, streams, side, shape):
        """(float64 means [1, M, h, w], int32 values [M, h, w]) of the latent streams given ``side``."""
        means, scales, _ = self.parameters(side)
        index = self.gaussian.index(scales).cpu().reshape(-1)
        return means, self.gaussian.decompress(streams[0], streams[1], index).reshape(shape)


class CheckerboardLayout(HyperpriorLayout):
    """The layout of a CheckerboardCodec: the anchors of y, whose decoded values give the other
    latents' means and scales, then those others, then z."""

    kind = "checkerboard"
    streams = 6

    def _values(self, y, side):
        y = y.double()  # the anchors' values must be those the context was computed from: all in float64
        means, scales, _ = self.parameters(side, lambda m, s: torch.round(y - m))
        return torch.round(y - means), scales

    def _latent_streams(self, values, index) -> list:
        anchors, others = _halves(tuple(values.shape))
        v, i = values.reshape(-1), index.reshape(-1)
        return self.gaussian.compress(v[anchors], i[anchors]) + self.gaussian.compress(v[others], i[others])

    def _decode_latents(self, streams, side, shape):
        anchors, others = _halves(tuple(shape))
        flat = torch.zeros(math.prod(shape), dtype=torch.int32)

        def decode_anchors(means, scales):
            flat[anchors] = self.gaussian.decompress(streams[0], streams[1], self._index(scales, anchors))
            return flat.reshape(shape)[None]

        means, scales, values = self.parameters(side, decode_anchors)
        values = values[0].reshape(-1)
        values[others] = self.gaussian.decompress(streams[2], streams[3], self._index(scales, others))
        return means, values.reshape(shape)

    def _index(self, scales, positions):
        """The tables (CPU int32) of the latents at flat ``positions`` of [M, h, w], from ``scales``
        [1, M, h, w]: only those searched for, half the work of indexing every latent."""
        return self.gaussian.index(scales[0].reshape(-1)[positions.to(scales.device)]).cpu()


def _halves(shape: tuple) -> tuple:
    """Flat positions (int64, ascending) of the anchors of a [M, h, w] latent tensor and of the
    others; kept for a few recent shapes of up to 4M latents (8 bytes each: 32 MB at most)."""
    return _halves_cached(shape) if math.prod(shape) <= 1 << 22 else _find_halves(shape)


def _find_halves(shape: tuple) -> tuple:
    mask = checkerboard(*shape[-2:])[0].expand(shape).reshape(-1)
    return mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)


_halves_cached = functools.lru_cache(maxsize=4)(_find_halves)


LAYOUTS = {cls.kind: cls for cls in (FactorizedLayout, HyperpriorLayout, CheckerboardLayout)}


def layout_for(model, device):
    """The layout of ``model``'s kind, coding with its entropy models on ``device``."""
    return LAYOUTS[model.kind](model, device)
