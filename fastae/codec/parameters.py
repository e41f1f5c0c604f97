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
Networks in integer arithmetic (Ballé, Johnston & Minnen 2019), which agree on every device by
construction, would replace these classes.

    params = entropy_parameters(model, device)
    means, scales, values = params(side, anchor_values)   # float64 [B, M, h, w]
"""

import copy

import torch

from fastae.codec import bands
from fastae.models.codec import CheckerboardContext


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


_PARAMETERS = {"hyperprior": HyperpriorParameters, "checkerboard": CheckerboardParameters}


def entropy_parameters(model, device):
    """What predicts the means and scales of ``model``'s latents when coding, on ``device``."""
    return _PARAMETERS[model.kind](model, device)
