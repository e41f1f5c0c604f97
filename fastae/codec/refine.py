"""Encoder-side latent refinement: smaller files, or better images, from the same model and decoder.

The analysis transform gives latents that are good on average over the training images; for one
image, gradient descent on the latents themselves (and a hyperprior's hyper-latents) lowers that
image's own rate-distortion cost ``lambda * 255^2 * MSE + bpp`` (Campos et al. 2019, "Content
adaptive optimization for neural image compression"; Yang et al. 2020). Only the encoder changes:
the file is an ordinary .fae file that any fastae decoder of the same model reads.

    codec = fastae.load_codec(quality=4, refine=50)   # 50 Adam steps per image before coding
    data = codec.compress("photo.png")

Each step runs the synthesis transform and the entropy model forward and backward, so it costs
about two decodes of the image: an option for archiving, not the default.

The objective is the training one for the latents: the synthesis sees the latents rounded
(straight-through), the rate is estimated with additive uniform noise (a fixed-seed generator,
so compressing the same image twice gives the same bytes). Every step also evaluates the cost of
the rounded latents that would be coded: the distortion of their decoded image and the bits the
model's Gaussian or factorized probabilities give them (the coder's 16-bit tables approximate
those); the latents kept are those of the lowest such cost seen, the unrefined ones included, so
refinement never returns latents the model rates worse than where it started. Only
the image's own pixels count in the distortion: the padding up to the transform's stride is free.
"""

import math

import torch
import torch.nn.functional as F

from fastae.codec.entropy import GaussianConditional
from fastae.models.codec import CodecModel, HyperpriorCodec, _round_ste
from fastae.nn.integer import constant_weights

LEARNING_RATE = 0.02  # in quantization steps: the latents are scaled by the quality's gain


def check_refine(refine) -> int:
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be a number of steps >= 0 (0: off), got {refine!r}")
    return refine


def _costs(model: CodecModel, x, y, z, quality: int, height: int, width: int, noise):
    """(per-image cost of the rounded latents as coded, per-image training objective) [B]."""
    q = model._check_quality(quality)
    if isinstance(model, HyperpriorCodec):
        z_hat = _round_ste(z)
        means, scales = model.entropy_parameters(z_hat, y)
        y_hat = _round_ste(y - means) + means
        bits_z = -torch.log2(model.priors[q].likelihood(z_hat)).sum((1, 2, 3))
        bits_coded = -torch.log2(GaussianConditional.likelihood(y_hat, means, scales)).sum((1, 2, 3)) + bits_z
        bits_noisy = -torch.log2(GaussianConditional.likelihood(y + noise, means, scales)).sum((1, 2, 3)) + bits_z
    else:
        y_hat = _round_ste(y)
        bits_coded = -torch.log2(model.priors[q].likelihood(y_hat)).sum((1, 2, 3))
        bits_noisy = -torch.log2(model.priors[q].likelihood(y + noise)).sum((1, 2, 3))
    x_hat = model.synthesis(y_hat, quality)[:, :, :height, :width]
    mse = F.mse_loss(x_hat.float(), x[:, :, :height, :width], reduction="none").mean((1, 2, 3))
    distortion = model.lambdas[q] * 255 ** 2 * mse
    pixels = height * width
    return distortion + bits_coded / pixels, distortion + bits_noisy / pixels


def refine_latents(model: CodecModel, x: torch.Tensor, y: torch.Tensor, quality: int, steps: int, height: int,
                   width: int, lr: float = LEARNING_RATE, seed: int = 0):
    """Refined (latents y, hyper-latents z or None), both unrounded, for the padded images ``x``
    [B, 3, H, W] in [0, 1] whose analysis gave ``y``; ``height`` x ``width`` is the images' own
    size. See the module docstring."""
    hyper = isinstance(model, HyperpriorCodec)
    with torch.inference_mode(False), torch.enable_grad(), constant_weights():
        x = x.detach().float().clone()
        y = y.detach().float().clone().requires_grad_(True)
        z = model.h_a(y.detach()).detach().float().clone().requires_grad_(True) if hyper else None
        leaves = [y, z] if hyper else [y]
        optimizer = torch.optim.Adam(leaves, lr=lr)
        # one generator per image: an image's noise, and so its refinement, do not depend on the batch it is in
        generators = [torch.Generator(device=y.device).manual_seed(seed) for _ in range(y.shape[0])]
        best_cost = torch.full((y.shape[0],), math.inf, device=y.device)
        best = [t.detach().clone() for t in leaves]
        for step in range(steps + 1):
            noise = torch.stack([torch.rand(y.shape[1:], generator=g, device=y.device, dtype=y.dtype)
                                 for g in generators]) - 0.5
            coded, objective = _costs(model, x, y, z, quality, height, width, noise)
            better = coded.detach() < best_cost
            best_cost = torch.where(better, coded.detach(), best_cost)
            for kept, now in zip(best, leaves):
                kept[better] = now.detach()[better]
            if step == steps:
                break
            grads = torch.autograd.grad(objective.sum(), leaves)
            for leaf, grad in zip(leaves, grads):
                leaf.grad = grad
            optimizer.step()
    return best[0], (best[1] if hyper else None)


