"""Fine-tuning of a hyperprior codec's entropy networks alone, its transforms, gains, h_a and priors
frozen; with ``integer=True`` the float h_s and checkerboard context are first converted to integer
networks (fastae.nn.integer, scales calibrated on training crops) and then trained with fake
quantization, so that the integer model codes close to the float one.

    train_entropy("../shared/data/photos-train", "runs/v5", init="fastae-checkerboard-v4.safetensors",
                  integer=True, steps=4000)
    # -> runs/v5/codec.safetensors (export_codec), runs/v5/history.json

Why the rate alone: with the transforms frozen the latents y of a crop never change, and the
synthesis reads ``round(y - means) + means``, whose gradient with respect to the means is zero
(straight-through rounding): in the codec's own training the entropy networks learn from the rate
only. With h_a and the priors frozen the hyper-latents' rate is constant too, so the loss is the
latents' rate (bits per pixel, noise for rounding as in training). ``g_a`` runs once per crop of a
pool drawn at the start (a quality's latents are its gain times them), after which a step costs
only the entropy networks.
"""

import json
import math
import time
from pathlib import Path

import torch

from fastae._io import write_text
from fastae.codec.model_file import export_codec, read_model_file
from fastae.models.codec import _round_ste, build_codec, checkerboard
from fastae.nn.integer import IntegerCheckerboardContext, IntegerHyperSynthesis
from fastae.train.codec import _lr_at, load_photos, random_crops


@torch.no_grad()
def _pool(model, photos, crops: int, size: int, generator, batch: int = 8, progress=True) -> torch.Tensor:
    """``g_a`` of ``crops`` random crops: float32 [crops, M, size/16, size/16] (before the gains)."""
    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, crops, batch), desc="latents of the crops", disable=not progress):
        x = random_crops(photos, min(batch, crops - start), size, generator)
        out.append(model.g_a(x).float())
    return torch.cat(out)


@torch.no_grad()
def integer_model(model, pool: torch.Tensor):
    """The integer model (config "integer": true) of a float hyperprior or checkerboard ``model``:
    every weight but h_s and the context copied, those converted by ``from_float`` with their
    activation scales calibrated on the latents ``pool`` (``_pool``) at every quality."""
    if getattr(model, "integer", False):
        return model
    if model.kind not in ("hyperprior", "checkerboard"):
        raise ValueError(f"integer_model: a {model.kind} model has no entropy networks to make integer")
    out = build_codec({**model.config, "integer": True})
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("h_s.", "ctx."))}
    out.load_state_dict(state, strict=False)
    zs, hypers, anchors = [], [], []
    for q in range(model.qualities):
        y = pool * torch.exp(model.log_gain[q])[None, :, None, None]
        z = torch.round(model.h_a(y))
        hyper = model.h_s(z)
        zs.append(z)
        if model.kind == "checkerboard":
            means = model.ctx(hyper).chunk(2, 1)[0]
            hypers.append(hyper)
            anchors.append((torch.round(y - means) + means) * checkerboard(*y.shape[-2:]))
    out.h_s = IntegerHyperSynthesis.from_float(model.h_s, zs)
    if model.kind == "checkerboard":
        out.ctx = IntegerCheckerboardContext.from_float(model.ctx, hypers, anchors)
    return out.eval()


def latent_rate(model, g: torch.Tensor, quality: int, noise: bool = True) -> torch.Tensor:
    """Bits per pixel of the latents y (``g``: ``g_a``'s output [B, M, h, w]) at ``quality``:
    the rate the entropy networks are trained on (``noise``: uniform noise for rounding)."""
    q = model._check_quality(quality)
    y = g * torch.exp(model.log_gain[q].detach())[None, :, None, None]
    with torch.no_grad():
        z = model.h_a(y)
    means, scales = model.entropy_parameters(_round_ste(z), y)
    y_rate = y + torch.empty_like(y).uniform_(-0.5, 0.5) if noise else torch.round(y - means) + means
    likelihoods = model.gaussian.likelihood(y_rate, means, scales)
    pixels = g.shape[0] * g.shape[2] * g.shape[3] * model.latent_stride ** 2
    return torch.log2(likelihoods).sum() / -pixels


def train_entropy(data, out, init, integer: bool = True, steps: int = 4000, batch_size: int = 16,
                  crop: int = 256, crops: int = 512, lr: float = 1e-4, downscale: int = 2, seed: int = 0,
                  model_id: str = "fastae-codec-custom", weights_dtype: str = "float16", time_limit: float = None,
                  progress: bool = True, checkpoint_every: int = 500) -> Path:
    """Fine-tune the entropy networks of the codec file ``init`` on random crops of the photos in
    ``data`` (see the module docstring); ``integer``: convert them to integer networks first.
    Writes ``out``/codec.safetensors (``export_codec`` with ``model_id`` and ``weights_dtype``)
    every ``checkpoint_every`` steps and at the end, and ``out``/history.json (the mean rate per
    quality over each stretch); ``time_limit`` (seconds) ends early at a checkpoint. Returns the
    codec file's path."""
    from tqdm.auto import tqdm

    for name, value in (("steps", steps), ("batch_size", batch_size), ("crops", crops),
                        ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train_entropy: {name} must be an integer >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
        raise ValueError(f"train_entropy: lr must be a positive number, got {lr!r}")
    model, init_id, _ = read_model_file(init)
    if model.kind not in ("hyperprior", "checkerboard"):
        raise ValueError(f"train_entropy: {init} is a {model.kind} model; only a hyperprior or checkerboard model "
                         "has entropy networks to fine-tune")
    if crop % model.stride or crop < model.stride:
        raise ValueError(f"train_entropy: crop must be a positive multiple of {model.stride}, got {crop}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    photos = load_photos(data, downscale, min_side=crop)
    model = model.float().eval()
    pool = _pool(model, photos, crops, crop, generator, progress=progress)
    if integer:
        model = integer_model(model, pool)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.h_s.parameters()) + (list(model.ctx.parameters()) if model.kind == "checkerboard" else [])
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    history, sums = [], {}
    path = out / "codec.safetensors"
    began = time.monotonic()
    bar = tqdm(total=steps, desc="train entropy", disable=not progress, dynamic_ncols=True)
    for step in range(steps):
        quality = step % model.qualities + 1
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        pick = torch.randint(0, pool.shape[0], (batch_size,), generator=generator)
        bpp = latent_rate(model, pool[pick], quality)
        if not torch.isfinite(bpp):
            raise FloatingPointError(f"train_entropy: rate is {bpp.item()} at step {step}; the last export is {path}")
        optimizer.zero_grad(set_to_none=True)
        bpp.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        acc = sums.setdefault(quality, [0, 0.0])
        acc[0] += 1
        acc[1] += bpp.item()
        bar.update(1)
        done = step + 1
        stop = time_limit is not None and time.monotonic() - began > time_limit
        if done % checkpoint_every == 0 or done == steps or stop:
            history += [{"step": done, "quality": q, "bpp": s / n} for q, (n, s) in sorted(sums.items())]
            sums = {}
            export_codec(model.eval(), path, model_id=model_id, weights_dtype=weights_dtype)
            write_text(out / "history.json", json.dumps({"init": init_id, "integer": integer, "steps": steps,
                                                          "lr": lr, "batch_size": batch_size, "crop": crop,
                                                          "crops": crops, "history": history}, indent=1))
            if stop:
                break
    bar.close()
    return path
