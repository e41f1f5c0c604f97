"""Function-preserving widening of a codec model (Net2Net-style, Chen et al. 2016).

    wide = widen_codec(model, N=192, M=320, widths=(96, 128, 192), lambdas=LAMBDAS + (0.36, 0.72))

The wider model codes every image of the narrow one's qualities to the same latents, rates and
pixels (up to float rounding), and trains on from there instead of from scratch:

- a new channel of a hidden layer reads the layer's inputs through fresh weights, and every
  existing channel reads it through zeros, so it changes nothing until training grows those;
- new latent channels (and new hyper-latent channels) start with their analysis weights scaled
  by 1/100, so they round to 0 and cost nothing; the synthesis reads them through fresh weights,
  which is what lets their gradients flow (a latent that rounds to 0 adds nothing to the image);
- the entropy parameters of new latents start at mean 0 and the smallest scale, so the existing
  latents' means and scales are unchanged (the hyper-synthesis and context outputs keep their
  "means, then scales" layout, so the old halves move apart);
- new qualities (lambdas appended above the old ones) start as copies of the last quality.
"""

import copy
import numbers

import torch
from torch import nn

from fastae.codec.entropy import FactorizedDensity
from fastae.models.codec import GDN, CodecModel, HyperpriorCodec, build_codec

#: Analysis weights of new latent and hyper-latent channels, relative to a fresh layer's.
NEW_LATENT_SCALE = 0.01


def _index(old_blocks, new_blocks) -> torch.Tensor:
    """Where each old index goes in a dimension made of consecutive blocks that each grow."""
    parts, start = [], 0
    for old, new in zip(old_blocks, new_blocks):
        parts.append(torch.arange(old) + start)
        start += new
    return torch.cat(parts)


def _embed(old: torch.Tensor, fresh: torch.Tensor, maps) -> torch.Tensor:
    """``fresh`` with ``old`` written at the positions ``maps`` (one index tensor or None per dim)."""
    out = fresh.clone()
    index = [m if m is not None else torch.arange(s) for m, s in zip(maps, old.shape)]
    out[torch.meshgrid(*index, indexing="ij")] = old
    return out


def _widen_conv(old: nn.Module, new: nn.Module, out_map, in_map, new_rows: str = "fresh"):
    """Copy the conv ``old`` into ``new``: old weights at (out_map, in_map); the old outputs read new
    inputs through zeros; new outputs are fresh ("fresh"), fresh/100 ("small") or zero ("zero")."""
    transposed = isinstance(new, nn.ConvTranspose2d)
    w_new = new.weight.detach().clone()
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    old_out = out_map if out_map is not None else torch.arange(old.weight.shape[out_dim])
    is_new_out = torch.ones(w_new.shape[out_dim], dtype=torch.bool)
    is_new_out[old_out] = False
    bias = new.bias.detach().clone()
    if new_rows == "zero":
        w_new.index_fill_(out_dim, is_new_out.nonzero()[:, 0], 0.0)
        bias[is_new_out] = 0.0
    elif new_rows == "small":
        w_new.index_copy_(out_dim, is_new_out.nonzero()[:, 0],
                          w_new.index_select(out_dim, is_new_out.nonzero()[:, 0]) * NEW_LATENT_SCALE)
        bias[is_new_out] *= NEW_LATENT_SCALE
    # Old outputs read every input that is new through zeros.
    rows = w_new.index_select(out_dim, old_out)
    rows.zero_()
    w_new.index_copy_(out_dim, old_out, rows)
    maps = [None] * w_new.dim()
    maps[out_dim], maps[in_dim] = out_map, in_map
    w_new = _embed(old.weight.detach(), w_new, maps)
    bias = _embed(old.bias.detach(), bias, [out_map])
    with torch.no_grad():
        new.weight.copy_(w_new)
        new.bias.copy_(bias)


