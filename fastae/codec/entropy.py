"""Entropy models: modules that give the latents' likelihoods in training and code them with integer tables.

    density = FactorizedDensity(channels)       # one learned density per channel (CompressAI's EntropyBottleneck)
    p = density.likelihood(y)                   # training: probability of each value of y [B, C, H, W]
    density.load_tables(density.derive_tables())  # what export_codec derives and load_codec reads back
    streams = density.compress(values)          # int [C, ...] -> [rANS stream, escape stream]
    values = density.decompress(*streams, shape=(C, h, w))

    gaussian = GaussianConditional()            # N(mean, scale) per latent: one table per scale of a fixed ladder
    p = GaussianConditional.likelihood(y, means, scales)
    index = gaussian.index(scales)              # the table of each latent, chosen by its predicted scale
    streams = gaussian.compress(values, index)  # values and index [L]

A model's tables are derived once, when it is exported (``fastae.codec.export_codec``), and stored
with its weights; loading reads them back and checks them, never derives them again, so every
encoder and decoder, on any device, codes with the same integers. An entropy model whose tables
were not loaded refuses to code (there is no ``update()`` to forget).

This module imports only torch, numpy and the codec's leaf modules (rans, tables, format), so that
the codec networks in fastae.models, whose training forward needs the likelihoods, can use it.
"""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastae import _native
from fastae.codec import rans
from fastae.codec.format import CodecError
from fastae.codec.tables import (check_tables, code_lengths, from_symbols, pack_varints, tables_from_pmf, to_symbols,
                                 unpack_varints)

LIKELIHOOD_BOUND = 1e-9
SUPPORT = 1 << 11  # tables are derived over the integers -SUPPORT..SUPPORT
MAX_VALUE = 1 << 20  # a decoded latent beyond this is a corrupt file


