"""fastae.anomaly: ROC AUC against a brute-force pair count, thresholds, scoring with a stub model."""

import numpy as np
import pytest
import torch
from torch import nn

from fastae.anomaly import evaluate, fit_threshold, roc_auc, scores


def _brute_auc(s, y):
    pos, neg = s[y], s[~y]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, 300).astype(np.float32)  # few values: many ties
    y = rng.random(300) < 0.3
    s[y] += rng.integers(0, 2, y.sum())  # anomalies a little higher
    assert roc_auc(s, y) == pytest.approx(_brute_auc(s, y), abs=1e-12)
    assert roc_auc(torch.from_numpy(s), torch.from_numpy(y.astype(np.int64))) == pytest.approx(_brute_auc(s, y))


def test_roc_auc_extremes():
    y = np.array([0, 0, 0, 1, 1], bool)
    assert roc_auc([0.1, 0.2, 0.3, 0.8, 0.9], y) == 1.0
    assert roc_auc([0.8, 0.9, 0.7, 0.1, 0.2], y) == 0.0
    assert roc_auc([0.5] * 5, y) == 0.5


def test_roc_auc_errors():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="is_anomaly of shape"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])


def test_fit_threshold():
    assert fit_threshold(torch.arange(101.0), 0.99) == pytest.approx(99.0)
    s = np.random.default_rng(0).normal(size=10000)
    assert (s > fit_threshold(s, 0.95)).mean() == pytest.approx(0.05, abs=1e-3)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="quantile in"):
            fit_threshold(s, bad)
    with pytest.raises(ValueError, match="non-empty"):
        fit_threshold([], 0.5)


class Stub(nn.Module):
    """recon_error = the per-sample mean of x squared; records how it was called."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.drop, self.frozen = nn.Dropout(0.5), nn.BatchNorm1d(3).eval()
        self.calls = []

    def recon_error(self, x):
        self.calls.append((len(x), self.training, self.drop.training, torch.is_grad_enabled()))
        return (x * self.scale).pow(2).flatten(1).mean(1)


def test_scores_with_stub():
    model = Stub()
    x = torch.randn(10, 2, 3, dtype=torch.float64)
    s = scores(model, x, batch_size=4)
    assert s.dtype == torch.float32 and s.shape == (10,)
    torch.testing.assert_close(s, x.pow(2).flatten(1).mean(1).float())
    assert model.calls == [(4, False, False, False), (4, False, False, False), (2, False, False, False)]
    assert model.training and model.drop.training and not model.frozen.training  # each mode restored


def test_scores_checks_recon_error_shape_and_restores_mode():
    model = Stub()
    model.recon_error = lambda x: x.flatten(1)  # per element, not per sample
    with pytest.raises(ValueError, match=r"return shape \[5\] for a batch of 5, got \[5, 3\]"):
        scores(model, torch.randn(5, 3))
    assert model.training
    with pytest.raises(ValueError, match="batch_size"):
        scores(model, torch.randn(5, 3), batch_size=0)


def test_evaluate():
    x = torch.cat([torch.full((8, 4), 0.1), torch.full((2, 4), 1.0)]) * torch.arange(1, 11.0)[:, None]
    is_anomaly = torch.tensor([False] * 8 + [True] * 2)
    expected = x.pow(2).mean(1)
    report = evaluate(Stub(), x, is_anomaly, threshold=float(expected[7]) - 1e-6)  # flags sample 7 too
    assert report["roc_auc"] == 1.0
    assert report["precision"] == pytest.approx(2 / 3) and report["recall"] == 1.0
    assert report["mean_score_normal"] == pytest.approx(expected[:8].mean().item())
    assert report["mean_score_anomaly"] == pytest.approx(expected[8:].mean().item())
    fitted = evaluate(Stub(), x, is_anomaly)  # threshold: 0.99 quantile of the normals
    assert expected[6] < fitted["threshold"] < expected[7]
    assert fitted["precision"] == 2 / 3  # sample 7 lies above the 99% quantile of the normals
    nothing = evaluate(Stub(), x, is_anomaly, threshold=1e9)
    assert np.isnan(nothing["precision"]) and nothing["recall"] == 0.0
