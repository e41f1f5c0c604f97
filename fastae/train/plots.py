"""Training plots, written as PNG files: loss curves, reconstructions, latent spaces, image grids.

Figures are made with ``matplotlib.figure.Figure`` and its Agg canvas, never pyplot: nothing is
registered globally (no figure to leak, no backend switched under a notebook), and the plots
work on machines without a display. Each PNG is written to a temporary file in the target
folder and renamed over the target (``fastae._io.atomic_path``), so a crash never leaves half a file.

    plot_loss({"train_loss": [...], "val_loss": [...]}, "runs/ae/loss.png")
    plot_reconstructions(x[:10], model(x[:10]), "runs/ae/recon.png", image_shape=(28, 28))
    plot_latent(model.encode(x), labels, "runs/ae/latent.png")
    plot_images(samples, "runs/vae/samples.png", nrow=8)
"""

import math
import os
from pathlib import Path
from typing import Optional, Union

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from fastae._io import atomic_path

PathLike = Union[str, os.PathLike]
DPI = 100
_MAX_CLASSES = 20  # integer labels with at most this many values get a legend, more a colorbar


def _save(fig: Figure, path: PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _as_images(name: str, images, image_shape) -> np.ndarray:
    """[B, C, H, W] (or [B, D] with image_shape (H, W) or (C, H, W)), C 1 or 3, uint8 or float in
    [0, 1] -> float [B, H, W, C] clipped to [0, 1]."""
    t = torch.as_tensor(images).detach().cpu()
    if image_shape is not None:
        shape = tuple(image_shape)
        shape = (1, *shape) if len(shape) == 2 else shape
        if len(shape) != 3 or t.dim() < 1 or t[0].numel() != math.prod(shape):
            raise ValueError(f"expected {name} of shape [B, {math.prod(shape)}] for image_shape {tuple(image_shape)}, "
                             f"got {list(t.shape)}")
        t = t.reshape(len(t), *shape)
    if t.dim() != 4 or t.shape[1] not in (1, 3) or len(t) == 0:
        raise ValueError(f"expected {name} of shape [B, C, H, W] with C 1 or 3 and B > 0, or [B, D] with "
                         f"image_shape, got {list(t.shape)}")
    t = t.float() / 255 if t.dtype == torch.uint8 else t.float()
    return t.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _mosaic(images: np.ndarray, ncol: int, pad: int = 1) -> np.ndarray:
    """[B, H, W, C] -> one [rows * (H + pad) + pad, ncol * (W + pad) + pad, C] image, row by row, on white."""
    b, h, w, c = images.shape
    rows = -(-b // ncol)
    tiles = np.ones((rows * ncol, h + pad, w + pad, c), dtype=images.dtype)
    tiles[:b, pad:, pad:] = images
    grid = tiles.reshape(rows, ncol, h + pad, w + pad, c).transpose(0, 2, 1, 3, 4).reshape(rows * (h + pad), -1, c)
    return np.pad(grid, ((0, pad), (0, pad), (0, 0)), constant_values=1)


def _show_mosaic(images: np.ndarray, ncol: int) -> tuple[Figure, object]:
    h, w = images.shape[1:3]
    grid = _mosaic(images, ncol)
    width = min(16.0, ncol * min(4.0, max(1.0, w / 64)))  # about 64 px of image per inch, at most 16 in
    fig = Figure(figsize=(width, max(1.0, width * grid.shape[0] / grid.shape[1])), layout="constrained")
    ax = fig.add_subplot()
    grey = grid.shape[2] == 1
    ax.imshow(grid[..., 0] if grey else grid, cmap="gray" if grey else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig, ax


def plot_loss(history: dict, path: PathLike, title: Optional[str] = None) -> Path:
    """Plot every per-epoch list in history (e.g. ``train_loss``, ``val_loss``, ``val_mse``)
    against the epoch, on a log y axis when every finite value is positive.

    Args:
        history: name -> list (or tuple) of numbers, one per epoch; other values are ignored.
        path: the PNG to write.
    """
    series = {}
    for key, values in history.items():
        if isinstance(values, (list, tuple)) and len(values):
            try:
                series[key] = np.array([float(v) for v in values])
            except (TypeError, ValueError) as e:
                raise ValueError(f"plot_loss: expected history[{key!r}] a list of numbers, got {values!r}") from e
    if not series:
        raise ValueError(f"plot_loss: expected history to hold at least one non-empty list, got keys {list(history)}")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for key, y in series.items():
        ax.plot(np.arange(1, len(y) + 1), y, marker=".", label=key)
    if all((y[np.isfinite(y)] > 0).all() for y in series.values()):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("value")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_reconstructions(inputs: Tensor, outputs: Tensor, path: PathLike, n: int = 10,
                         image_shape: Optional[tuple] = None, title: Optional[str] = None) -> Path:
    """The first n inputs (top row) above their reconstructions (bottom row).

    Args:
        inputs, outputs: ``[B, C, H, W]`` with C 1 (grey) or 3 (RGB), or flat ``[B, D]`` with
            ``image_shape`` ``(H, W)`` or ``(C, H, W)``; float in [0, 1] (clipped) or uint8.
        path: the PNG to write.
    """
    x, y = _as_images("inputs", inputs, image_shape), _as_images("outputs", outputs, image_shape)
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"plot_reconstructions: expected outputs of image shape {list(x.shape[1:])} like inputs, "
                         f"got {list(y.shape[1:])} (as [H, W, C])")
    n = min(n, len(x), len(y))
    if n < 1:
        raise ValueError(f"plot_reconstructions: expected n >= 1, got {n}")
    fig, ax = _show_mosaic(np.concatenate([x[:n], y[:n]]), ncol=n)
    h = x.shape[1] + 1
    ax.set_yticks([h / 2, h * 1.5], ["input", "reconstruction"])
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_images(images: Tensor, path: PathLike, nrow: int = 8, image_shape: Optional[tuple] = None,
                title: Optional[str] = None) -> Path:
    """A grid of images, nrow per row (as torchvision's make_grid): VAE samples, latent manifolds.

    Args:
        images: ``[B, C, H, W]`` with C 1 or 3, or flat ``[B, D]`` with ``image_shape``; float in
            [0, 1] (clipped) or uint8.
        path: the PNG to write.
    """
    if nrow < 1:
        raise ValueError(f"plot_images: expected nrow >= 1, got {nrow}")
    x = _as_images("images", images, image_shape)
    fig, ax = _show_mosaic(x, ncol=min(nrow, len(x)))
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_latent(codes: Tensor, labels: Optional[Tensor], path: PathLike, title: Optional[str] = None) -> Path:
    """Scatter latent codes, coloured by label.

    Args:
        codes: float ``[N, d]``. d == 1: against the sample index; d == 2: as they are; d > 2:
            projected on the first two principal components (PCA; the axes say so, with the
            share of variance each explains).
        labels: ``[N]`` or None. Integer labels with at most 20 values get a colour each and a
            legend; other numbers a colormap and a colorbar.
        path: the PNG to write.
    """
    z = torch.as_tensor(codes).detach().cpu().double()
    if z.dim() != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"plot_latent: expected codes of shape [N, d] with N, d > 0, got {list(z.shape)}")
    n, d = z.shape
    if d == 1:
        xy, axis_labels = torch.stack([torch.arange(n, dtype=z.dtype), z[:, 0]], 1), ("sample index", "z")
    elif d == 2:
        xy, axis_labels = z, ("z1", "z2")
    else:
        centred = z - z.mean(0)
        # The covariance is only d x d, so its eigenvectors are the principal axes at any N.
        var, axes = torch.linalg.eigh(centred.T @ centred)
        share = (var.flip(0) / var.sum().clamp_min(torch.finfo(z.dtype).tiny)).tolist()
        xy = centred @ axes[:, [-1, -2]]
        axis_labels = tuple(f"PCA {i + 1} ({share[i]:.0%} of variance)" for i in range(2))
    xy = xy.numpy()
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.add_subplot()
    size = 4 if n > 2000 else 12
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7)
    else:
        lab = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        if lab.shape != (n,):
            raise ValueError(f"plot_latent: expected labels of shape [{n}] like codes, got {list(lab.shape)}")
        classes = np.unique(lab)
        if lab.dtype.kind in "biu" and len(classes) <= _MAX_CLASSES:
            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for i, k in enumerate(classes):
                ax.scatter(*xy[lab == k].T, s=size, alpha=0.7, color=cmap(i), label=str(k))
            ax.legend(title="label", markerscale=8 / size ** 0.5, loc="best", fontsize="small")
        else:
            points = ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.7, c=lab.astype(np.float64), cmap="viridis")
            fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if title:
        ax.set_title(title)
    return _save(fig, path)
