"""Encoder-only fine-tuning (fastae.train.encoder): the decoder's tensors leave the file bit for
bit as they came, so latents from the new encoder decode through the old model exactly as through
the new one; the encoder's rate-distortion objective goes down; the CLI refuses what it does not read."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fastae import cli
from fastae.codec.api import load_codec
from fastae.codec.model_file import export_codec, read_model_file
from fastae.train.encoder import ENCODER_PARAMETERS, encoder_parameters, train_encoder
from fastae.train.entropy import _pool, integer_model
from tests._codec import photo, tiny_model


def _init_file(kind, tmp_path, integer=False):
    model = tiny_model(kind).eval()
    with torch.no_grad():  # latents that span several integers
        model.log_gain.add_(2.5)
        model.log_inv_gain.sub_(2.5)
    if integer:
        photos = [torch.from_numpy(photo((96, 152))).permute(2, 0, 1).contiguous()]
        model = integer_model(model, _pool(model, photos, 4, 64, torch.Generator().manual_seed(0), progress=False))
    return export_codec(model, tmp_path / f"{kind}-init.safetensors", model_id="tiny")


def _photos(tmp_path):
    src = tmp_path / "photos"
    src.mkdir(exist_ok=True)
    Image.fromarray(photo((96, 152))).save(src / "a.png")
    return src


@pytest.mark.parametrize("kind,integer", [("checkerboard", True), ("hyperprior", False), ("factorized", False)])
def test_the_decoder_is_unchanged_and_reads_the_new_latents(tmp_path, kind, integer):
    init = _init_file(kind, tmp_path, integer)
    out = train_encoder(_photos(tmp_path), tmp_path / "run", init=init, steps=6, batch_size=2, crop=64, lr=1e-2,
                        downscale=1, checkpoint_every=4, model_id="tiny-enc", progress=False)
    before, after = load_file(str(init)), load_file(str(out))
    assert sorted(before) == sorted(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(tuple("model." + p for p in ENCODER_PARAMETERS)) for k in changed)
    assert any(k.startswith("model.g_a.") for k in changed) and any(k.startswith("model.log_gain") for k in changed)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["step"] for r in history["history"]] == [4, 4, 6, 6]  # both qualities at each export
    assert history["init"] == "tiny"
    new, old = load_codec(quality=2, weights=out), load_codec(quality=2, weights=init)
    x = torch.from_numpy(photo((64, 80))).permute(2, 0, 1)[None]
    latents = new.encode(x)
    assert not torch.equal(latents.values, old.encode(x).values)  # a different encoder ...
    assert torch.equal(old.decode(latents), new.decode(latents))  # ... and the same decoder
    assert np.array_equal(new.decompress(new.compress(photo((64, 80)))), new.reconstruct(photo((64, 80))))


def test_the_tables_are_init_s_where_this_cpu_derives_others(tmp_path, monkeypatch):
    """On another CPU the Gaussian's float64 thresholds can come out one ulp apart (they did: a
    v8 fine-tune on an AMD EPYC failed its export check): the fine-tune stores init's tables, and
    export_codec(tables=...) refuses tables that are not the model's."""
    import fastae.codec.entropy as entropy

    init = _init_file("checkerboard", tmp_path, integer=True)
    derived = entropy._gaussian_tables()
    other = {**derived, "thresholds": torch.from_numpy(np.nextafter(derived["thresholds"].numpy(), np.inf))}
    monkeypatch.setattr(entropy, "_gaussian_tables", lambda: other)
    out = train_encoder(_photos(tmp_path), tmp_path / "run", init=init, steps=2, batch_size=1, crop=64, lr=1e-2,
                        downscale=1, model_id="tiny-enc", progress=False)
    before, after = load_file(str(init)), load_file(str(out))
    assert torch.equal(after["tables.gaussian.thresholds"], before["tables.gaussian.thresholds"])
    assert not torch.equal(after["tables.gaussian.thresholds"], other["thresholds"])  # the oracle differs
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("tables.", "integer.")))
    model = read_model_file(init)[0]
    tables = {k: v for k, v in before.items() if k.startswith(("tables.", "integer."))}
    with pytest.raises(ValueError, match="tables must hold the model's .* tables.gaussian.cdfs is missing"):
        export_codec(model, tmp_path / "x.safetensors", tables={k: v for k, v in tables.items()
                                                                 if k != "tables.gaussian.cdfs"})
    with pytest.raises(ValueError, match="tables.gaussian.scales is missing, extra or of another shape or dtype"):
        export_codec(model, tmp_path / "x.safetensors", tables={**tables, "tables.gaussian.scales":
                                                                 tables["tables.gaussian.scales"].float()})
    assert not (tmp_path / "x.safetensors").exists()


