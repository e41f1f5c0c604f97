"""Fine-tuning of a codec's encoder alone: its analysis transform ``g_a``, a hyperprior's
hyper-analysis ``h_a`` and the per-quality gains ``log_gain`` learn the rate-distortion objective
against a frozen decoder (synthesis, inverse gains, priors, hyper-synthesis and context).

    train_encoder("../shared/data/photos-train", "runs/enc", init="fastae-checkerboard-v8.safetensors",
                  steps=4000)
    # -> runs/enc/codec.safetensors (export_codec), runs/enc/history.json

Why: the analysis transform is amortized inference, trained jointly with the decoder, and it leaves
rate and distortion on the table for each image: ``fastae.codec.refine``, which optimizes each
image's latents against the same decoder, codes Kodak 6.9% smaller at qualities 6-8 (30 steps, a
minute an image). Training the encoder on against the frozen decoder closes part of that gap at no
cost per image. Every tensor the decoder reads is copied from ``init`` unchanged (bit for bit in
the exported file), so the new model decodes as ``init`` does; it gets its own model id, as any
other weights do, because a file names the model that wrote it.

The encoder-side parameters learn at ``lr`` (default 2e-5: v8's encoder lost 1.6% BD-rate on
Kodak in 1,000 steps at 2e-4, see docs/codec-history.md), the gains at ``10 * lr`` (as in
``train_codec``);
``g_a`` and ``h_a`` run under the same bf16 autocast as ``train_codec`` on CPUs with native bf16.
A run ended early (``time_limit``) continues from its export: pass it as ``init``.

``analysis_widths`` widens ``init``'s analysis transform first (``fastae.train.widen.widen_analysis``:
it starts computing what ``init``'s does, new channels read through zeros): the decoder and its
decoding time stay as they are, and encoding pays for the width. The new weights learn at
``new_lr`` (default ``10 * lr``), the ones copied from ``init`` at ``lr``: Adam's step is
proportional to the learning rate entry by entry, so each step's change of an old entry is scaled
by ``lr / new_lr``.
"""

import copy
import json
import math
import os
import time
from pathlib import Path

import torch

from fastae._io import read_safetensors, write_text
from fastae._device import autocast_dtype
from fastae.codec.model_file import export_codec, read_model_file
from fastae.train.codec import _lr_at, _quality_order, load_photos, random_crops

#: Names (prefixes) of the parameters an encoder-only fine-tune trains; everything else is the decoder's.
ENCODER_PARAMETERS = ("g_a.", "h_a.", "log_gain")


def encoder_parameters(model) -> dict:
    """{name: parameter} of ``model``'s encoder side (``ENCODER_PARAMETERS``)."""
    return {name: p for name, p in model.named_parameters() if name.startswith(ENCODER_PARAMETERS)}


