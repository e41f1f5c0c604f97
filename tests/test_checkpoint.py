"""fastae.train.checkpoint, the one checkpoint module of fit and train_codec: resume equals one run,
saves are atomic, and folders in the layout written before it (fit's and train_codec's own) load
and resume exactly."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import fastae
from fastae.models import build_model
from fastae.models.codec import HyperpriorCodec
from fastae.train import fit, load_model, resume_checkpoint, save_checkpoint
from fastae.train.checkpoint import CONFIG, HISTORY, STATE, WEIGHTS
from fastae.train.codec import train_codec

TINY_CODEC = dict(N=8, M=8, lambdas=(0.01, 0.1), batch_size=1, crop=64, downscale=1, kind="hyperprior",
                  hyper_input="rounded", checkpoint_every=1, amp=False, progress=False)


def _mlp():
    torch.manual_seed(0)
    return build_model("mlp", input_shape=[1, 8, 8], hidden=[8], latent=2)


DATA = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _fit(out, epochs, resume=False):
    model = _mlp()
    history = fit(model, DATA, DATA[:8], epochs=epochs, batch_size=8, out=out, resume=resume, progress=False)
    return model, history


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _untimed(history):
    return {k: v for k, v in history.items() if k != "seconds"}


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------- the layout before


def _as_main_wrote_it(folder):
    """Rewrite the checkpoint in ``folder`` file by file as the trainers wrote it before this module
    (fastae 0.1.0 at e495598): fit.save_checkpoint + fit's history.json, train_codec's save_codec_checkpoint."""
    state = torch.load(folder / STATE, weights_only=False)
    config = json.loads((folder / CONFIG).read_text())
    name, done = config["model"], state["done"]
    save_file(load_file(str(folder / WEIGHTS)), str(folder / WEIGHTS), metadata={"model": name})
    if state["unit"] == "epoch":
        torch.save({"epoch": done, "optimizers": state["optimizers"], "rng": state["torch_rng"],
                    "history": state["history"]}, folder / STATE)
        history = json.dumps({k: [None if isinstance(v, float) and not math.isfinite(v) else v for v in vs]
                              for k, vs in state["history"].items()}, indent=1) + "\n"
    else:
        torch.save({"step": done, "optimizer": state["optimizers"]["codec"], "generator": state["generator"],
                    "torch_rng": state["torch_rng"], "hyper_input": state["extra"]["hyper_input"]}, folder / STATE)
        history = json.dumps(state["history"]) + "\n"
    (folder / HISTORY).write_text(history)
    body = {"fastae": "0.1.0", "model": name, "config": config["config"], state["unit"]: done}
    (folder / CONFIG).write_text(json.dumps(body, indent=2) + "\n")
    assert "format" not in torch.load(folder / STATE, weights_only=False)


def test_a_fit_checkpoint_of_the_old_layout_resumes_as_one_run(tmp_path):
    straight, expected = _fit(tmp_path / "straight", 3)
    _fit(tmp_path / "old", 2)
    _as_main_wrote_it(tmp_path / "old")
    assert load_model(tmp_path / "old").state_dict().keys() == straight.state_dict().keys()
    resumed, history = _fit(tmp_path / "old", 3, resume=True)
    assert _untimed(history) == _untimed(expected) and _same_weights(resumed, straight)
    assert _same_weights(load_model(tmp_path / "old"), straight)
    assert torch.load(tmp_path / "old" / STATE, weights_only=False)["format"] == 2  # rewritten in the new layout
    assert json.loads((tmp_path / "old" / HISTORY).read_text())["epoch"] == [1, 2, 3]


@pytest.mark.slow
def test_a_codec_checkpoint_of_the_old_layout_resumes_as_one_run(photos, tmp_path):
    expected = train_codec(photos, tmp_path / "straight", steps=4, **TINY_CODEC)
    train_codec(photos, tmp_path / "old", steps=4, stop_at=2, **TINY_CODEC)
    _as_main_wrote_it(tmp_path / "old")
    assert isinstance(load_model(tmp_path / "old"), HyperpriorCodec)
    other = {**TINY_CODEC, "hyper_input": "noise"}
    with pytest.raises(ValueError, match="trained with hyper_input='rounded'"):  # the setting of the old state
        train_codec(photos, tmp_path / "old", steps=4, resume=True, **other)
    assert train_codec(photos, tmp_path / "old", steps=4, resume=True, **TINY_CODEC) == expected
    assert _same_weights(load_model(tmp_path / "old"), load_model(tmp_path / "straight"))
    assert json.loads((tmp_path / "old" / CONFIG).read_text())["step"] == 4


# ---------------------------------------------------------------------------------------------- this module


def test_new_checkpoints_resume_as_one_run(tmp_path):
    straight, expected = _fit(tmp_path / "straight", 3)
    _fit(tmp_path / "new", 1)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "new" / WEIGHTS), "pt") as f:
        assert f.metadata() == {"model": "mlp"}
    assert json.loads((tmp_path / "new" / CONFIG).read_text()) == {
        "fastae": fastae.__version__, "model": "mlp", "config": _mlp().config, "epoch": 1}
    resumed, history = _fit(tmp_path / "new", 3, resume=True)
    assert _untimed(history) == _untimed(expected) and _same_weights(resumed, straight)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    _fit(tmp_path, 1)
    before = {f: (tmp_path / f).read_bytes() for f in (WEIGHTS, CONFIG, STATE, HISTORY)}
    model = _mlp()
    opt = {"ae": torch.optim.Adam(model.parameters())}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)  # after the weights were written to their temporary file
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, model, 2, opt, {"epoch": [1, 2]})
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary file left


def test_a_half_renamed_checkpoint_is_refused(tmp_path):
    _fit(tmp_path / "a", 1)
    _fit(tmp_path / "b", 2)
    (tmp_path / "a" / STATE).write_bytes((tmp_path / "b" / STATE).read_bytes())  # a kill between two renames
    with pytest.raises(ValueError, match=r"inconsistent \(config.json at epoch 1, training_state.pt at epoch 2\)"):
        _fit(tmp_path / "a", 3, resume=True)


def test_resume_refuses_another_model_or_trainer(photos, tmp_path):
    train_codec(photos, tmp_path / "codec", steps=1, **TINY_CODEC)
    factorized = {**TINY_CODEC, "kind": "factorized", "hyper_input": "noise"}
    with pytest.raises(ValueError, match=r"another model config \(kind: checkpoint 'hyperprior', requested None\)"):
        train_codec(photos, tmp_path / "codec", steps=2, resume=True, **factorized)
    model = HyperpriorCodec(N=8, M=8, lambdas=(0.01, 0.1))
    with pytest.raises(ValueError, match="counts steps, not epochs"):
        resume_checkpoint(tmp_path / "codec", model, {}, name="image_codec")
    with pytest.raises(ValueError, match="holds a 'image_codec' model, not 'mlp'"):
        _fit(tmp_path / "codec", 2, resume=True)
    with pytest.raises(FileNotFoundError, match="no fastae checkpoint in"):
        load_model(tmp_path / "nothing")