def test_training_lowers_the_objective_of_the_training_crops(tmp_path):
    """v4's encoder made worse (its last layer's weights scaled by 0.7) learns back: the
    rate-distortion cost of the photo it trains on (fixed noise) ends lower than it started."""
    model = read_model_file("tests/data/codec/fastae-checkerboard-v4.safetensors")[0]
    with torch.no_grad():
        model.g_a[-1].weight.mul_(0.7)
    init = export_codec(model, tmp_path / "worse.safetensors", model_id="worse", weights_dtype="float16")
    out = train_encoder(_photos(tmp_path), tmp_path / "run", init=init, steps=32, batch_size=2, crop=64, lr=1e-3,
                        downscale=1, checkpoint_every=32, model_id="better", progress=False)
    x = torch.from_numpy(photo((96, 152))).permute(2, 0, 1)[None].float() / 255

    @torch.no_grad()
    def cost(path):
        model = read_model_file(path)[0].float().eval()
        torch.manual_seed(0)
        return sum(float(model.rd_loss(x[..., :64, :128], q)["loss"]) for q in range(1, 9))

    assert cost(out) < 0.95 * cost(init)


def test_a_widened_encoder_trains_its_new_weights_against_the_same_decoder(tmp_path):
    """analysis_widths: the export decodes as init does; init's entries of the widened tensors move
    at lr (a millionth here), the new ones at new_lr."""
    init = _init_file("checkerboard", tmp_path, integer=True)
    lr, new_lr = 1e-8, 1e-2
    out = train_encoder(_photos(tmp_path), tmp_path / "run", init=init, steps=4, batch_size=2, crop=64, lr=lr,
                        new_lr=new_lr, downscale=1, model_id="tiny-wide", progress=False, analysis_widths=(12, 16, 8))
    before, after = load_file(str(init)), load_file(str(out))
    assert sorted(before) == sorted(after)
    encoder = tuple("model." + p for p in ENCODER_PARAMETERS)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(encoder))
    assert after["model.g_a.2.weight"].shape == (16, 12, 5, 5) and after["model.g_a.6.weight"].shape[1] == 8
    for name in ("model.g_a.2.weight", "model.g_a.4.weight"):  # [out, in]: old rows read new columns from 0
        w0, w1 = before[name], after[name]
        o, i = w0.shape[:2]
        assert (w1[:o, :i] - w0).abs().max() <= 4 * 1.1 * lr
        assert (w1[:o, i:]).abs().max() > 2 * new_lr  # from zeros at the start (Adam: about new_lr a step)
    model = read_model_file(out)[0]
    assert model.analysis_widths == (12, 16, 8) and model.widths == (8, 8, 8)
    new, old = load_codec(quality=2, weights=out), load_codec(quality=2, weights=init)
    x = torch.from_numpy(photo((64, 80))).permute(2, 0, 1)[None]
    latents = new.encode(x)
    assert torch.equal(old.decode(latents), new.decode(latents))
    with pytest.raises(ValueError, match=r"train_encoder: widen_analysis: analysis_widths\[0\] must be >= the model's 8"):
        train_encoder(_photos(tmp_path), tmp_path / "r2", init=init, analysis_widths=(4, 8, 8), progress=False)
    with pytest.raises(ValueError, match="new_lr must be a positive number, got 0"):
        train_encoder(_photos(tmp_path), tmp_path / "r2", init=init, new_lr=0, progress=False)


