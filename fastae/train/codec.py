"""Training of the image codec: random crops of a photo folder, RD loss lambda * 255^2 * MSE + bpp.

    train_codec("../shared/data/photos-train", out="runs/codec", steps=20000)

One step draws a batch of random crops (with flips) and trains one quality, the qualities taken in
turn, so a variable-rate model sees each rate equally often. Checkpoints (weights, optimizer, RNG,
history) are written atomically every ``checkpoint_every`` steps; ``resume=True`` continues from
them and gives the same model as a run that was never stopped.

``kind="hyperprior"`` trains the mean-scale hyperprior model; ``init`` starts it from the
transforms and gains of an earlier checkpoint (e.g. a factorized model), which is far cheaper than
training the transforms again. ``kind="checkerboard"`` adds a checkerboard context to the
hyperprior; started from a hyperprior checkpoint (``init``) it takes every weight of it and
begins exactly where that model was, the context learning from there.
"""

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastae._device import autocast_dtype, resolve_device
from fastae._io import read_json, read_safetensors, safetensors_metadata
from fastae.data.images import list_images, read_rgb
from fastae.models.codec import CODEC_MODELS, LAMBDAS, CodecModel, build_codec
from fastae.train.checkpoint import CODEC, CONFIG, STATE, WEIGHTS, resume_checkpoint, save_checkpoint


