"""fastae.train.widen: a widened codec codes as the narrow one did, and trains from there."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastae.codec.model_file import export_codec
from fastae.models.codec import CheckerboardCodec, FactorizedCodec, HyperpriorCodec, build_codec
from fastae.train import load_model
from fastae.train.codec import train_codec
from fastae.train.widen import widen_analysis, widen_codec
from tests._util import experiment_script

KINDS = [FactorizedCodec, HyperpriorCodec, CheckerboardCodec]


def _trained_like(cls, **sizes):
    """A model whose every weight is nonzero and random (as after training), hyper-input rounded."""
    torch.manual_seed(1)
    model = cls(lambdas=(0.01, 0.05, 0.2), **sizes)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 4:
                p.add_(torch.randn_like(p) * p.std() * 0.5)
    model.hyper_input = "rounded"
    return model.eval()


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.kind)
def test_widened_model_codes_as_the_narrow_one(cls):
    narrow = _trained_like(cls, N=8, M=12, widths=(6, 8, 10))
    wide = widen_codec(narrow, N=16, M=20, widths=(6, 12, 16), lambdas=(0.01, 0.05, 0.2, 0.4)).eval()
    assert wide.config["widths"] == [6, 12, 16] and wide.qualities == 4 and type(wide) is cls
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        for q in (1, 2, 3):
            a, b = narrow(x, q, noise=False), wide(x, q, noise=False)
            torch.testing.assert_close(b["x_hat"], a["x_hat"], atol=1e-5, rtol=1e-5)
            # The new channels code zeros: the new latents under N(0, 0.11) (nearly free), the new
            # hyper-latents (or a factorized model's new latents) under the old channel likeliest at 0.
            prior = narrow.priors[q - 1]
            zero_bits = -math.log2(float(prior.pmf(torch.zeros(1)).max()))
            per_image = 64 * 128
            if cls is FactorizedCodec:
                extra = (20 - 12) * per_image / 256 * zero_bits
            else:
                gauss = -math.log2(math.erf(0.5 / 0.11 / math.sqrt(2)))
                extra = (16 - 8) * per_image / 4096 * zero_bits + (20 - 12) * per_image / 256 * gauss
            torch.testing.assert_close(b["bpp"] - a["bpp"], torch.tensor(extra / per_image), atol=2e-4, rtol=1e-2)
            y_a, y_b = narrow.analysis(x, q), wide.analysis(x, q)
            torch.testing.assert_close(y_b[:, :12], y_a, atol=1e-5, rtol=1e-5)
            assert y_b[:, 12:].abs().max() < 0.5  # the new latents round to 0
        # The new quality starts as the last old one.
        torch.testing.assert_close(wide(x, 4, noise=False)["x_hat"], b["x_hat"])


@pytest.mark.slow
def test_widened_model_learns_in_its_new_channels():
    narrow = _trained_like(CheckerboardCodec, N=8, M=8)
    wide = widen_codec(narrow, N=12, M=12, widths=(8, 12, 12)).train()
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    opt = torch.optim.Adam(wide.parameters(), 1e-3)
    torch.manual_seed(0)
    for step in range(4):
        loss = wide.rd_loss(torch.rand(2, 3, 64, 64), step % 3 + 1)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = wide.state_dict()
    # The weights through which the old outputs read new channels leave zero (the paths open).
    # (a transposed convolution's weight is [in, out])
    for name, rows, cols in (("g_s.2.weight", slice(8, 12), slice(0, 8)), ("g_a.4.weight", slice(0, 8), slice(8, 12)),
                             ("h_s.4.weight", slice(0, 8), slice(12, 18))):
        assert before[name][rows, cols].abs().max() == 0, name
        assert (after[name][rows, cols] - before[name][rows, cols]).abs().max() > 0, name


@pytest.mark.parametrize("change, match", [
    (dict(M=4), "M must be an integer >= the model's 8"),
    (dict(widths=(8, 4, 8)), r"widths\[1\] must be"),
    (dict(lambdas=(0.02, 0.05, 0.2)), "lambdas must begin with"),
    (dict(N=True), "N must be an integer"),
])
def test_widen_refuses_narrowing(change, match):
    with pytest.raises(ValueError, match=match):
        widen_codec(_trained_like(HyperpriorCodec, N=8, M=8), **change)


@pytest.mark.slow
def test_train_codec_init_widens_a_narrower_codec_file(tmp_path):
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    narrow = _trained_like(CheckerboardCodec, N=8, M=8)
    export_codec(narrow, tmp_path / "narrow.safetensors", model_id="test-narrow")
    out = tmp_path / "wide"
    train_codec(photos, out, steps=1, stop_at=1, crop=64, batch_size=1, downscale=1, N=8, M=12, widths=(8, 8, 12),
                lambdas=(0.01, 0.05, 0.2), kind="checkerboard", init=tmp_path / "narrow.safetensors",
                amp=False, progress=False, lr=1e-12, hyper_input="rounded")
    wide = load_model(out).eval()
    assert wide.config["M"] == 12 and build_codec(wide.config).widths == (8, 8, 12)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # after one step at a vanishing learning rate the wide model still codes as the narrow
        torch.testing.assert_close(wide(x, 2, noise=False)["x_hat"], narrow(x, 2, noise=False)["x_hat"],
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot start this model"):
        train_codec(photos, tmp_path / "narrower", steps=1, crop=64, batch_size=1, downscale=1, N=8, M=4,
                    lambdas=(0.01, 0.05, 0.2), kind="checkerboard", init=tmp_path / "narrow.safetensors",
                    amp=False, progress=False)


def test_uniform_widths_keep_the_config_of_earlier_models():
    assert "widths" not in FactorizedCodec(N=8, M=8).config
    assert "widths" not in FactorizedCodec(N=8, M=8, widths=(8, 8, 8)).config
    with pytest.raises(ValueError, match="widths must be three positive integers"):
        FactorizedCodec(N=8, M=8, widths=(8, 8))


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.kind)
def test_widened_analysis_codes_as_the_narrow_one_with_the_same_decoder(cls):
    narrow = _trained_like(cls, N=8, M=12, widths=(6, 8, 10))
    wide = widen_analysis(narrow, (12, 16, 10)).eval()
    assert wide.config["analysis_widths"] == [12, 16, 10] and wide.config["widths"] == [6, 8, 10]
    assert build_codec(wide.config).analysis_widths == (12, 16, 10) and wide.g_a[2].weight.shape == (16, 12, 5, 5)
    assert wide.g_s[0].weight.shape == narrow.g_s[0].weight.shape
    state, old = wide.state_dict(), narrow.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in old.items() if not k.startswith("g_a."))
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        for q in (1, 3):
            torch.testing.assert_close(wide.analysis(x, q), narrow.analysis(x, q), atol=1e-5, rtol=1e-5)
            a, b = narrow(x, q, noise=False), wide(x, q, noise=False)
            torch.testing.assert_close(b["x_hat"], a["x_hat"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b["bpp"], a["bpp"], atol=1e-5, rtol=1e-5)
    # widening the whole model keeps the wider analysis
    assert widen_codec(wide, N=10).analysis_widths == (12, 16, 10)
    with pytest.raises(ValueError, match=r"analysis_widths\[2\] must be >= the model's 10, got 8"):
        widen_analysis(narrow, (12, 16, 8))
    with pytest.raises(ValueError, match="analysis_widths.*must be three positive integers"):
        widen_analysis(narrow, (12, 16))


def test_analysis_widths_enter_the_config_only_where_they_differ():
    assert "analysis_widths" not in FactorizedCodec(N=8, M=8, widths=(4, 6, 8), analysis_widths=(4, 6, 8)).config
    model = HyperpriorCodec(N=8, M=8, analysis_widths=(16, 16, 8))
    assert model.config["analysis_widths"] == [16, 16, 8] and "widths" not in model.config
    assert build_codec(model.config).state_dict().keys() == model.state_dict().keys()


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.kind)
def test_split_widened_analysis_codes_as_the_narrow_one(cls):
    """experiments/split_widen.py: every new channel a copy of an old one (more than twice as wide
    repeats them), the next layer's weights shared among the copies; the same latents and decoder."""
    split_widen = experiment_script("split_widen")
    narrow = _trained_like(cls, N=8, M=12, widths=(6, 8, 10))
    wide = split_widen.split_analysis(narrow, (13, 8, 25), seed=1).eval()
    assert wide.analysis_widths == (13, 8, 25) and wide.g_a[4].weight.shape == (25, 8, 5, 5)
    state, old = wide.state_dict(), narrow.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in old.items() if not k.startswith("g_a."))
    # the first layer's new channels are copies of old ones (its inputs, the pixels, are not split)
    first, first_old = wide.g_a[0].weight.detach(), narrow.g_a[0].weight.detach()
    assert all(any(torch.equal(w, o) for o in first_old) for w in first[6:])
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        for q in (1, 3):
            torch.testing.assert_close(wide.analysis(x, q), narrow.analysis(x, q), atol=1e-5, rtol=1e-5)