def _export_checked(model, path: Path, model_id: str, weights_dtype: str, init, init_tensors: dict):
    """``export_codec`` to ``path``, only if every tensor but the encoder's equals ``init``'s."""
    tmp = path.with_name(path.name + ".partial")
    try:
        # the tables and integer layers are the frozen decoder's: init's, not re-derived (on another CPU
        # the float64 thresholds can differ from init's in the last bit)
        export_codec(model, tmp, model_id=model_id, weights_dtype=weights_dtype,
                     tables={k: v for k, v in init_tensors.items() if k.startswith(("tables.", "integer."))})
        tensors = read_safetensors(tmp)
        encoder = tuple(f"model.{p}" for p in ENCODER_PARAMETERS)
        changed = sorted(k for k in set(tensors) | set(init_tensors) if not k.startswith(encoder)
                         and (k not in tensors or k not in init_tensors or not torch.equal(tensors[k], init_tensors[k])))
        if changed:
            raise ValueError(f"train_encoder: exporting with weights_dtype={weights_dtype!r} would change the decoder "
                             f"of {init} ({changed[0]} and {len(changed) - 1} more); pass the dtype of its weights")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def train_encoder(data, out, init, steps: int = 4000, batch_size: int = 2, crop: int = 256, lr: float = 2e-5,
                  downscale: int = 2, seed: int = 0, model_id: str = "fastae-codec-custom",
                  weights_dtype: str = None, time_limit: float = None, progress: bool = True,
                  checkpoint_every: int = 500, amp=True, quality_order=None, analysis_widths=None,
                  new_lr: float = None) -> Path:
    """Fine-tune the encoder of the codec file ``init`` on random crops of the photos in ``data``
    (see the module docstring). One quality per step, in the order ``quality_order`` (default 1, 2,
    ..., every quality of ``init``). Writes ``out``/codec.safetensors (``export_codec`` with
    ``model_id`` and ``weights_dtype``) every ``checkpoint_every`` steps and at the end, and
    ``out``/history.json (each quality's mean loss, rate and PSNR over each stretch, noise for
    rounding as in training); ``time_limit`` (seconds) ends early at a checkpoint. Returns the
    codec file's path. ``weights_dtype`` (default: the one of ``init``'s convolution weights) must
    keep the decoder's tensors as they are: every export is checked against ``init``, tensor by
    tensor, and one that would change the decoder is refused (ValueError) before it is written.
    ``analysis_widths`` (three channel counts, each at least ``init``'s) and ``new_lr``: see the
    module docstring."""
    from tqdm.auto import tqdm

    for name, value in (("steps", steps), ("batch_size", batch_size), ("crop", crop),
                        ("checkpoint_every", checkpoint_every), ("downscale", downscale)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train_encoder: {name} must be an integer >= 1, got {value!r}")
    if new_lr is None:
        new_lr = 10 * lr if isinstance(lr, (int, float)) else lr
    for name, value in (("lr", lr), ("new_lr", new_lr)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < math.inf):
            raise ValueError(f"train_encoder: {name} must be a positive number, got {value!r}")
    if time_limit is not None and not 0 <= time_limit < math.inf:
        raise ValueError(f"train_encoder: time_limit must be a number of seconds >= 0, got {time_limit!r}")
    model, init_id, init_hash = read_model_file(init)
    init_tensors = read_safetensors(init)
    if weights_dtype is None:
        weights_dtype = "float16" if init_tensors["model.g_s.0.weight"].dtype == torch.float16 else "float32"
    if crop % model.stride:
        raise ValueError(f"train_encoder: crop must be a positive multiple of {model.stride}, got {crop}")
    order = _quality_order(quality_order, model.qualities)
    model = model.float()
    old_entries = {}  # {name: bool mask of the entries copied from init} of the widened encoder's tensors
    if analysis_widths is not None:
        from fastae.train.widen import widen_analysis

        try:
            wide = widen_analysis(model, analysis_widths, seed=seed)
            marked = copy.deepcopy(model)  # widened again with NaN in init's entries: where they went
            with torch.no_grad():
                for p in encoder_parameters(marked).values():
                    p.fill_(math.nan)
            marks = encoder_parameters(widen_analysis(marked, analysis_widths, seed=seed))
        except ValueError as e:
            raise ValueError(f"train_encoder: {e}") from None
        old_entries = {name: torch.isnan(m) for name, m in marks.items() if m.shape != model.state_dict()[name].shape}
        model = wide
    amp_dtype = autocast_dtype(amp, torch.device("cpu"), cpu=True)
    out = Path(out)
    path = out / "codec.safetensors"
    if path.exists():
        raise FileExistsError(f"train_encoder: {out} already holds {path.name}; choose another folder (to continue "
                              f"from that file, copy it out of {out} and pass the copy as init)")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    photos = load_photos(data, downscale, min_side=crop)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    train = encoder_parameters(model)
    for p in train.values():
        p.requires_grad_(True)
    fast = [p for name, p in train.items() if name.startswith("log_gain")]
    slow = [p for name, p in train.items() if not name.startswith("log_gain")]
    # the widened tensors' group learns at new_lr; their old entries' steps are scaled back to lr's
    widened = [p for name, p in train.items() if name in old_entries]
    slow = [p for p in slow if all(p is not w for w in widened)]
    optimizer = torch.optim.Adam([{"params": slow, "scale": 1.0, "lr0": lr}, {"params": fast, "scale": 10.0, "lr0": lr},
                                  {"params": widened, "scale": 1.0, "lr0": new_lr}], lr=lr)
    masks = [old_entries[name] for name, p in train.items() if name in old_entries]
    run = {"init": init_id, "init_hash": init_hash.hex(), "steps": steps, "lr": lr, "batch_size": batch_size,
           "crop": crop, "seed": seed, "analysis_widths": list(model.analysis_widths),
           "new_lr": new_lr if old_entries else None}
    history, sums = [], {}
    began = time.monotonic()
    bar = tqdm(total=steps, desc="train encoder", disable=not progress, dynamic_ncols=True)
    model.train()
    for step in range(steps):
        quality = order[step % len(order)]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, group["lr0"]) * group["scale"]
        x = random_crops(photos, batch_size, crop, generator)
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            terms = model.rd_loss(x, quality)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_encoder: loss is {loss.item()} at step {step} (quality {quality}); "
                                     f"the last export is {path}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(train.values()), 1.0)
        before = [p.detach().clone() for p in widened]
        optimizer.step()
        with torch.no_grad():
            for p, b, m in zip(widened, before, masks):
                p.copy_(torch.where(m, b + (p - b) * (lr / new_lr), p))
        acc = sums.setdefault(quality, [0, 0.0, 0.0, 0.0])
        for i, v in enumerate((1, loss.item(), terms["bpp"].item(), terms["psnr"].item())):
            acc[i] += v
        bar.update(1)
        done = step + 1
        stop = time_limit is not None and time.monotonic() - began > time_limit
        if done % checkpoint_every == 0 or done == steps or stop:
            history += [{"step": done, "quality": q, "loss": l / n, "bpp": b / n, "psnr": p / n}
                        for q, (n, l, b, p) in sorted(sums.items())]
            sums = {}
            model.eval()
            _export_checked(model, path, model_id, weights_dtype, init, init_tensors)
            model.train()
            write_text(out / "history.json", json.dumps({**run, "history": history}, indent=1))
            if stop:
                break
    bar.close()
    return path
