"""The fastae command line."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastae
from fastae import cli
from fastae.ops import linear as ops_linear
from tests._util import MNIST


def test_info_names_versions_build_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fastae     {fastae.__version__}" in out and torch.__version__ in out
    for name, (ok, reason) in fastae.ops.available_backends().items():
        assert f"{name:<7}{'yes' if ok else 'no':<5}{reason}" in out
    from fastae.codec.model_file import shipped_models

    codec_line = next(line for line in out.splitlines() if line.startswith("codec "))
    assert all(m in codec_line for m in shipped_models())
    if fastae.codec.DEFAULT_MODEL in shipped_models():
        assert f"{fastae.codec.DEFAULT_MODEL} (default)" in codec_line


def test_info_check_passes_on_this_install(capsys):
    assert cli.main(["info", "--check"]) == 0
    out = capsys.readouterr().out
    assert "self-check: all passed" in out
    for name, (ok, _) in fastae.ops.available_backends().items():
        if ok and name != "torch":
            for op in ("linear_act", "recon_loss", "gaussian_kl", "linear_bce"):
                assert re.search(rf"{op}\s+{name}\s+float32", out)


def test_info_check_fails_on_a_wrong_backend(capsys, monkeypatch):
    def wrong(x, weight, bias, act, save_preact):
        out, pre = ops_linear._torch_fwd(x, weight, bias, act, save_preact)
        return out + 0.5, pre

    monkeypatch.setitem(ops_linear._FWD, "cpu", wrong)
    assert cli.main(["info", "--check"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "fastae.cli", "info"], capture_output=True, text=True, check=True)
    assert "backends:" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model, extra, files", [
    ("mlp", ["--hidden", "32", "--latent", "8"], set()),
    ("vae", ["--hidden", "32", "--latent", "2", "--loss", "bce"], {"samples.png", "manifold.png"}),
    ("conv", ["--latent", "8", "--amp", "bf16"], set()),
])
def test_train_writes_its_artifacts_and_anomaly_reads_them(tmp_path, capsys, model, extra, files):
    out = tmp_path / model
    argv = ["train", model, "--data", str(MNIST), "--out", str(out), "--epochs", "10", "--batch-size", "8",
            "--lr", "0.01", "--normal-class", "1"]
    assert cli.main(argv + extra) == 0
    expected = {"model.safetensors", "config.json", "training_state.pt", "history.json", "loss.png",
                "reconstructions.png", "latent.png", "split.json"} | files
    assert {p.name for p in out.iterdir()} == expected
    assert "val_mse" in capsys.readouterr().out
    assert cli.main(["anomaly", str(out), "--data", str(MNIST), "--normal-class", "1"]) == 0
    auc = float(re.search(r"roc_auc ([0-9.]+)", capsys.readouterr().out).group(1))
    assert 0.5 < auc <= 1.0  # trained on ones only: other digits reconstruct worse


@pytest.mark.parametrize("argv, message", [
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--beta", "2"], "--beta does not apply to model 'mlp'"),
    (["train", "mlp", "--data", "{tmp}", "--out", "{tmp}/o"], "expected MNIST IDX files"),
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--latent", "0"], "latent"),
    (["anomaly", "{tmp}", "--data", "{mnist}"], "no fastae checkpoint in"),
    (["anomaly", "{tmp}", "--data", "{mnist}", "--quantile", "1.5"], "--quantile must be in (0, 1)"),
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--val-fraction", "0"], "--val-fraction 0.0 of"),
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--lr", "0"], "lr must be a positive number"),
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--batch-size", "0"], "batch_size must be a positive"),
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--hidden", "a"], "expected comma-separated integers"),
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--steps", "5", "--crop=64"],
     "--steps, --crop do not apply to train mlp (only to train codec)"),
    (["train", "codec", "--data", "{mnist}", "--out", "{tmp}", "--epochs", "5"],
     "--epochs does not apply to train codec (only to the autoencoder zoo"),
    (["train", "codec", "--data", "{mnist}", "--out", "{tmp}", "--epoch", "5"], "unrecognized arguments: --epoch"),
    (["train", "codec", "--data", "{mnist}", "--out", "{tmp}", "--amp", "bf16"],
     "--amp does not apply to train codec (only to the autoencoder zoo"),
    (["train", "mlp", "--data", "{mnist}", "--out", "{tmp}", "--amp", "half"], "argument --amp: invalid choice"),
])
def test_bad_input_is_reported_without_a_traceback(tmp_path, capsys, argv, message):
    argv = [a.format(mnist=MNIST, tmp=tmp_path) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors: exit 2, the message on stderr
        assert e.code == 2 and message in capsys.readouterr().err
    else:
        assert code == 2 and message in capsys.readouterr().err


def test_train_is_repeatable_and_never_overwrites_a_checkpoint(tmp_path, capsys):
    """The same command gives the same weights (the seed covers the initial weights), and a second
    run into the same folder without --resume refuses instead of replacing the checkpoint."""
    argv = ["train", "mlp", "--data", str(MNIST), "--epochs", "1", "--hidden", "16", "--latent", "4"]
    assert cli.main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert cli.main(argv + ["--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    before = (tmp_path / "a" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main(["train", "conv", "--data", str(MNIST), "--epochs", "1", "--out", str(tmp_path / "a")]) == 2
    assert "already holds a checkpoint; pass --resume" in capsys.readouterr().err
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == before


def test_os_errors_and_interrupts_are_reported_without_a_traceback(tmp_path, capsys, monkeypatch):
    from PIL import Image

    (tmp_path / "src").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "src" / "a.png")  # an empty source is refused before any of this
    (tmp_path / "dst").write_text("a file where the output folder should be")
    assert cli.main(["compress", str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    assert "destination dst exists and is not a folder" in capsys.readouterr().err.replace(str(tmp_path) + "/", "")

    def fails(error):
        def run(*args, **kwargs):
            raise error
        return run

    monkeypatch.setattr("fastae.codec.folder.compress_folder", fails(PermissionError(13, "Permission denied", "ro")))
    assert cli.main(["compress", str(tmp_path / "src"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastae compress: [Errno 13] Permission denied: 'ro'") and "Traceback" not in err
    monkeypatch.setattr("fastae.codec.folder.compress_folder", fails(KeyboardInterrupt()))
    assert cli.main(["compress", str(tmp_path / "src"), str(tmp_path / "out")]) == 130
    assert "interrupted (finished files are kept" in capsys.readouterr().err


@pytest.mark.slow
def test_train_conv_on_a_folder_of_photos_of_different_sizes(tmp_path, capsys):
    """--size makes a folder of mixed-size photos trainable (scaled and center-cropped), and
    anomaly reads it the same way."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    data = tmp_path / "photos"
    data.mkdir()
    for i, (h, w) in enumerate([(40, 60), (50, 30), (32, 32)] * 4):
        pixels = (torch.rand(h, w, 3, generator=rng) * 255).byte().numpy()
        Image.fromarray(pixels).save(data / f"{i:02d}.png")
    argv = ["train", "conv", "--data", str(data), "--out", str(tmp_path / "m"), "--epochs", "1", "--latent", "4",
            "--val-fraction", "0.25"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "images differ in size" in err and "(fastae train: --size)" in err
    assert cli.main(argv + ["--size", "16"]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["input_shape"] == [3, 16, 16]
    assert cli.main(["anomaly", str(tmp_path / "m"), "--data", str(data), "--size", "16", "--val-fraction", "0.25"]) == 0
    assert "3 samples" in capsys.readouterr().out
    # by default anomaly scores the samples training held out, with the size it trained on (recorded)
    assert json.loads((tmp_path / "m" / "split.json").read_text()) == {"val_fraction": 0.25, "seed": 0, "size": 16}
    assert cli.main(["anomaly", str(tmp_path / "m"), "--data", str(data)]) == 0
    assert "3 samples" in capsys.readouterr().out
    assert cli.main(["anomaly", str(tmp_path / "m"), "--data", str(data), "--val-fraction", "0"]) == 0
    assert "12 samples" in capsys.readouterr().out  # a given option wins
    # a resume takes the recorded split, and refuses another one
    assert cli.main(argv[:-2] + ["--epochs", "2", "--resume"]) == 0
    assert json.loads((tmp_path / "m" / "split.json").read_text())["val_fraction"] == 0.25
    capsys.readouterr()
    assert cli.main(argv[:-2] + ["--epochs", "3", "--resume", "--val-fraction", "0.5", "--size", "16"]) == 2
    assert "--val-fraction 0.5: " in capsys.readouterr().err


def test_a_damaged_config_is_named(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert cli.main(["anomaly", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.json'}: not a readable JSON file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the core install

OPTIONAL = ("scipy", "pytorch_msssim", "triton", "constriction", "pytest_benchmark", "pyarrow", "ray")  # the extras' libraries


@pytest.fixture
def hide(monkeypatch):
    """``hide(*modules)``: importing them fails as it does where they are not installed."""
    from fastae.ops import _backend

    def hide_(*modules):
        for name in modules:
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                monkeypatch.delitem(sys.modules, loaded)
            monkeypatch.setitem(sys.modules, name, None)
        _backend._status.cache_clear()  # what backends exist is cached: look again

    yield hide_
    monkeypatch.undo()
    _backend._status.cache_clear()


def _photos(folder, n=2, side=64):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
def test_every_command_runs_without_the_extras(tmp_path, capsys, hide):
    """`pip install fastae` (no extras): every command does its work; eval, which needs the eval
    extra, stops before any work with one line naming it."""
    hide(*OPTIONAL)
    assert cli.main(["info"]) == 0
    assert "triton     not installed" in capsys.readouterr().out
    zoo = tmp_path / "mlp"
    assert cli.main(["train", "mlp", "--data", str(MNIST), "--out", str(zoo), "--epochs", "1", "--hidden", "8",
                     "--latent", "2"]) == 0
    assert {"model.safetensors", "loss.png", "reconstructions.png", "latent.png"} <= {p.name for p in zoo.iterdir()}
    assert cli.main(["anomaly", str(zoo), "--data", str(MNIST)]) == 0
    photos, codec = _photos(tmp_path / "photos"), tmp_path / "codec"
    assert cli.main(["train", "codec", "--data", str(photos), "--out", str(codec), "--steps", "2", "--crop", "32",
                     "--batch-size", "1", "--channels", "8", "--latent", "8", "--lmbda", "0.01", "0.1",
                     "--downscale", "1", "--model-id", "tiny-core"]) == 0
    weights = ["--weights", str(codec / "codec.safetensors"), "--quiet"]
    assert cli.main(["compress", str(photos), str(tmp_path / "fae"), *weights]) == 0
    assert cli.main(["decompress", str(tmp_path / "fae"), str(tmp_path / "png"), *weights]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["0.png", "1.png"]
    capsys.readouterr()
    assert cli.main(["eval", "--data", str(photos), *weights, "--output", str(tmp_path / "rd.json")]) == 1
    assert capsys.readouterr().err == ("fastae eval: needs pytorch_msssim, which is not installed: "
                                       "pip install 'fastae[eval]'\n")


@pytest.mark.parametrize("module", ["scipy", "pytorch_msssim"])
def test_eval_names_the_extra_it_lacks_before_any_work(tmp_path, capsys, hide, module):
    hide(module)
    photos = _photos(tmp_path / "photos", n=1, side=16)
    assert cli.main(["eval", "--data", str(photos), "--qualities", "1", "--output", str(tmp_path / "rd.json")]) == 1
    err = capsys.readouterr().err
    assert err == f"fastae eval: needs {module}, which is not installed: pip install 'fastae[eval]'\n"
    assert not (tmp_path / "rd.json").exists()


def test_a_missing_core_library_is_one_line_and_trains_nothing(tmp_path, capsys, hide, monkeypatch):
    import fastae.train

    hide("matplotlib")
    monkeypatch.delitem(sys.modules, "fastae.train.plots", raising=False)  # imported again, it needs matplotlib
    monkeypatch.delattr(fastae.train, "plots", raising=False)
    assert cli.main(["train", "mlp", "--data", str(MNIST), "--out", str(tmp_path / "m"), "--epochs", "1"]) == 1
    assert capsys.readouterr().err == "fastae train: needs matplotlib, which is not installed: pip install matplotlib\n"
    assert not (tmp_path / "m" / "model.safetensors").exists()