class _LowerBound(torch.autograd.Function):
    """max(x, bound) whose gradient still flows where it pushes x up (as in Ballé's GDN)."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp_min(bound)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        pass_through = (x >= ctx.bound) | (grad < 0)
        return grad * pass_through, None


def lower_bound(x: Tensor, bound: float) -> Tensor:
    return _LowerBound.apply(x, bound)


def _support() -> Tensor:
    return torch.arange(-SUPPORT, SUPPORT + 1)


class EntropyModel(nn.Module):
    """What every entropy model shares: integer tables (loaded, never derived, at load) and coding
    rows of integers with them. ``TABLES`` names the tensors of its tables."""

    TABLES = ("cdfs", "offsets", "sizes")

    def __init__(self):
        super().__init__()
        self._tables = None  # plain tensors, not buffers: the state_dict holds weights only, and they stay on the CPU

    @property
    def tables(self) -> dict:
        """{name: tensor} of the loaded tables; RuntimeError when none were loaded."""
        if self._tables is None:
            raise RuntimeError(f"{type(self).__name__} has no integer tables: they are derived when the model is "
                               f"exported (fastae.codec.export_codec) and read with its weights "
                               f"(fastae.load_codec(weights=FILE)); a model fresh from training cannot code")
        return self._tables

    def derive_tables(self) -> dict:
        """{name: tensor} of the tables of the current weights (at export only: a loaded model codes
        with the tables stored beside its weights)."""
        raise NotImplementedError

    def load_tables(self, tables: dict):
        """Code with ``tables`` ({name: tensor}, as ``derive_tables`` gives and a weights file
        stores); ValueError naming what is missing or malformed."""
        missing = [k for k in self.TABLES if k not in tables]
        if missing:
            raise ValueError(f"{type(self).__name__}: the tables lack {missing} (expected {list(self.TABLES)})")
        check_tables(*(tables[k] for k in ("cdfs", "offsets", "sizes")))
        self._tables = {k: tables[k] for k in self.TABLES}

    def _code(self, values: Tensor, index: Tensor) -> list:
        """[rANS stream, escape stream] of integer ``values`` [rows, ...]; row r with table ``index[r]``."""
        t = self.tables
        values = values.reshape(values.shape[0], -1)
        symbols, escaped = to_symbols(values, t["offsets"][index], t["sizes"][index])
        return [rans.encode(symbols, t["cdfs"], index), pack_varints(escaped)]

    def _decode(self, stream: bytes, escapes: bytes, shape: tuple, index: Tensor) -> Tensor:
        """Inverse of ``_code``: int32 values of ``shape`` (rows first); CodecError for a corrupt stream."""
        t = self.tables
        rows, length = shape[0], math.prod(shape[1:])
        try:
            symbols = rans.decode(stream, t["cdfs"], index, length, rans.PRECISION)
        except ValueError as e:
            raise CodecError(f"corrupt .fae file: {e}") from None
        escaped = unpack_varints(escapes, limit=rows * length)
        values = from_symbols(symbols, escaped, t["offsets"][index], t["sizes"][index])
        if values.numel() and values.abs().max() > MAX_VALUE:
            raise CodecError("corrupt .fae file: a latent value is out of range")
        return values.to(torch.int32).reshape(shape)


class FactorizedDensity(EntropyModel):
    """Ballé's non-parametric per-channel density (the "entropy bottleneck"), one independent
    distribution per latent channel, learned as a cumulative: ``cdf(v) = sigmoid(f(v))`` with ``f``
    monotone by construction. ``likelihood(y)`` is the probability mass of ``[y-1/2, y+1/2]``.
    Coded with one integer table per channel.

    ``init_scale`` is the initial width of the densities. Ballé's 10 starts them far wider than
    the latents of a fresh network (std 0.3 to 1.5 here); each quality's model then needs many
    steps just to narrow, and with eight qualities sharing the training it did not in 1,500
    steps (4 bits per latent where 0.2 would do). 2 starts them near the latents' scale."""

    def __init__(self, channels: int, filters=(3, 3, 3), init_scale: float = 2.0):
        super().__init__()
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))

    def logits_cdf(self, v: Tensor) -> Tensor:
        """``v``: [C, 1, K] values per channel -> [C, 1, K] logits of the cumulative."""
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            v = torch.matmul(F.softplus(matrix), v) + bias
            if i < len(self.factors):
                v = v + torch.tanh(self.factors[i]) * torch.tanh(v)
        return v

    def likelihood(self, y: Tensor) -> Tensor:
        """Probability of each rounded value in ``y`` [B, C, H, W] under its channel's distribution."""
        b, c, h, w = y.shape
        v = y.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        # Subtract on the side of the median where the two sigmoids are far from 1 (numerically stable).
        sign = -torch.sign(lower + upper).detach()
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        p = lower_bound(p, LIKELIHOOD_BOUND)
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)

    @torch.no_grad()
    def pmf(self, support: Tensor) -> Tensor:
        """[C, K] probabilities of the integers ``support`` [K] (float64 for table building)."""
        c = self.matrices[0].shape[0]
        v = support.to(self.matrices[0].dtype).expand(c, 1, -1)
        lower = torch.sigmoid(self.logits_cdf(v - 0.5).double())
        upper = torch.sigmoid(self.logits_cdf(v + 0.5).double())
        return (upper - lower).reshape(c, -1).clamp_min(0)

    @torch.no_grad()
    def derive_tables(self) -> dict:
        """One table per channel: int32 "cdfs" [C, K+1], "offsets" [C], "sizes" [C] (fastae.codec.tables)."""
        support = _support()
        pmf = self.pmf(support.to(self.matrices[0].device)).cpu().numpy()
        cdfs, offsets, sizes = tables_from_pmf(pmf, support.numpy())
        return {"cdfs": torch.from_numpy(cdfs), "offsets": torch.from_numpy(offsets), "sizes": torch.from_numpy(sizes)}

    def compress(self, values: Tensor) -> list:
        """[rANS stream, escape stream] of integer ``values`` [C, ...], channel c with its table."""
        return self._code(values, torch.arange(self.tables["cdfs"].shape[0], dtype=torch.int32))

    def decompress(self, stream: bytes, escapes: bytes, shape: tuple) -> Tensor:
        """int32 values of ``shape`` [C, ...] from ``compress``'s streams; CodecError for corrupt ones."""
        return self._decode(stream, escapes, shape, torch.arange(self.tables["cdfs"].shape[0], dtype=torch.int32))