# ---------------------------------------------------------------------------------------- side search

#: The hyper-latents are searched when the latents that the first ones make improbable (each more
#: than OUTLIER_BITS under its predicted Gaussian) carry at least SEARCH_SHARE of the latents'
#: estimated bits; both chosen on the training photos, not on Kodak (README, "Side search").
OUTLIER_BITS = 16.0
SEARCH_SHARE = 0.05
SEARCH_STEPS = 2
SEARCH_LR = 0.1


def latent_bits(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Bits of each rounded latent (``values``: the latent minus its mean, rounded) under the
    discretized Gaussian of its predicted ``scales`` (bounded below as in training)."""
    zero = torch.zeros((), dtype=scales.dtype, device=scales.device)
    return -torch.log2(GaussianConditional.likelihood(values.to(scales.dtype), zero, scales))


def needs_side_search(values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """bool [B]: images whose hyper-latents predict some of their latents so badly that
    ``search_side`` is worth its time (see OUTLIER_BITS and SEARCH_SHARE)."""
    bits = latent_bits(values, scales).flatten(1)
    outliers = torch.where(bits > OUTLIER_BITS, bits, torch.zeros_like(bits)).sum(1)
    return outliers >= SEARCH_SHARE * bits.sum(1)


class _Adam:
    """torch.optim.Adam's update (defaults: betas 0.9, 0.999, eps 1e-8; its single-tensor CPU path,
    the same floats) for one tensor, without torch.optim: constructing an optimizer imports
    torch._dynamo, 3-4 s on a process's first image."""

    def __init__(self, param, lr, betas=(0.9, 0.999), eps=1e-8):
        self.param, self.lr, self.betas, self.eps, self.step_count = param, lr, betas, eps, 0
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self):
        beta1, beta2 = self.betas
        grad = self.param.grad
        self.step_count += 1
        step = float(self.step_count)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = self.lr / (1 - beta1**step)
        denom = (self.exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step_size)


def search_side(model: HyperpriorCodec, y: torch.Tensor, z: torch.Tensor, quality: int, steps: int = None,
                lr: float = None, seed: int = 0, precision: str = "float32") -> torch.Tensor:
    """Hyper-latents (unrounded) [B, N, h, w] for the latents ``y`` that cost fewer bits than ``z``.

    The hyper-latents are side information the encoder is free to choose: the analysis ``h_a(y)``
    gives good ones on average, but in regions unlike the training crops (smooth skies, the edge
    replication that pads an image to the stride) its rounded values can make the hyper-synthesis
    predict a near-certain mean that the latents are far from, each such latent then costing tens
    of bits. This runs ``steps`` Adam steps on z alone against the bits of y (with uniform noise,
    as in training) plus those of z, the hyper-synthesis reading z rounded (straight-through), and
    keeps per image the z whose rounded value gives the fewest estimated bits of the rounded
    latents y and z, ``z`` itself included. The latents stay those of the analysis; only their
    means, and so their rounding, move. Each step runs the hyper-synthesis (and context) forward
    and backward, not the synthesis: a fraction of a decode. ``steps`` and ``lr`` default to
    SEARCH_STEPS and SEARCH_LR. ``precision`` "bfloat16" runs the networks' convolutions under
    bf16 autocast (the codec's default precision where the hardware has it: about 1.7x faster on
    a CPU with native bf16), "float32" as they are; either way the search only chooses the
    hyper-latents, which the file then codes exactly."""
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"search_side: precision must be 'float32' or 'bfloat16', got {precision!r}")
    q = model._check_quality(quality)
    steps = SEARCH_STEPS if steps is None else steps
    lr = SEARCH_LR if lr is None else lr
    autocast = torch.autocast(y.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    with torch.inference_mode(False), torch.enable_grad(), constant_weights(), autocast:
        y = y.detach().float().clone()
        z = z.detach().float().clone().requires_grad_(True)
        optimizer = _Adam(z, lr)
        # one generator per image: an image's noise, and so its search, do not depend on the batch it is in
        generators = [torch.Generator(device=y.device).manual_seed(seed) for _ in range(y.shape[0])]
        best_bits = torch.full((y.shape[0],), math.inf, device=y.device)
        best = z.detach().clone()
        for step in range(steps + 1):
            z_hat = _round_ste(z)
            last = step == steps
            with torch.set_grad_enabled(not last):
                means, scales = model.entropy_parameters(z_hat, y)
                bits_z = -torch.log2(model.priors[q].likelihood(z_hat)).sum((1, 2, 3))
                coded = latent_bits(torch.round(y - means), scales).sum((1, 2, 3)) + bits_z
                better = coded.detach() < best_bits
                best_bits = torch.where(better, coded.detach(), best_bits)
                best[better] = z.detach()[better]
                if last:
                    break
                noise = torch.stack([torch.rand(y.shape[1:], generator=g, device=y.device, dtype=y.dtype)
                                     for g in generators]) - 0.5
                bits = -torch.log2(GaussianConditional.likelihood(y + noise, means, scales)).sum() + bits_z.sum()
            z.grad = torch.autograd.grad(bits, [z])[0]
            optimizer.step()
    return best
