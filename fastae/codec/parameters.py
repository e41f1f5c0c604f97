"""How the networks that choose each latent's Gaussian table are computed when coding: float64.

A hyperprior model's latents are coded each with the integer table of its predicted scale
(``GaussianConditional.index``), and encoder and decoder must pick the same table for every
latent, or the rest of the image decodes wrongly. ``h_s`` (and a checkerboard model's context
network) therefore run in float64 on both sides (on the codec's device): the scales' 64 tables are
13% apart, so a device-dependent rounding error of relative size e moves a latent to the
neighbouring table with a probability of about e / 0.12 — for float32's ~1e-6 a few latents in
every Kodak image (250k latents), for float64's ~1e-15 practically never. Measured on the 24
Kodak images at quality 8: float32 picks another table than float64 for 17 of 5,898,240 latents
with fastae-checkerboard-v4 (31 with fastae-checkerboard-v2, 28 with fastae-hyperprior-v4's ``h_s``;
``python experiments/codec_speed.py --data ../shared/data/kodak --table-flips``).

This module is the one place that decides it: ``entropy_parameters`` builds, when a model is
loaded, what the stream layouts (fastae.codec.layouts) call to predict the means and scales.
An integer model (``model.integer``, fastae-checkerboard-v5 and later: Ballé, Johnston & Minnen
2019) computes them in integer arithmetic instead (``IntegerParameters``), which agrees on every
device and thread count by construction; float models keep float64.

    params = entropy_parameters(model, device)
    means, scales, values = params(side, anchor_values)   # float64 [B, M, h, w]
"""

import copy

import torch

from fastae.codec import bands
from fastae.models.codec import CheckerboardContext
from fastae.nn.integer import OUTPUT_FRAC_BITS


class _BandedHyperSynthesis(torch.nn.Module):
    """``h_s`` (hyper-latents -> means and scales, ``ratio`` times the rows) run band by band."""

    def __init__(self, h_s: torch.nn.Module, ratio: int):
        super().__init__()
        self.h_s, self.ratio = h_s, ratio

    def forward(self, side):
        parts = bands.entropy_bands(side, 2, bands.ENTROPY_POSITIONS // self.ratio ** 2)
        return bands.by_rows(self.h_s, (side,), parts, 2, scale_out=self.ratio)


class _BandedContext(CheckerboardContext):
    """A CheckerboardContext whose passes run band by band (its 5x5 convolution sees 2 rows)."""

    def forward(self, hyper, anchors=None):
        parts = bands.entropy_bands(hyper, 2, bands.ENTROPY_POSITIONS)
        return bands.by_rows(super().forward, (hyper, anchors), parts, 2)


class HyperpriorParameters:
    """float64 means and scales of a HyperpriorCodec's latents from its rounded hyper-latents."""

    def __init__(self, model, device):
        self.device = device
        ratio = model.stride // model.latent_stride
        self.h_s = _BandedHyperSynthesis(copy.deepcopy(model.h_s), ratio).to(device, torch.float64).eval()

    def __call__(self, side: torch.Tensor, anchor_values=None):
        """(means, scales, None): float64 [B, M, h, w] from the int32 hyper-latents ``side``
        [B, N, h/4, w/4] (``anchor_values`` is for models with a context)."""
        return (*self.h_s(side.to(self.device, torch.float64)).chunk(2, dim=1), None)


class CheckerboardParameters(HyperpriorParameters):
    """As HyperpriorParameters, in the two passes of a CheckerboardCodec's context."""

    def __init__(self, model, device):
        super().__init__(model, device)
        self.ctx = _BandedContext(model.M)
        self.ctx.load_state_dict(model.ctx.state_dict())
        self.ctx = self.ctx.to(device, torch.float64).eval()

    def __call__(self, side: torch.Tensor, anchor_values=None):
        """(means, scales, values): the anchors' from ``side`` alone; ``anchor_values(means, scales)``
        then gives the rounded latents [B, M, h, w] of which the anchors are read (the encoder rounds
        its latents, the decoder decodes the anchors' stream), and ``values`` is what it returned."""
        hyper = self.h_s(side.to(self.device, torch.float64))
        params, values = self.ctx.two_pass(hyper, anchor_values)
        return (*params.chunk(2, dim=1), values)


def _real(x: torch.Tensor) -> torch.Tensor:
    """int32 values in units of 2^-OUTPUT_FRAC_BITS as float64: exact (a power of two times an integer
    below 2^31), so a table index found by searchsorted on them is ``scale_table_index`` of the integers."""
    return x.double() * 2.0 ** -OUTPUT_FRAC_BITS


class IntegerParameters:
    """Means and scales of an integer model's latents (``model.integer``: its h_s, and a checkerboard
    model's context, are fastae.nn.integer networks), computed in integers with the integer weights
    the model file stores: the same on every device and thread count by construction. Returned as
    float64, exactly the integers times 2^-OUTPUT_FRAC_BITS (``_real``), so the layouts read them
    as they read the float networks' (``GaussianConditional.index`` on them is ``scale_table_index``
    of the integer scales)."""

    def __init__(self, model, device):
        self.device = device
        self.h_s = copy.deepcopy(model.h_s).to(device).eval()
        self.ctx = copy.deepcopy(model.ctx).to(device).eval() if model.kind == "checkerboard" else None

    @torch.inference_mode()
    def __call__(self, side: torch.Tensor, anchor_values=None):
        """As HyperpriorParameters (hyperprior) and CheckerboardParameters (checkerboard)."""
        hyper = self.h_s.forward_int(side.to(self.device))
        if self.ctx is None:
            means, scales = hyper.chunk(2, dim=1)
            return _real(means), _real(scales), None
        params, values = self.ctx.two_pass_int(hyper, lambda m, s: anchor_values(_real(m), _real(s)))
        means, scales = params.chunk(2, dim=1)
        return _real(means), _real(scales), values


_PARAMETERS = {"hyperprior": HyperpriorParameters, "checkerboard": CheckerboardParameters}


def entropy_parameters(model, device):
    """What predicts the means and scales of ``model``'s latents when coding, on ``device``."""
    if getattr(model, "integer", False):
        return IntegerParameters(model, device)
    return _PARAMETERS[model.kind](model, device)