def load_photos(folder, downscale: int = 2, min_side: int = 64):
    """Every image file under ``folder`` (``fastae.data.list_images``, read by ``read_rgb``: upright,
    sRGB), shrunk by ``downscale`` (Lanczos): a list of uint8 tensors [3, H, W]. Downscaling by 2
    removes most camera noise and demosaicing artefacts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training data folder {folder} does not exist")
    photos, unreadable, small = [], [], []
    for path in list_images(folder):
        try:
            img = Image.fromarray(read_rgb(path))
        except (OSError, ValueError):  # truncated, not really an image, a decompression bomb
            unreadable.append(path.name)
            continue
        if downscale > 1:
            img = img.resize((max(img.width // downscale, 1), max(img.height // downscale, 1)),
                             Image.Resampling.LANCZOS)
        if min(img.size) >= min_side:
            photos.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous())
        else:
            small.append(path.name)
    if not photos:
        raise ValueError(f"no image of at least {min_side}x{min_side} pixels (after downscaling by {downscale}; "
                         f"the crop must fit) in {folder}" + (f"; {len(small)} smaller" if small else "")
                         + (f"; {len(unreadable)} not readable as images" if unreadable else ""))
    left = [f"{len(names)} {why} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
            for names, why in ((small, f"smaller than {min_side}x{min_side} after downscaling"),
                               (unreadable, "not readable as images")) if names]
    if left:
        warnings.warn(f"{folder}: training on {len(photos)} images; left out {', '.join(left)}", stacklevel=2)
    return photos


def random_crops(photos, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` random ``size``x``size`` crops, images drawn in proportion to their area, random
    horizontal and vertical flips: float [n, 3, size, size] in [0, 1]."""
    areas = torch.tensor([float(p.shape[1] * p.shape[2]) for p in photos])
    picks = torch.multinomial(areas, n, replacement=True, generator=generator)
    out = torch.empty(n, 3, size, size)
    for i, k in enumerate(picks.tolist()):
        img = photos[k]
        h, w = img.shape[1:]
        s = min(size, h, w)
        top = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        crop = img[:, top:top + s, left:left + s].float() / 255
        if s < size:  # small image: reflect-pad up to the crop size
            crop = torch.nn.functional.pad(crop[None], (0, size - s, 0, size - s), mode="reflect")[0]
        flips = torch.rand(2, generator=generator)
        if flips[0] < 0.5:
            crop = crop.flip(2)
        if flips[1] < 0.5:
            crop = crop.flip(1)
        out[i] = crop
    return out


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Constant, then a tenth for the last 10% of the steps."""
    return lr if step < int(0.9 * steps) else lr / 10


def _read_init(init):
    """(config or None, weights) of the checkpoint folder or codec file ``init`` (a codec file's weight
    names lose their "model." prefix; its tables are left out)."""
    init = Path(init)
    path = init / WEIGHTS if init.is_dir() else init
    if not path.is_file():
        raise FileNotFoundError(f"init: no codec weights at {path}")
    tensors = read_safetensors(path)
    if init.is_dir():
        config = read_json(init / CONFIG).get("config") if (init / CONFIG).is_file() else None
        return config, path, tensors
    meta = safetensors_metadata(path)
    config = json.loads(meta["config"]) if "config" in meta else None
    return config, path, {k[len("model."):]: v.float() for k, v in tensors.items() if k.startswith("model.")}


def _warm_start(model: CodecModel, init) -> list:
    """Start ``model`` from the checkpoint folder or codec file ``init``; the names taken from it.

    A model of the same kind that is nowhere wider than ``model`` (and whose qualities begin
    ``model``'s) is widened to it, preserving what it computes (``fastae.train.widen``); otherwise
    every tensor of the same name and shape is copied (e.g. the transforms of a factorized model
    into a hyperprior model)."""
    config, path, tensors = _read_init(init)
    if config is not None and config.get("kind", "factorized") == model.kind and config != model.config:
        from fastae.train.widen import widen_codec

        narrow = build_codec(config)
        narrow.load_state_dict(tensors)
        try:
            wide = widen_codec(narrow, N=model.N, M=model.M, widths=model.widths, lambdas=model.lambdas,
                               analysis_widths=model.analysis_widths,
                               seed=torch.initial_seed())
        except ValueError as e:
            raise ValueError(f"init: {path} ({config}) cannot start this model ({model.config}): {e}") from None
        model.load_state_dict(wide.state_dict())
        return sorted(model.state_dict())
    own = model.state_dict()
    # The entropy models of another kind model other latents (y versus z): never copied.
    same_kind = any(k.startswith("h_a.") for k in tensors) == any(k.startswith("h_a.") for k in own)
    take = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape
            and (same_kind or not k.startswith("priors."))}
    missing = [k for k in own if k.startswith(("g_a.", "g_s.")) and k not in take]
    if missing:
        raise ValueError(f"init: the analysis and synthesis transforms of {path} do not have this model's shape "
                         f"(N={model.N}, M={model.M}); {missing[0]!r} and {len(missing) - 1} more differ or are absent")
    model.load_state_dict(take, strict=False)
    return sorted(take)


def _quality_order(order, qualities: int) -> tuple:
    """``order`` (qualities 1..``qualities``, each at least once) as a tuple; None: 1..qualities."""
    if order is None:
        return tuple(range(1, qualities + 1))
    order = tuple(order)
    bad = [q for q in order if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= qualities]
    if bad or not order:
        raise ValueError(f"train_codec: quality_order must list qualities in 1..{qualities} (one per lambda), "
                         f"got {list(order)}")
    missing = sorted(set(range(1, qualities + 1)) - set(order))
    if missing:
        raise ValueError(f"train_codec: quality_order must train every quality at least once; it lacks {missing}")
    return order


def train_codec(data, out, steps: int = 20000, batch_size: int = 8, crop: int = 128, lr: float = 3e-4,
                N: int = 128, M: int = 192, lambdas=LAMBDAS, downscale: int = 2, device="auto", seed: int = 0,
                checkpoint_every: int = 250, resume: bool = False, amp: bool = True, progress: bool = True,
                time_limit: float = None, kind: str = "factorized", init=None, compile: bool = False,
                stop_at: int = None, hyper_input: str = "noise", widths=None, quality_order=None):
    """Train a codec model of ``kind`` on random crops of the photos in ``data``; checkpoints in ``out``.

    ``time_limit`` (seconds) stops early after a checkpoint (resume later with ``resume=True``);
    ``stop_at`` stops after that step (with a checkpoint) while the learning rate still follows
    ``steps``, so a run cut short is reproducible.
    ``compile`` runs the loss and its gradient through ``torch.compile`` (one graph per quality,
    compiled on the quality's first step): faster steps after a few minutes of compiling, and
    weights that differ from an eager run's by floating-point rounding.
    ``hyper_input`` ("noise" or "rounded"): what a hyperprior's hyper-synthesis reads in training
    (``HyperpriorCodec.hyper_input``). ``widths``: the transforms' channels at 1/2, 1/4 and 1/8 of
    the image size (default N at each). ``init`` of a narrower model of the same kind widens it.
    ``amp``: True (bf16 autocast on a GPU and on a CPU that computes bf16 natively), False or "bf16".
    ``quality_order``: the qualities (1-based) that steps 0, 1, 2, ... train, in a cycle (default
    1, 2, ..., one per lambda); repeating some trains them more often, e.g. new top qualities whose
    transforms must still learn to use the rate (a resumed run may change it).
    Returns the history: a list of {"step", "quality", "loss", "bpp", "psnr"}, each quality's steps
    averaged between two checkpoints (every ``checkpoint_every`` steps, all qualities counted).
    """
    from tqdm.auto import tqdm

    if kind not in CODEC_MODELS:
        raise ValueError(f"train_codec: kind must be one of {list(CODEC_MODELS)}, got {kind!r}")
    stride = CODEC_MODELS[kind].stride
    if hyper_input not in ("noise", "rounded"):
        raise ValueError(f"train_codec: hyper_input must be 'noise' or 'rounded', got {hyper_input!r}")
    if kind == "factorized" and hyper_input != "noise":
        raise ValueError(f"train_codec: hyper_input={hyper_input!r} needs a hyperprior (kind 'hyperprior' or "
                         f"'checkerboard'); a factorized model has no hyper-synthesis")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("crop", crop)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"train_codec: {name} must be an integer, got {value!r}")
    if steps < 1 or batch_size < 1 or crop < stride or crop % stride:
        raise ValueError(f"train_codec: expected steps >= 1, batch_size >= 1 and crop a positive multiple of "
                         f"{stride}, got steps={steps}, batch_size={batch_size}, crop={crop}")
    if stop_at is not None and not 1 <= stop_at <= steps:
        raise ValueError(f"train_codec: stop_at must be a step in 1..steps={steps}, got {stop_at}")
    if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
        raise ValueError(f"train_codec: lr must be a positive number, got {lr!r}")
    for name, value in (("downscale", downscale), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train_codec: {name} must be an integer >= 1, got {value!r}")
    if time_limit is not None and not 0 <= time_limit < math.inf:
        raise ValueError(f"train_codec: time_limit must be a number of seconds >= 0, got {time_limit!r}")
    end = steps if stop_at is None else stop_at
    order = _quality_order(quality_order, len(lambdas))
    device = resolve_device(device, "train_codec: device")
    # bf16 autocast on a GPU, and on a CPU with native bf16; the entropy models stay fp32 (CodecModel.forward).
    amp_dtype = autocast_dtype(amp, device, cpu=True)
    if amp_dtype == torch.float16:
        raise ValueError("train_codec: amp='fp16' is not supported (no gradient scaler); use True, 'bf16' or False")
    out = Path(out)
    if resume and not (out / STATE).exists():
        raise FileNotFoundError(f"resume=True (--resume) but there is no checkpoint to resume in {out} "
                                f"(no {STATE})")
    torch.manual_seed(seed)
    model = CODEC_MODELS[kind](N=N, M=M, lambdas=lambdas, widths=widths)  # bad sizes fail here, before any folder is made
    photos = load_photos(data, downscale, min_side=max(64, crop))  # (no torch randomness: the weights are as seeded)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    if kind != "factorized":
        model.hyper_input = hyper_input
    if init is not None and not resume:
        _warm_start(model, init)
    model = model.to(device)
    # The entropy models and the per-quality gains learn 10x faster than the transforms: each sees
    # only its quality's steps, and with the transforms' rate a factorized prior initialised wide
    # (scale 10) lowers the rate very slowly (measured: 3.3 -> 3.1 bpp in 1250 steps at 3e-4).
    fast, slow = [], []
    for name, param in model.named_parameters():
        (fast if name.startswith(("priors.", "log_gain", "log_inv_gain")) else slow).append(param)
    optimizer = torch.optim.Adam([{"params": slow, "lr": lr, "scale": 1.0},
                                  {"params": fast, "lr": lr * 10, "scale": 10.0}], lr=lr)
    start, history = 0, []
    if resume:
        start, history, extra = resume_checkpoint(out, model, {"codec": optimizer}, generator, unit="step", name=CODEC)
        saved = extra.get("hyper_input")
        if saved not in (hyper_input, None):  # checkpoints before it have none
            raise ValueError(f"checkpoint {out} was trained with hyper_input={saved!r}; resume it "
                             f"with the same (--hyper-input {saved}), not {hyper_input!r}")
    elif (out / WEIGHTS).exists():
        raise FileExistsError(f"{out} already holds a checkpoint; pass resume=True (--resume) to continue it "
                              f"or choose another folder")
    rd_loss = model.rd_loss
    if compile:
        # The quality picks its prior and gains by a Python int: one graph each, so allow as many.
        limit = max(torch._dynamo.config.recompile_limit, model.qualities)
        torch._dynamo.config.recompile_limit = limit
        rd_loss = torch.compile(model.rd_loss)
    began = time.monotonic()
    sums = {}
    bar = tqdm(total=end, initial=min(start, end), desc="train codec", disable=not progress, dynamic_ncols=True)
    model.train()
    if start >= end:
        print(f"train_codec: the checkpoint in {out} is at step {start}, not before step {end}: nothing to train "
              f"(raise --steps to continue)")
    for step in range(start, end):
        quality = order[step % len(order)]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr) * group["scale"]
        x = random_crops(photos, batch_size, crop, generator).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            terms = rd_loss(x, quality)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_codec: loss is {loss.item()} at step {step} (quality {quality}); "
                                     f"the last good checkpoint is in {out}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        acc = sums.setdefault(quality, [0, 0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += loss.item()
        acc[2] += terms["bpp"].item()
        acc[3] += terms["psnr"].item()
        bar.update(1)
        if quality == model.qualities:
            bar.set_postfix(q=quality, bpp=f"{terms['bpp'].item():.3f}", psnr=f"{terms['psnr'].item():.2f}")
        done = step + 1
        if done % checkpoint_every == 0 or done == end:
            for q, (n, l, b, p) in sorted(sums.items()):
                history.append({"step": done, "quality": q, "loss": l / n, "bpp": b / n, "psnr": p / n})
            sums = {}
            save_checkpoint(out, model, done, {"codec": optimizer}, history, unit="step", name=CODEC,
                            generator=generator, extra={"hyper_input": getattr(model, "hyper_input", None)})
            if time_limit is not None and time.monotonic() - began > time_limit and done < end:
                break
    bar.close()
    return history