# Gaussian conditional: scales are bounded below (a narrower Gaussian than this puts nearly all its
# mass on one integer anyway) and coded with the table of one of SCALE_LEVELS scales.
SCALE_BOUND = 0.11
SCALE_LEVELS = 64
SCALE_MAX = 256.0


def scale_table(levels: int = SCALE_LEVELS, lo: float = SCALE_BOUND, hi: float = SCALE_MAX) -> Tensor:
    """The ``levels`` scales (float64, geometric from ``lo`` to ``hi``) that have an integer table each."""
    return torch.exp(torch.linspace(math.log(lo), math.log(hi), levels, dtype=torch.float64))


def discretized_gaussian(scales: np.ndarray, support: np.ndarray) -> np.ndarray:
    """[S, K] probabilities of the integers ``support`` under N(0, s) for each of ``scales``."""
    s = torch.as_tensor(scales, dtype=torch.float64)[:, None]
    k = torch.as_tensor(support, dtype=torch.float64)[None, :]
    return (torch.special.ndtr((k + 0.5) / s) - torch.special.ndtr((k - 0.5) / s)).numpy()


def gaussian_thresholds(cdfs, offsets, sizes, scales, grid: int = 256) -> Tensor:
    """float64 [T-1]: a latent whose predicted scale is above ``thresholds[i]`` is coded with table
    i+1 rather than table i, because table i+1 then codes it in fewer bits on average.

    The expected code length of each integer table (symbol bits, escapes included) under the
    discretized Gaussian of scale s is evaluated on a geometric grid of ``grid`` scales between
    neighbouring table scales; the threshold is where the two lengths cross (interpolated in log s).
    Taking the next larger table instead (the rule of files without thresholds) costs
    fastae-hyperprior-v4 2.4% BD-rate on Kodak: the cost of a too-narrow or too-wide Gaussian is
    nearly symmetric in log s, so the best table is about the nearest one."""
    support = np.arange(-SUPPORT, SUPPORT + 1)
    bits = code_lengths(cdfs, offsets, sizes, support)
    scales = np.asarray(scales, dtype=np.float64)
    out = np.empty(len(scales) - 1)
    for i in range(len(scales) - 1):
        s = np.exp(np.linspace(np.log(scales[i]), np.log(scales[i + 1]), grid))
        cost = discretized_gaussian(s, support) @ bits[i:i + 2].T  # [grid, 2] expected bits
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


@functools.lru_cache(maxsize=1)
def _gaussian_tables() -> dict:
    """The Gaussian's tables (they depend on no weight), derived once per process."""
    support = _support()
    scales = scale_table()
    cdfs, offsets, sizes = tables_from_pmf(discretized_gaussian(scales.numpy(), support.numpy()), support.numpy())
    return {"cdfs": torch.from_numpy(cdfs), "offsets": torch.from_numpy(offsets), "sizes": torch.from_numpy(sizes),
            "scales": scales, "thresholds": gaussian_thresholds(cdfs, offsets, sizes, scales.numpy())}


