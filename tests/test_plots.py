"""fastae.train.plots: each plot writes one readable PNG of the expected size, atomically."""

from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from fastae.train.plots import plot_images, plot_latent, plot_loss, plot_reconstructions


def _png(path, only_file=True):
    """(width, height) of the PNG at path, checking it is the folder's only file (no temp files left)."""
    if only_file:
        assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def test_plot_loss(tmp_path):
    history = {"train_loss": [0.9, 0.5, 0.3], "val_loss": [1.0, 0.6, 0.4], "val_mse": [0.1, 0.05], "epochs": 3}
    assert _png(plot_loss(history, tmp_path / "loss.png")) == (700, 450)
    plot_loss({"kl": [0.0, -1.0, 2.0]}, tmp_path / "loss.png")  # not all positive: linear axis, same file
    assert _png(tmp_path / "loss.png") == (700, 450)
    with pytest.raises(ValueError, match="at least one non-empty list"):
        plot_loss({"train_loss": []}, tmp_path / "empty.png")
    with pytest.raises(ValueError, match="history\\['x'\\]"):
        plot_loss({"x": ["a"]}, tmp_path / "bad.png")


def test_plot_reconstructions(tmp_path):
    x = torch.rand(12, 1, 28, 28)
    w, h = _png(plot_reconstructions(x, 1 - x, tmp_path / "grey.png"))
    assert w > 4 * h  # two rows of ten
    flat = plot_reconstructions(x.flatten(1), x.flatten(1), tmp_path / "flat.png", n=4, image_shape=(28, 28))
    assert _png(flat, only_file=False)[0] < w
    rgb = (torch.rand(3, 3, 16, 24) * 255).to(torch.uint8)
    w, h = _png(plot_reconstructions(rgb, rgb, tmp_path / "rgb.png"), only_file=False)
    assert 1.5 * h < w < 3 * h  # three columns of 24x16 in two rows
    with pytest.raises(ValueError, match="image_shape"):
        plot_reconstructions(x.flatten(1), x.flatten(1), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="like inputs"):
        plot_reconstructions(x, x[:, :, :14], tmp_path / "bad.png")


def test_plot_images(tmp_path):
    w, h = _png(plot_images(torch.rand(64, 784), tmp_path / "samples.png", nrow=8, image_shape=(1, 28, 28)))
    assert (w, h) == (800, 800)
    w, h = _png(plot_images(torch.rand(5, 3, 8, 8), tmp_path / "few.png", nrow=8), only_file=False)
    assert w > 3 * h  # one row of five
    with pytest.raises(ValueError, match="C 1 or 3"):
        plot_images(torch.rand(4, 2, 8, 8), tmp_path / "bad.png")


@pytest.mark.parametrize("d", [1, 2, 5])
@pytest.mark.parametrize("labels", ["none", "classes", "continuous"])
def test_plot_latent(tmp_path, d, labels):
    codes = torch.randn(300, d)
    label = {"none": None, "classes": torch.arange(300) % 10, "continuous": torch.rand(300)}[labels]
    assert _png(plot_latent(codes, label, tmp_path / "latent.png")) == (650, 600)


def test_plot_latent_axes_say_pca(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: seen.append(fig.axes[0].get_xlabel()))
    plot_latent(torch.randn(50, 8), None, tmp_path / "latent.png")
    assert seen[0].startswith("PCA 1 (") and seen[0].endswith("of variance)")
    with pytest.raises(ValueError, match=r"labels of shape \[50\]"):
        plot_latent(torch.randn(50, 2), torch.zeros(49), tmp_path / "bad.png")


def test_a_crash_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "loss.png"
    target.write_bytes(b"old")

    def crash(fig, tmp, **kwargs):
        Path(tmp).write_bytes(b"\x89PNG half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_loss({"train_loss": [1.0, 0.5]}, target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["loss.png"]
