"""fastae.train.codec: resume equals one run, hyperprior training, warm start from another checkpoint."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fastae.codec.api import load_codec
from fastae.codec.model_file import export_codec
from fastae.models.codec import CheckerboardCodec, CodecModel, HyperpriorCodec
from fastae.train import load_model
from fastae.train.codec import load_photos, random_crops, train_codec

TINY = dict(N=8, M=8, lambdas=(0.01, 0.1), batch_size=2, downscale=1, progress=False, checkpoint_every=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Smooth synthetic photos (gradients plus a few shapes): compressible, unlike noise."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128] / 96.0
    for i in range(3):
        rgb = np.stack([np.sin(xx * (i + 2) + c) * 0.4 + 0.5 + 0.1 * yy for c in range(3)], axis=2)
        top, left = rng.integers(0, 60, 2)
        rgb[top:top + 30, left:left + 40] = rng.random(3)
        Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8)).save(root / f"p{i}.png")
    (root / "readme.txt").write_text("not an image: skipped")
    return root


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["factorized", "hyperprior", "checkerboard"])
def test_resume_equals_one_run(photos, tmp_path, kind):
    crop = 64
    one = train_codec(photos, tmp_path / "one", steps=6, crop=crop, kind=kind, amp=False, **TINY)
    train_codec(photos, tmp_path / "two", steps=6, crop=crop, kind=kind, amp=False, time_limit=0, **TINY)
    assert load_model(tmp_path / "two").state_dict() is not None
    assert len(load_file(str(tmp_path / "two" / "model.safetensors"))) > 0
    two = train_codec(photos, tmp_path / "two", steps=6, crop=crop, kind=kind, amp=False, resume=True, **TINY)
    assert one == two  # same losses, step by step
    a, b = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    assert type(a).kind == kind and _same_weights(a, b)


@pytest.mark.slow
def test_stop_at_keeps_the_learning_rate_schedule_of_steps(photos, tmp_path):
    """A run stopped by stop_at and resumed equals one uninterrupted run; a run of stop_at steps
    ends elsewhere (its learning rate drops at 90% of its own length)."""
    one = train_codec(photos, tmp_path / "one", steps=6, crop=64, amp=False, **TINY)
    part = train_codec(photos, tmp_path / "two", steps=6, stop_at=4, crop=64, amp=False, **TINY)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["step"] == 4
    assert part == one[:len(part)] and len(part) < len(one)
    train_codec(photos, tmp_path / "short", steps=4, crop=64, amp=False, **TINY)
    assert not _same_weights(load_model(tmp_path / "short"), load_model(tmp_path / "two"))
    two = train_codec(photos, tmp_path / "two", steps=6, crop=64, amp=False, resume=True, **TINY)
    assert two == one and _same_weights(load_model(tmp_path / "one"), load_model(tmp_path / "two"))
    for bad in (0, 7):
        with pytest.raises(ValueError, match="stop_at"):
            train_codec(photos, tmp_path / "bad", steps=6, stop_at=bad, crop=64, **TINY)


@pytest.mark.slow
def test_compiled_training_matches_eager(photos, tmp_path):
    """torch.compile changes only floating-point rounding: the same losses step by step (both
    qualities, so two graphs) and nearly the same weights as the eager run."""
    from torch._dynamo.utils import counters

    eager = train_codec(photos, tmp_path / "eager", steps=4, crop=64, kind="hyperprior", amp=False, **TINY)
    counters.clear()
    compiled = train_codec(photos, tmp_path / "compiled", steps=4, crop=64, kind="hyperprior", amp=False,
                           compile=True, **TINY)
    assert counters["stats"]["unique_graphs"] >= 2  # it did compile, a graph per quality
    assert [(r["step"], r["quality"]) for r in compiled] == [(r["step"], r["quality"]) for r in eager]
    for a, b in zip(eager, compiled):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and b["bpp"] == pytest.approx(a["bpp"], rel=1e-4)
    a, b = load_model(tmp_path / "eager").state_dict(), load_model(tmp_path / "compiled").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)


def test_hyperprior_crop_must_be_a_multiple_of_64(photos, tmp_path):
    with pytest.raises(ValueError, match="multiple of 64"):
        train_codec(photos, tmp_path, steps=1, crop=32, kind="hyperprior", **TINY)
    with pytest.raises(ValueError, match="kind"):
        train_codec(photos, tmp_path, steps=1, crop=32, kind="context", **TINY)


@pytest.mark.slow
def test_warm_start_copies_the_transforms_not_the_entropy_models(photos, tmp_path):
    train_codec(photos, tmp_path / "fact", steps=2, crop=64, amp=False, **TINY)
    factorized = load_model(tmp_path / "fact")
    config = {k: v for k, v in TINY.items() if k not in ("N", "M")}
    with pytest.raises(ValueError, match="analysis and synthesis transforms"):  # N=16: no layer of g_a has the same shape
        train_codec(photos, tmp_path / "hp-n16", steps=1, crop=64, N=16, M=8, kind="hyperprior",
                    init=tmp_path / "fact", **config)

    from fastae.train.codec import _warm_start

    torch.manual_seed(1)
    hp = HyperpriorCodec(N=8, M=8, lambdas=(0.01, 0.1))
    fresh_prior = {k: v.clone() for k, v in hp.state_dict().items() if k.startswith("priors.")}
    names = _warm_start(hp, tmp_path / "fact")
    assert "g_a.0.weight" in names and "log_gain" in names and not any(n.startswith("priors.") for n in names)
    own = hp.state_dict()
    assert all(torch.equal(own[k], factorized.state_dict()[k]) for k in names)
    assert all(torch.equal(own[k], v) for k, v in fresh_prior.items())
    # An exported codec file ("model."-prefixed names) works as well.
    path = export_codec(factorized, tmp_path / "fact.safetensors", model_id="f")
    assert _warm_start(HyperpriorCodec(N=8, M=8, lambdas=(0.01, 0.1)), path) == names
    with pytest.raises(FileNotFoundError):
        _warm_start(hp, tmp_path / "missing")


@pytest.mark.slow
def test_hyperprior_training_lowers_the_loss_and_exports(photos, tmp_path):
    generator = torch.Generator().manual_seed(5)
    from fastae.train.codec import load_photos

    batch = random_crops(load_photos(photos, downscale=1), 4, 64, generator)
    train_codec(photos, tmp_path, steps=1, crop=64, kind="hyperprior", amp=False, **TINY)
    before = load_model(tmp_path)
    train_codec(photos, tmp_path, steps=40, crop=64, kind="hyperprior", amp=False, resume=True, lr=1e-3, **TINY)
    after = load_model(tmp_path)
    torch.manual_seed(0)
    loss = [m.eval().rd_loss(batch, 2)["loss"].item() for m in (before, after)]
    assert loss[1] < 0.8 * loss[0], loss
    codec = load_codec(quality=2, weights=export_codec(after, tmp_path / "hp.safetensors", model_id="hp"))
    rgb = (batch[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    data = codec.compress(rgb)
    assert np.array_equal(codec.decompress(data), codec.reconstruct(rgb))
    assert isinstance(codec.model, HyperpriorCodec) and isinstance(codec.model, CodecModel)


@pytest.mark.parametrize("hyper_input", ["noise", "rounded"])
def test_hyper_input_is_what_the_hyper_synthesis_reads_in_training(photos, hyper_input):
    """HyperpriorCodec.hyper_input sets what h_s reads in the training forward: the hyper-latents
    plus noise (not integers), or rounded (integers, whose gradient still reaches h_a)."""
    torch.manual_seed(0)
    model = CheckerboardCodec(N=8, M=8, lambdas=(0.01, 0.1))
    model.hyper_input = hyper_input
    seen = []
    model.h_s.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    x = random_crops(load_photos(photos, 1), 2, 64, torch.Generator().manual_seed(0))
    out = model(x, 1)
    assert torch.equal(seen[0], torch.round(seen[0])) == (hyper_input == "rounded")
    out["bpp"].backward()
    assert model.h_a[0].weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_train_codec_passes_hyper_input_to_the_model(photos, tmp_path):
    """Two steps from the same seed: hyper_input="rounded" trains other weights than the default."""
    noise = train_codec(photos, tmp_path / "noise", steps=2, crop=64, kind="hyperprior", amp=False, **TINY)
    rounded = train_codec(photos, tmp_path / "rounded", steps=2, crop=64, kind="hyperprior", amp=False,
                          hyper_input="rounded", **TINY)
    assert noise[0]["loss"] != rounded[0]["loss"]
    assert not _same_weights(load_model(tmp_path / "noise"), load_model(tmp_path / "rounded"))
    # a run is resumed with the setting it was trained with, not silently switched
    with pytest.raises(ValueError, match="trained with hyper_input='rounded'; resume it with the same"):
        train_codec(photos, tmp_path / "rounded", steps=4, crop=64, kind="hyperprior", amp=False, resume=True, **TINY)
    train_codec(photos, tmp_path / "rounded", steps=4, crop=64, kind="hyperprior", amp=False, resume=True,
                hyper_input="rounded", **TINY)


def test_hyper_input_rejects_bad_values(photos, tmp_path):
    with pytest.raises(ValueError, match="hyper_input must be 'noise' or 'rounded', got 'ste'"):
        train_codec(photos, tmp_path / "a", steps=1, crop=64, kind="hyperprior", hyper_input="ste", **TINY)
    with pytest.raises(ValueError, match="needs a hyperprior"):
        train_codec(photos, tmp_path / "b", steps=1, crop=64, kind="factorized", hyper_input="rounded", **TINY)


def test_load_photos_names_what_it_leaves_out(tmp_path):
    from fastae.train.codec import load_photos

    rng = np.random.default_rng(0)
    for name, side in (("a.png", 80), ("b.png", 90), ("small.png", 40)):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes((tmp_path / "a.png").read_bytes()[:200])
    (tmp_path / "readme.txt").write_text("about these photos")
    with pytest.warns(UserWarning) as caught:
        photos = load_photos(tmp_path, downscale=1, min_side=64)
    assert len(photos) == 2
    (message,) = [str(w.message) for w in caught]
    assert "1 smaller than 64x64 after downscaling (small.png)" in message
    assert "1 not readable as images (broken.png)" in message and "readme" not in message
    with pytest.raises(ValueError, match="no image of at least 128x128"):
        load_photos(tmp_path, downscale=1, min_side=128)


def test_quality_order_chooses_each_steps_quality(photos, tmp_path):
    """Step i trains quality_order[i % len]: the history (a checkpoint per step) lists them in turn;
    the default order is 1..Q, the same run as passing it."""
    order = [2, 1, 2]
    history = train_codec(photos, tmp_path / "o", steps=5, crop=64, amp=False, quality_order=order,
                          **{**TINY, "checkpoint_every": 1})
    assert [row["quality"] for row in history] == [2, 1, 2, 2, 1]
    default = train_codec(photos, tmp_path / "d", steps=2, crop=64, amp=False, **TINY)
    explicit = train_codec(photos, tmp_path / "e", steps=2, crop=64, amp=False, quality_order=[1, 2], **TINY)
    assert default == explicit


@pytest.mark.parametrize("order, message", [([], "must list qualities in 1..2"), ([1, 3], "must list qualities"),
                                            ([0, 1, 2], "must list qualities"), ([True, 2], "must list qualities"),
                                            ([2, 2], r"must train every quality at least once; it lacks \[1\]")])
def test_quality_order_rejects_bad_orders(photos, tmp_path, order, message):
    with pytest.raises(ValueError, match=f"train_codec: quality_order {message}"):
        train_codec(photos, tmp_path / "bad", steps=1, crop=64, quality_order=order, **TINY)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
