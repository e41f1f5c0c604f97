"""``fit``: train any fastae autoencoder — progress bar, per-epoch validation, history,
atomic checkpoints, resume, NaN/inf guard, AMP, torch.compile and DistributedDataParallel."""

import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset, default_collate

from fastae._device import autocast_dtype, resolve_device
from fastae.train.checkpoint import STATE, WEIGHTS, resume_checkpoint, save_checkpoint

OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam", "adamw")


def _fused_ok(params) -> bool:
    """Whether torch's fused (single-kernel) Adam/AdamW can take these parameters: floating, on the
    CPU or a CUDA device. On the 2-core CPU of the README it steps the MLP autoencoder's 8
    parameters in 1.1 ms against 5.3 ms (for-loop) and 9.0 ms (foreach), torch's default there
    (min of 5x100 steps, 2026-12-02; docs/ops.md)."""
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [p for group in params for p in group["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def make_optimizer(name, params, lr, weight_decay=0.0, momentum=0.9):
    """An optimizer by name; ``weight_decay`` is L2 regularisation (decoupled for adamw). Adam and
    AdamW run torch's fused implementation where the parameters allow it (the same update, several
    times faster a step on the CPU)."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=_fused_ok(params) or None)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fused_ok(params) or None)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")


def _device(device):
    return resolve_device(device, "device")


def _dataset(data, name):
    if isinstance(data, torch.Tensor):
        if not data.is_floating_point():
            raise TypeError(f"{name}: expected a float tensor of inputs in [0, 1], got {data.dtype}")
        return _Rows(data)
    if isinstance(data, Dataset):
        return data
    raise TypeError(f"{name}: expected a float Tensor [N, ...] or a torch Dataset, got {type(data).__name__}")


class _Rows(TensorDataset):
    """A tensor of inputs as a Dataset whose batches are one indexing of the tensor: the DataLoader
    calls ``__getitems__`` with a batch's indices (same sampler, same order), instead of
    ``__getitem__`` per row and a ``torch.stack`` (2.5 ms a batch of 256 MNIST rows, a tenth of an
    MLP autoencoder's step on the CPU)."""

    def __getitems__(self, indices):
        return self.tensors[0][torch.as_tensor(indices, dtype=torch.long)]


def _collate(batch):
    """The DataLoader's collate_fn: a _Rows batch is already a tensor; anything else as torch's."""
    return batch if isinstance(batch, torch.Tensor) else default_collate(batch)


class _PhaseLoss(torch.nn.Module):
    """model.loss as a forward, so that DistributedDataParallel sees (and syncs) each step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, phase):
        return self.model.loss(x, phase)


def _distributed():
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); (rank, world size)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _first(batch):
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def fit(model, train, val=None, epochs=50, batch_size=256, optimizer="adam", lr=1e-3, weight_decay=0.0,
        momentum=0.9, amp="auto", device="auto", compile=False, seed=0, out=None, resume=False, progress=True):
    """Train ``model`` (a fastae.models.Autoencoder) and return its history.

    Args:
        train, val: float tensors of inputs ``[N, ...]`` in [0, 1], or Datasets yielding them.
        optimizer: sgd, momentum, rmsprop, adam or adamw (one per model phase, e.g. the AAE's
            reconstruction, discriminator and generator phases); weight_decay is L2.
        amp: "auto" (bf16 autocast on a GPU, off on the CPU), "bf16", "fp16" or "off".
        out: folder for the checkpoint (model.safetensors, config.json, training_state.pt,
            history.json: fastae.train.checkpoint), rewritten atomically after every epoch.
        resume: continue from the checkpoint in ``out`` (same model and config) instead of epoch 0.

    Returns:
        history: dict of per-epoch lists — epoch, train_loss, each other term as train_<term>,
        val_loss, val_mse (when val is given) and seconds.

    The MLP autoencoder with the MSE (and the denoising one) steps without building an autograd
    graph (``MLPAutoencoder._loss_and_grads``: the same loss and gradients bit for bit, 0.2 ms
    less a step at batch 256 on a 2-core CPU, 8%); other models, DDP and ``compile`` use autograd.

    Raises FloatingPointError when the loss becomes NaN or inf; the last good checkpoint stays in out.
    Deterministic on the CPU for a fixed seed. Under torchrun, every process trains its shard with
    DistributedDataParallel and rank 0 writes the files.
    """
    if not (hasattr(model, "phases") and hasattr(model, "config")):
        raise TypeError(f"fit: expected a fastae autoencoder (fastae.models), got {type(model).__name__}")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    rank, world = _distributed()
    device = _device(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.manual_seed(seed)
    model.to(device)
    optimizers = {name: make_optimizer(optimizer, params, lr, weight_decay, momentum)
                  for name, params in model.phases()}
    history, start = {}, 0
    if resume:
        if out is None or not (Path(out) / STATE).exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint to resume in {out}")
        start, history, _ = resume_checkpoint(out, model, optimizers)
    amp_dtype = autocast_dtype(amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    train_set = _dataset(train, "train")
    if len(train_set) == 0:
        raise ValueError("fit: the training set is empty")
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=seed) if world > 1 else None
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size, shuffle=sampler is None, sampler=sampler, generator=generator,
                        drop_last=len(train_set) > batch_size, collate_fn=_collate)
    step_fn = _PhaseLoss(model)
    # loss + backward without autograd where the model has that path (MLPAutoencoder with the MSE:
    # the same values; see its _loss_and_grads); not under DDP, compile or a grad scaler.
    direct = getattr(model, "_loss_and_grads", None)
    if world > 1 or compile or scaler.is_enabled() or list(optimizers) != ["ae"]:
        direct = None
    if world > 1:
        step_fn = torch.nn.parallel.DistributedDataParallel(step_fn, find_unused_parameters=len(optimizers) > 1)
    if compile:
        step_fn = torch.compile(step_fn)

    if start >= epochs and rank == 0:
        print(f"fit: the checkpoint in {out} is at epoch {start}, not before epochs={epochs}: nothing to train "
              f"(raise --epochs to continue)")
    for epoch in range(start, epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        generator.manual_seed(seed + epoch)  # the same shuffle for an epoch whether resumed or not
        began = time.perf_counter()
        model.train()
        sums, seen = {}, 0
        bar = _progress(loader, f"epoch {epoch + 1}/{epochs}", progress and rank == 0)
        for step, batch in enumerate(bar, 1):
            x = _first(batch).to(device, non_blocking=True)
            for phase, opt in optimizers.items():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    terms = direct(x) if direct is not None else None  # gradients set: no backward
                    backward = terms is None
                    if backward:
                        terms = step_fn(x, phase)
                if backward:
                    scaler.scale(terms["loss"]).backward()
                scaler.step(opt)
                scaler.update()
                for k, v in terms.items():  # summed on the device: no sync per step
                    key = k if phase == "ae" else f"{phase}_{k}"
                    sums[key] = sums.get(key, 0.0) + v.detach().float() * len(x)
            seen += len(x)
            if step % 25 == 0 or step == len(loader):
                _check_finite(sums, epoch, step, out)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{sums['loss'].item() / seen:.4g}")
        sums = {k: v.item() for k, v in sums.items()}
        record = {"epoch": epoch + 1} | {("train_loss" if k == "loss" else f"train_{k}"): v / seen
                                         for k, v in sums.items()}
        if val is not None:
            record |= {f"val_{k}": v for k, v in evaluate(model, val, batch_size, device, amp_dtype).items()}
        record["seconds"] = time.perf_counter() - began
        for k, v in record.items():
            history.setdefault(k, []).append(v)
        if out is not None and rank == 0:
            save_checkpoint(out, model, epoch + 1, optimizers, history)
    return history


@torch.no_grad()
def evaluate(model, data, batch_size=1024, device=None, amp_dtype=None):
    """Mean of each term of model.loss over ``data`` (the "ae" phase, eval mode): {loss, mse, …}."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums, seen = {}, 0
    for batch in DataLoader(_dataset(data, "val"), batch_size, collate_fn=_collate):
        x = _first(batch).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            terms = model.loss(x, "ae")
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.float().item() * len(x)
        seen += len(x)
    model.train(was_training)
    return {k: v / max(seen, 1) for k, v in sums.items()}


def _check_finite(sums, epoch, step, out):
    bad = [k for k, v in sums.items() if not torch.isfinite(v)]
    if bad:
        kept = (f"; the last good checkpoint ({WEIGHTS}, epoch {epoch}) is in {out}"
                if out is not None and (Path(out) / WEIGHTS).exists() else "")
        raise FloatingPointError(f"training diverged: {', '.join(bad)} became NaN or inf in epoch {epoch + 1} "
                                 f"by step {step}{kept}; try a lower learning rate")


def _progress(loader, desc, enabled):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