def _widen_gdn(old: GDN, new: GDN):
    """New channels are normalized by themselves alone (a fresh GDN's), old ones as before."""
    with torch.no_grad():
        c = old.beta.shape[0]
        new.beta[:c] = old.beta
        new.gamma[:c, :c] = old.gamma
        new.gamma[:c, c:] = new.gamma_bound  # gamma = bound^2 - pedestal = 0: old channels ignore new ones
        new.gamma[c:, :c] = new.gamma_bound


def _widen_priors(old: nn.ModuleList, new: nn.ModuleList):
    """Per-quality factorized densities: old channels as they were; a new channel takes the density of
    the old channel that gives 0 the highest probability (it codes zeros, as a new channel starts);
    a new quality copies the last old quality's."""
    for q, prior in enumerate(new):
        source: FactorizedDensity = old[min(q, len(old) - 1)]
        channels = source.matrices[0].shape[0]
        peaked = int(source.pmf(torch.zeros(1)).argmax(0)[0])
        take = torch.cat([torch.arange(channels),
                          torch.full((prior.matrices[0].shape[0] - channels,), peaked, dtype=torch.long)])
        with torch.no_grad():
            for dst, src in zip(prior.parameters(), source.parameters()):
                dst.copy_(src[take])


def _widen_gains(old: torch.Tensor, new: nn.Parameter):
    """[qualities, M] log-gains: new channels take their quality's mean; new qualities start as the
    last one (continuing the ladder's last step was measured worse: the synthesis has never seen
    such latents), their larger lambdas pull them apart in training."""
    q_old, m_old = old.shape
    rows = torch.cat([old, old.mean(1, keepdim=True).expand(q_old, new.shape[1] - m_old)], 1)
    with torch.no_grad():
        new.copy_(torch.cat([rows, rows[-1:].expand(new.shape[0] - q_old, -1)]))


def _widen_analysis_layers(g_a: nn.Sequential, G_a: nn.Sequential, old_widths, M_old: int):
    """Copy the analysis transform ``g_a`` (channels ``old_widths``) into the wider ``G_a``."""
    a2, a4, a8 = (torch.arange(c) for c in old_widths)
    _widen_conv(g_a[0], G_a[0], a2, None)
    _widen_conv(g_a[2], G_a[2], a4, a2)
    _widen_conv(g_a[4], G_a[4], a8, a4)
    _widen_conv(g_a[6], G_a[6], torch.arange(M_old), a8, new_rows="small")
    for i in (1, 3, 5):
        _widen_gdn(g_a[i], G_a[i])


def widen_analysis(model: CodecModel, analysis_widths, seed: int = 0) -> CodecModel:
    """A copy of ``model`` whose analysis transform has ``analysis_widths`` channels at 1/2, 1/4
    and 1/8 (each at least ``model``'s) and computes what ``model``'s does: new channels as in
    ``widen_codec``. Everything else, the decoder with its loaded tables and integer layers, is a
    copy of ``model``'s, so the copy decodes exactly as ``model`` does (fastae.train.encoder trains
    such an encoder against the frozen decoder)."""
    torch.manual_seed(seed)
    fresh = build_codec({**model.config, "analysis_widths": list(analysis_widths)})  # checks the widths
    for i, (a, b) in enumerate(zip(model.analysis_widths, fresh.analysis_widths)):
        if b < a:
            raise ValueError(f"widen_analysis: analysis_widths[{i}] must be >= the model's {a}, got {b}")
    wide = copy.deepcopy(model)
    _widen_analysis_layers(model.g_a, fresh.g_a, model.analysis_widths, model.M)
    wide.g_a = fresh.g_a.to(model.log_gain.dtype)
    wide.config, wide.analysis_widths = fresh.config, fresh.analysis_widths
    return wide