class GaussianConditional(EntropyModel):
    """Each latent Gaussian with its own predicted mean and scale (a hyperprior's ``h_s`` gives
    them). The coder has one integer table per scale of ``scale_table()``, for the latent minus its
    mean; each latent is coded with the table its predicted scale chooses (``index``). No weights:
    the tables depend only on the scale ladder."""

    TABLES = ("cdfs", "offsets", "sizes", "scales", "thresholds")

    @staticmethod
    def likelihood(y: Tensor, means: Tensor, scales: Tensor) -> Tensor:
        """Probability of ``[y-1/2, y+1/2]`` under N(means, scales) (evaluated on the lower tail for
        precision; scales bounded below by SCALE_BOUND)."""
        values = (y - means).abs()
        scales = lower_bound(scales, SCALE_BOUND)
        upper = torch.special.ndtr((0.5 - values) / scales)
        lower = torch.special.ndtr((-0.5 - values) / scales)
        return lower_bound(upper - lower, LIKELIHOOD_BOUND)

    def derive_tables(self) -> dict:
        """int32 "cdfs" [T, K+1], "offsets" [T], "sizes" [T]: one table per scale; float64 "scales"
        [T] and the "thresholds" [T-1] that choose among them (``gaussian_thresholds``)."""
        return {k: v.clone() for k, v in _gaussian_tables().items()}

    def load_tables(self, tables: dict):
        """As EntropyModel.load_tables. Tables written before thresholds existed code each latent
        with the next larger table: their thresholds are the scales."""
        if "thresholds" not in tables and "scales" in tables:
            tables = {**tables, "thresholds": tables["scales"][:-1]}
        missing = [k for k in self.TABLES if k not in tables]
        if missing:
            raise ValueError(f"GaussianConditional: the tables lack {missing} (expected {list(self.TABLES)})")
        check_tables(tables["cdfs"], tables["offsets"], tables["sizes"])
        scales, thresholds = tables["scales"], tables["thresholds"]
        if scales.dtype != torch.float64 or scales.shape != (tables["cdfs"].shape[0],) or not (scales > 0).all() \
                or not (scales[1:] > scales[:-1]).all():
            raise ValueError("the Gaussian tables' scales must be increasing positive float64, one per table")
        if thresholds.dtype != torch.float64 or thresholds.shape != (len(scales) - 1,) or \
                not torch.isfinite(thresholds).all() or (thresholds[1:] < thresholds[:-1]).any():
            raise ValueError(f"the Gaussian tables' thresholds must be non-decreasing finite float64, "
                             f"one between each two tables ({len(scales) - 1})")
        self._tables = {k: tables[k] for k in self.TABLES}
        self._grid = None

    #: steps of the index's lookup grid: 2^-GRID_BITS (the integer networks' unit)
    GRID_BITS = 12

    def _lookup_grid(self):
        """(count of thresholds below each grid point k / 2^GRID_BITS as int32 [K + 1], the
        thresholds), built once; False when the thresholds do not allow it (two closer than a
        grid step, a negative one, or a grid of more than 2^24 points)."""
        if getattr(self, "_grid", None) is None:
            thresholds = self.tables["thresholds"]
            step = 2.0 ** -self.GRID_BITS
            self._grid = False
            if len(thresholds) and float(thresholds[0]) >= 0 and float(thresholds[-1]) < 2.0 ** 24 * step \
                    and bool((thresholds[1:] - thresholds[:-1] > step).all()):
                points = torch.arange(int(float(thresholds[-1]) / step) + 2, dtype=torch.float64) * step
                self._grid = (torch.searchsorted(thresholds, points).to(torch.int32), thresholds.contiguous())
        return self._grid

    def index(self, scales: Tensor) -> Tensor:
        """int32 table index of each latent of predicted ``scales`` (any shape, on any device): the
        number of thresholds below the scale, ``torch.searchsorted(thresholds, scales)``. float64
        scales on the CPU take fastae._C's ``grid_index`` (one pass with a lookup grid, the same
        integers) where it is built."""
        if scales.device.type == "cpu" and scales.dtype == torch.float64 and _native.has_kernel("grid_index", "CPU"):
            grid = self._lookup_grid()
            if grid:
                return torch.ops.fastae_C.grid_index(scales, grid[0], grid[1], self.GRID_BITS)
        thresholds = self.tables["thresholds"].to(scales.device)
        return torch.searchsorted(thresholds, scales.contiguous()).to(torch.int32)

    def compress(self, values: Tensor, index: Tensor) -> list:
        """[rANS stream, escape stream] of the integer latents minus their means ``values`` [L],
        latent l with table ``index[l]``."""
        return self._code(values.reshape(-1, 1), index.reshape(-1))

    def decompress(self, stream: bytes, escapes: bytes, index: Tensor) -> Tensor:
        """int32 [L] values from ``compress``'s streams, ``index`` [L] their tables; CodecError for corrupt ones."""
        return self._decode(stream, escapes, (index.numel(), 1), index.reshape(-1)).reshape(-1)
