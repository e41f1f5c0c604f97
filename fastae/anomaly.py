"""Anomaly detection by reconstruction error: an autoencoder trained on normal data reconstructs
anomalies badly, so a high per-sample error flags them.

    s = scores(model, x_test)                             # float32 [N]
    t = fit_threshold(scores(model, x_val_normal), 0.99)  # flag the worst 1% of normal data
    report = evaluate(model, x_test, is_anomaly, threshold=t)
"""

import numbers
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn


def _numpy_1d(name: str, values) -> np.ndarray:
    a = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected {name} a non-empty 1-D sequence, got shape {list(a.shape)}")
    return a


def scores(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Per-sample reconstruction error, ``model.recon_error(batch)``, in batches without gradients.

    Args:
        model: a module with ``recon_error(x) -> [B]`` (per-sample mean squared error, as the
            fastae models have). Run in eval mode; every submodule's training mode is restored after.
        x: ``[N, ...]`` as the model takes it; each batch is moved to the model's device.
        batch_size: samples per call of ``recon_error``.

    Returns:
        float32 ``[N]`` on the CPU.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"scores: expected batch_size a positive int, got {batch_size!r}")
    device = next(model.parameters(), x).device  # a parameter-free model runs where x is
    # Each submodule's own mode, since model.train(True) would also switch ones that were left in eval.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = []
            for batch in x.split(batch_size):
                err = model.recon_error(batch.to(device))
                if err.shape != (len(batch),):
                    raise ValueError(f"scores: expected model.recon_error to return shape [{len(batch)}] for a batch "
                                     f"of {len(batch)}, got {list(err.shape)}")
                out.append(err.float().cpu())
    finally:
        for m, training in modes:
            m.training = training
    return torch.cat(out) if out else torch.empty(0)


def fit_threshold(scores, quantile: float = 0.99) -> float:
    """The ``quantile`` of scores (of normal data): above it a sample is flagged, so about
    ``1 - quantile`` of normal data is flagged too. scores: a 1-D tensor or array."""
    if not 0 < quantile < 1:
        raise ValueError(f"fit_threshold: expected quantile in (0, 1), got {quantile!r}")
    return float(np.quantile(_numpy_1d("scores", scores).astype(np.float64), quantile))


def roc_auc(scores, is_anomaly) -> float:
    """Area under the ROC curve: the chance that a random anomaly scores above a random normal
    sample, ties counted half (the Mann–Whitney U statistic over n_anomaly * n_normal).

    Args:
        scores: ``[N]`` tensor or array, higher = more anomalous; no NaN.
        is_anomaly: ``[N]`` bool or 0/1; both classes must be present.
    """
    s = _numpy_1d("scores", scores).astype(np.float64)
    y = _numpy_1d("is_anomaly", is_anomaly)
    if y.shape != s.shape:
        raise ValueError(f"roc_auc: expected is_anomaly of shape {list(s.shape)} like scores, got {list(y.shape)}")
    if np.isnan(s).any():
        raise ValueError("roc_auc: scores contain NaN")
    y = y.astype(bool)
    pos, neg = s[y], np.sort(s[~y])
    if not len(pos) or not len(neg):
        raise ValueError(f"roc_auc: expected both classes, got {len(pos)} anomalies and {len(neg)} normal samples")
    # Per anomaly: normals strictly below count 1, equal ones 1/2; 2U = (#below) + (#below or equal).
    twice_u = np.searchsorted(neg, pos, "left").sum() + np.searchsorted(neg, pos, "right").sum()
    return float(twice_u / (2 * len(pos) * len(neg)))


def evaluate(model: nn.Module, x: Tensor, is_anomaly, threshold: Optional[float] = None) -> dict:
    """Score x with ``scores`` and measure how well the scores separate the anomalies.

    Args:
        model, x: as ``scores``.
        is_anomaly: ``[N]`` bool or 0/1 labels; both classes must be present.
        threshold: samples scoring above it are flagged. None: ``fit_threshold`` of the normal
            samples' scores here at 0.99 — optimistic, since it is fitted on the data it is judged
            on; pass one fitted on held-out normal data for an honest precision and recall.

    Returns:
        ``{"roc_auc", "threshold", "precision", "recall", "mean_score_normal", "mean_score_anomaly"}``,
        all floats; precision is NaN when nothing is flagged.
    """
    s = scores(model, x).numpy().astype(np.float64)
    y = _numpy_1d("is_anomaly", is_anomaly).astype(bool)
    auc = roc_auc(s, y)  # also checks y's shape and that both classes are present
    if threshold is None:
        threshold = fit_threshold(s[~y])
    flagged = s > threshold
    true_pos = int((flagged & y).sum())
    return {
        "roc_auc": auc,
        "threshold": float(threshold),
        "precision": true_pos / int(flagged.sum()) if flagged.any() else float("nan"),
        "recall": true_pos / int(y.sum()),
        "mean_score_normal": float(s[~y].mean()),
        "mean_score_anomaly": float(s[y].mean()),
    }
