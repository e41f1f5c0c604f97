"""The codec networks. ``CodecModel`` is their base: the analysis and synthesis transforms and the
per-quality gains. ``FactorizedCodec`` codes the latents with a learned per-channel density
(Ballé et al. 2018, with per-quality gains), ``HyperpriorCodec`` with a Gaussian whose mean and scale
a mean-scale hyperprior predicts (Minnen et al. 2018), and ``CheckerboardCodec`` adds a two-pass
checkerboard context to the hyperprior (He et al. 2021). Their entropy models (FactorizedDensity,
GaussianConditional) are in fastae.codec.entropy; how each kind writes a .fae file is in
fastae.codec.layouts.

    codec = FactorizedCodec()                     # N=128 transform channels, M=192 latent channels, 8 qualities
    out = codec(x, quality=4)                     # training: {"x_hat", "likelihoods", "bpp"} with noise for rounding
    y = codec.analysis(x, quality=4)              # inference: latents before rounding (scaled by the quality's gain)
    x_hat = codec.synthesis(torch.round(y), quality=4)

One network serves every quality (Cui et al. 2021, "asymmetric gained" variable rate): the latent
``y = g_a(x)`` is multiplied by a learned per-channel gain of the quality before rounding and the
decoded symbols by a learned inverse gain before ``g_s``; each quality has its own factorized
entropy model. Training mixes the qualities, each with its own rate-distortion weight, so one
set of transforms (and one file of weights) is shared by all eight.

HyperpriorCodec codes the latents with a Gaussian whose mean and scale come from a second,
small autoencoder (``h_a``/``h_s``) over the latents; its own latent ``z`` (1/64 of the image
size) is coded with the factorized model. The side information costs a few percent of the bits
and saves far more where the image has structure (CompressAI: +0.8 to +1.5 dB over the factorized
prior at the same rate).

Why GDN: it is the transform nonlinearity the factorized and hyperprior baselines use; it
gaussianizes the latents better than ReLU at the same width (Ballé et al. 2016) so a small
network reaches a lower rate, and it costs one 1x1 convolution per layer.
"""

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fastae.codec.entropy import FactorizedDensity, GaussianConditional, lower_bound
from fastae.nn.integer import IntegerCheckerboardContext, IntegerHyperSynthesis
from fastae.ops import gdn

# Rate-distortion weights of the eight qualities: loss = lmbda * 255^2 * MSE + bpp (CompressAI's values).
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