def test_encoder_parameters_are_the_encoder_side():
    model = tiny_model("checkerboard")
    names = set(encoder_parameters(model))
    assert {"log_gain"} <= names and any(n.startswith("g_a.") for n in names) and any(n.startswith("h_a.") for n in names)
    assert not any(n.startswith(("g_s.", "h_s.", "ctx.", "priors.", "log_inv_gain")) for n in names)


def test_bad_arguments(tmp_path):
    init = _init_file("hyperprior", tmp_path)
    src = _photos(tmp_path)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        train_encoder(src, tmp_path / "r", init=init, steps=0)
    with pytest.raises(ValueError, match="lr must be a positive number, got -1"):
        train_encoder(src, tmp_path / "r", init=init, lr=-1)
    with pytest.raises(ValueError, match="crop must be a positive multiple of 64, got 96"):
        train_encoder(src, tmp_path / "r", init=init, crop=96)
    with pytest.raises(ValueError, match=r"quality_order must list qualities in 1\.\.2"):
        train_encoder(src, tmp_path / "r", init=init, quality_order=[3])
    (tmp_path / "same").mkdir()
    same = tmp_path / "same" / "codec.safetensors"
    same.write_bytes(init.read_bytes())
    with pytest.raises(FileExistsError, match="already holds codec.safetensors; choose another folder"):
        train_encoder(src, tmp_path / "same", init=same, crop=64)
    assert same.read_bytes() == init.read_bytes()
    # init's weights are float32: float16 would round the decoder's too
    with pytest.raises(ValueError, match="weights_dtype='float16' would change the decoder"):
        train_encoder(src, tmp_path / "half", init=init, steps=1, crop=64, downscale=1, weights_dtype="float16",
                      progress=False)
    assert list((tmp_path / "half").iterdir()) == []


def test_cli_encoder_only(tmp_path, capsys):
    init = _init_file("checkerboard", tmp_path, integer=True)
    base = ["train", "codec", "--data", str(_photos(tmp_path)), "--steps", "2", "--crop", "64", "--downscale", "1",
            "--model-id", "tiny-enc"]
    assert cli.main([*base, "--out", str(tmp_path / "run"), "--encoder-only", "--init", str(init)]) == 0
    weights = tmp_path / "run" / "codec.safetensors"
    assert str(weights) in capsys.readouterr().out
    model, model_id, _ = read_model_file(weights)
    assert model.integer and model_id == "tiny-enc"
    assert cli.main([*base, "--out", str(tmp_path / "wide"), "--encoder-only", "--init", str(init),
                     "--analysis-widths", "12", "12", "8", "--new-lr", "1e-3"]) == 0
    capsys.readouterr()
    assert read_model_file(tmp_path / "wide" / "codec.safetensors")[0].analysis_widths == (12, 12, 8)
    assert cli.main([*base, "--out", str(tmp_path / "r2"), "--encoder-only"]) == 2
    assert "--encoder-only needs --init" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "r3"), "--encoder-only", "--init", str(init), "--pool", "8"]) == 2
    assert "--pool does not apply to --encoder-only" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "r5"), "--analysis-widths", "16", "16", "16"]) == 2
    assert "--analysis-widths applies to --encoder-only training" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "r6"), "--entropy-only", "--init", str(init), "--new-lr", "1"]) == 2
    assert "--new-lr does not apply to --entropy-only" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "r7"), "--encoder-only", "--init", str(init), "--new-lr", "1"]) == 2
    assert "--new-lr is the learning rate of the weights --analysis-widths adds" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "r4"), "--encoder-only", "--entropy-only", "--init", str(init)]) == 2
    assert "exclude each other" in capsys.readouterr().err