def widen_codec(model: CodecModel, N: int = None, M: int = None, widths=None, lambdas=None,
                seed: int = 0, analysis_widths=None) -> CodecModel:
    """A model of ``model``'s kind with at least its sizes that codes as it does (see the module
    docstring). ``N``, ``M``, ``widths`` (channels at 1/2, 1/4, 1/8) default to ``model``'s;
    ``analysis_widths`` (the encoder's) to ``model``'s where they are its ``widths``, else to
    ``widths``; ``lambdas`` must begin with ``model``'s lambdas (new qualities are added above).
    ``seed`` draws the fresh weights."""
    cfg = dict(model.config)
    target = {**cfg, "N": cfg["N"] if N is None else N, "M": cfg["M"] if M is None else M,
              "lambdas": cfg["lambdas"] if lambdas is None else [float(v) for v in lambdas]}
    target["widths"] = list(model.widths if widths is None else widths)
    if analysis_widths is None:
        analysis_widths = model.analysis_widths if model.analysis_widths != model.widths else target["widths"]
    target["analysis_widths"] = list(analysis_widths)
    old_w, old_a, old_l = model.widths, model.analysis_widths, [float(v) for v in cfg["lambdas"]]
    for name, a, b in (("N", cfg["N"], target["N"]), ("M", cfg["M"], target["M"]),
                       *((f"widths[{i}]", a, b) for i, (a, b) in enumerate(zip(old_w, target["widths"]))),
                       *((f"analysis_widths[{i}]", a, b) for i, (a, b) in enumerate(zip(old_a, analysis_widths)))):
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < a:
            raise ValueError(f"widen_codec: {name} must be an integer >= the model's {a}, got {b!r}")
    if target["lambdas"][:len(old_l)] != old_l:
        raise ValueError(f"widen_codec: lambdas must begin with the model's {old_l} (qualities are added above "
                         f"them), got {target['lambdas']}")
    torch.manual_seed(seed)
    wide = build_codec(target)
    M0, M1, N0 = cfg["M"], target["M"], cfg["N"]
    ar = torch.arange
    w2, w4, w8 = (ar(c) for c in old_w)
    g_a, G_a, g_s, G_s = model.g_a, wide.g_a, model.g_s, wide.g_s
    _widen_analysis_layers(g_a, G_a, old_a, M0)
    _widen_conv(g_s[0], G_s[0], w8, ar(M0))
    _widen_conv(g_s[2], G_s[2], w4, w8)
    _widen_conv(g_s[4], G_s[4], w2, w4)
    _widen_conv(g_s[6], G_s[6], None, w2)
    for i in (1, 3, 5):
        _widen_gdn(g_s[i], G_s[i])
    _widen_gains(model.log_gain.detach(), wide.log_gain)
    _widen_gains(model.log_inv_gain.detach(), wide.log_inv_gain)
    _widen_priors(model.priors, wide.priors)
    if isinstance(model, HyperpriorCodec):
        mid0 = M0 * 3 // 2
        two = _index((M0, M0), (M1, M1))  # "means, then scales"
        _widen_conv(model.h_a[0], wide.h_a[0], ar(N0), ar(M0))
        _widen_conv(model.h_a[2], wide.h_a[2], ar(N0), ar(N0))
        _widen_conv(model.h_a[4], wide.h_a[4], ar(N0), ar(N0), new_rows="small")
        _widen_conv(model.h_s[0], wide.h_s[0], ar(M0), ar(N0))
        _widen_conv(model.h_s[2], wide.h_s[2], ar(mid0), ar(M0))
        _widen_conv(model.h_s[4], wide.h_s[4], two, ar(mid0), new_rows="zero")
        if hasattr(model, "ctx"):
            _widen_conv(model.ctx.context, wide.ctx.context, ar(M0), ar(M0))
            _widen_conv(model.ctx.params[0], wide.ctx.params[0], ar(2 * M0), _index((M0,) * 3, (M1,) * 3))
            _widen_conv(model.ctx.params[2], wide.ctx.params[2], two, ar(2 * M0), new_rows="zero")
    wide.hyper_input = getattr(model, "hyper_input", "noise")
    return wide