class GDN(nn.Module):
    """Generalized divisive normalization: y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2); ``inverse`` multiplies.

    beta and gamma are stored reparametrized (their square roots, offset) so that they stay positive.
    """

    pedestal = 2.0 ** -36

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1):
        super().__init__()
        self.inverse = inverse
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.gamma_bound = self.pedestal ** 0.5
        self.beta = nn.Parameter(torch.sqrt(torch.ones(channels) + self.pedestal))
        self.gamma = nn.Parameter(torch.sqrt(gamma_init * torch.eye(channels) + self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        beta = lower_bound(self.beta, self.beta_bound) ** 2 - self.pedestal
        gamma = lower_bound(self.gamma, self.gamma_bound) ** 2 - self.pedestal
        return gdn(x, beta, gamma, self.inverse)  # one fused op (fastae.ops.gdn), forward and backward


def _conv(cin, cout):
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def _deconv(cin, cout):
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


def _check_widths(owner: str, widths, N: int) -> tuple:
    """The transforms' channels at 1/2, 1/4 and 1/8 of the image size (``None``: N at each)."""
    if widths is None:
        return (N, N, N)
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__len__") or len(widths) != 3 or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in widths):
        raise ValueError(f"{owner}: widths must be three positive integers (channels at 1/2, 1/4 and 1/8 of the "
                         f"image size), got {widths!r}")
    return tuple(int(v) for v in widths)


class CodecModel(nn.Module):
    """The base of the codec networks: a variable-rate learned image codec whose kind (its
    subclass) decides how the latents are coded. ``x``: [B, channels, H, W] in [0, 1], H and W
    multiples of ``stride``.

    ``quality`` is 1..``qualities`` (higher = more bits, better image); the shipped model has 8.
    ``N`` is the transforms' width (and the hyper-latents' channels in the models with a
    hyperprior); ``widths`` optionally gives the analysis and synthesis other channel counts at
    1/2, 1/4 and 1/8 of the image size, e.g. narrow where the layers are large and costly and wide
    near the latents, where width is cheap; ``analysis_widths`` gives the analysis its own (default
    ``widths``): a wider encoder costs encoding time only, and the decoder stays as it is.
    ``config`` holds the constructor's arguments (and the kind), as checkpoints and weights files
    store it: ``build_codec(model.config)`` rebuilds it.

    A subclass sets ``kind``, makes ``priors`` (one FactorizedDensity per quality) and its other
    modules after the transforms, in the order of the models before it (a checkpoint's optimizer
    state is matched to the parameters by their order), and defines ``forward(x, quality, noise)``
    -> {"x_hat", "likelihoods", "bpp", ...}.
    """

    kind = None
    stride = 16  # total downsampling of the analysis transform; inputs are padded to a multiple of it
    latent_stride = 16  # downsampling of the latents y

    def __init__(self, N: int = 128, M: int = 192, lambdas=LAMBDAS, channels: int = 3, widths=None,
                 analysis_widths=None):
        super().__init__()
        for name, value in (("N", N), ("M", M), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        N, M, channels = int(N), int(M), int(channels)  # numpy integers too: the config is written as JSON
        widths = _check_widths(type(self).__name__, widths, N)
        analysis_widths = widths if analysis_widths is None else _check_widths(
            f"{type(self).__name__} (analysis_widths)", analysis_widths, N)
        if isinstance(lambdas, (str, bytes)):
            raise ValueError(f"{type(self).__name__}: lambdas must be a sequence of numbers, got {lambdas!r}")
        lambdas = [float(v) for v in lambdas]
        if not lambdas or any(not 0 < v < math.inf for v in lambdas) or lambdas != sorted(lambdas):
            raise ValueError(f"{type(self).__name__}: lambdas must be positive, finite and increasing (one per quality), "
                             f"got {lambdas}")
        qualities = len(lambdas)
        self.config = {"N": N, "M": M, "lambdas": lambdas, "channels": channels}
        if widths != (N, N, N):  # configs of uniform width (every model before widths existed) stay as they were
            self.config["widths"] = list(widths)
        if analysis_widths != widths:  # and those with the decoder's widths as they were
            self.config["analysis_widths"] = list(analysis_widths)
        if self.kind != "factorized":  # configs without a kind are factorized models
            self.config["kind"] = self.kind
        self.N, self.M, self.lambdas, self.qualities, self.channels = N, M, lambdas, qualities, channels
        self.widths, self.analysis_widths = widths, analysis_widths
        a2, a4, a8 = analysis_widths
        self.g_a = nn.Sequential(_conv(channels, a2), GDN(a2), _conv(a2, a4), GDN(a4), _conv(a4, a8), GDN(a8),
                                 _conv(a8, M))
        w2, w4, w8 = widths
        self.g_s = nn.Sequential(_deconv(M, w8), GDN(w8, inverse=True), _deconv(w8, w4), GDN(w4, inverse=True),
                                 _deconv(w4, w2), GDN(w2, inverse=True), _deconv(w2, channels))
        # Per-quality latent gains, stored as logs; initialised to a geometric ladder so that the
        # qualities start apart (coarser quantization for low quality).
        ladder = torch.linspace(math.log(0.5), math.log(3.0), qualities) if qualities > 1 else torch.zeros(1)
        self.log_gain = nn.Parameter(ladder[:, None].repeat(1, M).clone())
        self.log_inv_gain = nn.Parameter(-ladder[:, None].repeat(1, M).clone())

    def entropy_models(self) -> dict:
        """{name: entropy model} of every entropy model whose integer tables the weights file stores
        (as "tables.NAME.*"): the factorized density of each quality, "q1", "q2", ..."""
        return {f"q{q}": prior for q, prior in enumerate(self.priors, start=1)}

    def _check_quality(self, quality: int) -> int:
        if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 1 <= quality <= self.qualities:
            raise ValueError(f"quality must be an integer in 1..{self.qualities}, got {quality!r}")
        return quality - 1

    def _check_input(self, x: Tensor):
        """``x`` must be [B, channels, H, W] with H and W multiples of the model's stride."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__}: expected images [B, {self.channels}, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if x.shape[2] % self.stride or x.shape[3] % self.stride or 0 in x.shape:
            raise ValueError(f"{type(self).__name__}: height and width must be positive multiples of {self.stride} "
                             f"(pad the images; the codec does), got {x.shape[2]} x {x.shape[3]}")

    def analysis(self, x: Tensor, quality: int) -> Tensor:
        """Latents scaled by the quality's gain, before rounding: [B, M, H/16, W/16]."""
        q = self._check_quality(quality)
        return self.g_a(x) * torch.exp(self.log_gain[q])[None, :, None, None]

    def synthesis(self, y_hat: Tensor, quality: int, g_s: nn.Module = None) -> Tensor:
        """Image (not clamped) from rounded latents ``y_hat`` (``g_s``: another form of this
        model's synthesis transform to run, e.g. fastae.codec's bf16 one; default ``self.g_s``)."""
        q = self._check_quality(quality)
        return (self.g_s if g_s is None else g_s)(y_hat * torch.exp(self.log_inv_gain[q])[None, :, None, None])

    def rd_loss(self, x: Tensor, quality: int) -> dict:
        """lambda * 255^2 * MSE + bpp for the quality's lambda (the training objective)."""
        out = self(x, quality)
        mse = F.mse_loss(out["x_hat"].float(), x.float())
        lmbda = self.lambdas[self._check_quality(quality)]
        loss = lmbda * 255 ** 2 * mse + out["bpp"]
        return {"loss": loss, "mse": mse, "bpp": out["bpp"],
                "psnr": -10 * torch.log10(mse.detach().clamp_min(1e-10))}


class FactorizedCodec(CodecModel):
    """The latents coded with one learned density per channel and quality (``priors``, Ballé et
    al. 2018's factorized prior); H and W multiples of 16."""

    kind = "factorized"

    def __init__(self, N: int = 128, M: int = 192, lambdas=LAMBDAS, channels: int = 3, widths=None,
                 analysis_widths=None):
        super().__init__(N=N, M=M, lambdas=lambdas, channels=channels, widths=widths, analysis_widths=analysis_widths)
        self.priors = nn.ModuleList(FactorizedDensity(M) for _ in range(self.qualities))

    def forward(self, x: Tensor, quality: int, noise: bool = True) -> dict:
        """Training (``noise=True``: additive uniform noise stands in for rounding) or evaluation
        (``noise=False``: rounding) pass. Returns x_hat, the latents' likelihoods and the rate in
        bits per pixel estimated from them."""
        self._check_input(x)
        y = self.analysis(x, quality).float()  # fp32 latents (and rounding noise) under AMP too
        if noise:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            y_hat = torch.round(y)
        with torch.autocast(y_hat.device.type, enabled=False):  # the rate needs fp32 logits, even under AMP
            likelihoods = self.priors[self._check_quality(quality)].likelihood(y_hat.float())
        x_hat = self.synthesis(y_hat, quality)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bpp = torch.log(likelihoods).sum() / (-math.log(2) * pixels)
        return {"x_hat": x_hat, "likelihoods": likelihoods, "bpp": bpp}


def _round_ste(x: Tensor) -> Tensor:
    """Rounding whose gradient is the identity."""
    return x + (torch.round(x) - x).detach()


class HyperpriorCodec(CodecModel):
    """The latents coded with a mean-scale hyperprior; ``x`` H and W multiples of 64.

    ``priors`` are the per-quality factorized models of the hyper-latent ``z`` (N channels); the
    latents ``y`` are Gaussian given ``z`` (``gaussian``), with means and scales from ``h_s(z)``.
    """

    kind = "hyperprior"
    stride = 64

    def __init__(self, N: int = 128, M: int = 192, lambdas=LAMBDAS, channels: int = 3, widths=None,
                 integer: bool = False, analysis_widths=None):
        super().__init__(N=N, M=M, lambdas=lambdas, channels=channels, widths=widths, analysis_widths=analysis_widths)
        if not isinstance(integer, bool):
            raise ValueError(f"{type(self).__name__}: integer must be True or False, got {integer!r}")
        self.integer = integer
        if integer:  # configs of float models (every model up to fastae-checkerboard-v4) stay as they were
            self.config["integer"] = True
        self.priors = nn.ModuleList(FactorizedDensity(N) for _ in range(self.qualities))
        self.gaussian = GaussianConditional()  # no weights: the state_dict is that of the transforms and priors
        self.h_a = nn.Sequential(nn.Conv2d(M, N, 3, padding=1), nn.LeakyReLU(inplace=True), _conv(N, N),
                                 nn.LeakyReLU(inplace=True), _conv(N, N))
        mid = M * 3 // 2
        if integer:
            self.h_s = IntegerHyperSynthesis(N, M)
        else:
            self.h_s = nn.Sequential(_deconv(N, M), nn.LeakyReLU(inplace=True), _deconv(M, mid),
                                     nn.LeakyReLU(inplace=True), nn.Conv2d(mid, 2 * M, 3, padding=1))

    def entropy_models(self) -> dict:
        """As CodecModel.entropy_models, and the latents' Gaussian ("gaussian")."""
        return {**super().entropy_models(), "gaussian": self.gaussian}

    def entropy_parameters(self, z_hat: Tensor, y: Tensor = None):
        """(means, scales) of the latents given the rounded hyper-latents ``z_hat`` (``y``, the
        unrounded latents, is read by models with a context)."""
        means, scales = self.h_s(z_hat).chunk(2, dim=1)
        return means, scales

    #: What the hyper-synthesis reads in training: "noise", the hyper-latents plus uniform noise (as
    #: CompressAI, and every fastae model up to fastae-checkerboard-v4), or "rounded", the rounded
    #: hyper-latents (straight-through) that it reads at inference, as the synthesis reads y. Set by
    #: ``train_codec(hyper_input=...)``; the rate of z is estimated on noisy hyper-latents either way.
    hyper_input = "noise"

    def forward(self, x: Tensor, quality: int, noise: bool = True) -> dict:
        """As FactorizedCodec.forward, with "z_likelihoods". In training the rates are estimated on
        noisy latents while the synthesis sees the rounded ones (straight-through), as at inference
        (Minnen & Singh 2020); the hyper-synthesis reads what ``hyper_input`` says."""
        q = self._check_quality(quality)
        self._check_input(x)
        y = self.analysis(x, quality).float()
        z = self.h_a(y).float()
        z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5) if noise else torch.round(z)
        # an integer hyper-synthesis reads integers: the rounded hyper-latents, whatever hyper_input says
        z_in = _round_ste(z) if noise and (self.hyper_input == "rounded" or self.integer) else z_hat
        means, scales = (t.float() for t in self.entropy_parameters(z_in, y))
        if noise:
            y_rate = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            y_hat = _round_ste(y - means) + means
        else:
            y_rate = y_hat = torch.round(y - means) + means
        with torch.autocast(y.device.type, enabled=False):
            y_likelihoods = self.gaussian.likelihood(y_rate, means, scales)
            z_likelihoods = self.priors[q].likelihood(z_hat)
        x_hat = self.synthesis(y_hat, quality)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        bits = torch.log(y_likelihoods).sum() + torch.log(z_likelihoods).sum()
        return {"x_hat": x_hat, "likelihoods": y_likelihoods, "z_likelihoods": z_likelihoods,
                "bpp": bits / (-math.log(2) * pixels)}


def checkerboard(height: int, width: int, device=None) -> Tensor:
    """bool [1, 1, height, width], True on the anchors: the latents at (i, j) with i + j even."""
    i = torch.arange(height, device=device)[:, None]
    j = torch.arange(width, device=device)[None, :]
    return ((i + j) % 2 == 0)[None, None]


class CheckerboardContext(nn.Module):
    """The entropy parameters of a CheckerboardCodec from the hyperprior's ``hyper`` (2M channels:
    means and scales) and the decoded anchors: ``hyper`` plus a correction from a 1x1 network over
    ``hyper`` and a 5x5 convolution of the anchors (M channels, not He et al.'s 2M: that would
    put the shipped weights file over the package's 25 MB). The correction's last layer starts at
    zero, so a model warm-started from a HyperpriorCodec starts out coding exactly as it did."""

    def __init__(self, M: int):
        super().__init__()
        self.context = nn.Conv2d(M, M, 5, padding=2)
        self.params = nn.Sequential(nn.Conv2d(3 * M, 2 * M, 1), nn.LeakyReLU(inplace=True), nn.Conv2d(2 * M, 2 * M, 1))
        nn.init.zeros_(self.params[-1].weight)
        nn.init.zeros_(self.params[-1].bias)

    def forward(self, hyper: Tensor, anchors: Tensor = None) -> Tensor:
        """[B, 2M, h, w] means and scales: of the anchors when ``anchors`` is None, else of the
        other latents given ``anchors`` (the decoded latents, zero off the anchors)."""
        if anchors is None:
            ctx = hyper.new_zeros(hyper.shape[0], self.context.out_channels, *hyper.shape[2:])
        else:
            ctx = self.context(anchors)
        return hyper + self.params(torch.cat([hyper, ctx], dim=1))

    def two_pass(self, hyper: Tensor, anchor_values):
        """``two_pass(self, hyper, anchor_values)``."""
        return two_pass(self, hyper, anchor_values)


def two_pass(ctx: nn.Module, hyper: Tensor, anchor_values):
    """(means and scales [B, 2M, h, w] of every latent, the anchors' values) from the context
    ``ctx`` (a CheckerboardContext, or an IntegerCheckerboardContext's float form): the anchors'
    from ``hyper`` alone; ``anchor_values(means, scales)`` then gives the latents minus those means,
    rounded, of which only the anchors are read (training rounds its latents, the decoder decodes
    the anchors' stream); the others' see the anchors so decoded. The one definition of the
    decoding order, for the training forward and for the codec (in float64; an integer context's
    ``two_pass_int`` computes the same in integers)."""
    first = ctx(hyper)
    means, scales = first.chunk(2, dim=1)
    values = anchor_values(means, scales)
    mask = checkerboard(*hyper.shape[-2:], device=hyper.device)
    anchors = (values.to(means) + means) * mask
    return torch.where(mask, first, ctx(hyper, anchors)), values


class CheckerboardCodec(HyperpriorCodec):
    """HyperpriorCodec with a checkerboard context (He et al. 2021): half the latents, the anchors
    of ``checkerboard``, are coded with the hyperprior alone, the other half with means and scales
    that also see the decoded anchors around them (a 5x5 neighbourhood). Decoding is two passes,
    not one latent at a time as with an autoregressive context."""

    kind = "checkerboard"

    def __init__(self, N: int = 128, M: int = 192, lambdas=LAMBDAS, channels: int = 3, widths=None,
                 integer: bool = False, analysis_widths=None):
        super().__init__(N=N, M=M, lambdas=lambdas, channels=channels, widths=widths, integer=integer,
                         analysis_widths=analysis_widths)
        self.ctx = IntegerCheckerboardContext(M) if integer else CheckerboardContext(M)

    def entropy_parameters(self, z_hat: Tensor, y: Tensor = None):
        """(means, scales) given ``z_hat`` and the latents ``y``: the anchors' from the hyperprior,
        the others' also from the anchors rounded as they are coded (straight-through in training)."""
        if y is None:
            raise ValueError("CheckerboardCodec.entropy_parameters needs the latents y for the context")
        params, _ = two_pass(self.ctx, self.h_s(z_hat), lambda means, scales: _round_ste(y - means))
        return params.chunk(2, dim=1)


CODEC_MODELS = {cls.kind: cls for cls in (FactorizedCodec, HyperpriorCodec, CheckerboardCodec)}


def build_codec(config: dict) -> CodecModel:
    """The codec model of a saved ``config`` (``kind`` "factorized" when absent)."""
    config = dict(config)
    kind = config.pop("kind", "factorized")
    if kind not in CODEC_MODELS:
        raise ValueError(f"unknown codec model kind {kind!r}; expected one of {list(CODEC_MODELS)}")
    return CODEC_MODELS[kind](**config)
