"""fastae train codec | compress | decompress | eval, end to end on a tiny codec trained here."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import fastae
from fastae import cli
from fastae.codec import read_header
from tests._codec import DATA, kodak, kodak_crop, photo


def _save(rgb, path):
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Training photos of at least 64 x 64 (the fixture crops of tests/data/codec, tiled)."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(2):
        _save(np.rot90(photo((96, 152)), 2 * i).copy(), root / f"p{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, photos):
    """`fastae train codec` with tiny settings: a few steps, so the CLI is tested, not the model."""
    out = tmp_path_factory.mktemp("codec-run")
    args = ["train", "codec", "--data", str(photos), "--out", str(out), "--steps", "4", "--crop", "32",
            "--batch-size", "2", "--channels", "8", "--latent", "8", "--lmbda", "0.01", "0.1", "--downscale", "1",
            "--model-id", "tiny-cli"]
    assert cli.main(args) == 0
    return out / "codec.safetensors"


def test_train_codec_writes_a_codec_file(trained, photos, capsys):
    assert trained.exists()
    from fastae.codec.api import load_codec

    codec = load_codec(quality=2, weights=trained)
    assert codec.model_id == "tiny-cli" and codec.model.qualities == 2
    # A second run into the same folder without --resume refuses instead of overwriting.
    args = ["train", "codec", "--data", str(photos), "--out", str(trained.parent), "--steps", "4", "--crop", "32",
            "--channels", "8", "--latent", "8", "--lmbda", "0.01", "0.1", "--downscale", "1"]
    assert cli.main(args) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_train_hyperprior_codec_from_a_factorized_one(trained, photos, tmp_path):
    from fastae.codec.api import load_codec

    out = tmp_path / "hp"
    args = ["train", "codec", "--data", str(photos), "--out", str(out), "--steps", "2", "--crop", "64",
            "--batch-size", "1", "--channels", "8", "--latent", "8", "--lmbda", "0.01", "0.1", "--downscale", "1",
            "--kind", "hyperprior", "--init", str(trained.parent), "--model-id", "tiny-hp", "--weights-dtype", "float16"]
    assert cli.main(args) == 0
    codec = load_codec(quality=1, weights=out / "codec.safetensors")
    assert codec.model.kind == "hyperprior" and codec.model_id == "tiny-hp"
    from safetensors import safe_open

    with safe_open(str(out / "codec.safetensors"), "pt") as f:
        assert f.get_tensor("model.h_s.0.weight").dtype == torch.float16
        assert f.get_tensor("model.g_a.1.beta").dtype == torch.float32
    rgb = photo((70, 90))
    data = codec.compress(rgb)
    assert len(codec.latent_shapes(70, 90)) == 2 and read_header(data).version == 2
    assert np.array_equal(codec.decompress(data), codec.reconstruct(rgb))


def _tree(root):
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "sub/b.png"]):
        _save(np.rot90(photo((40, 48 + 16 * i)), 2 * i).copy(), root / name)
    (root / "broken.png").write_bytes(b"not a png at all")
    (root / "notes.txt").write_text("ignored")


def test_compress_decompress_folder(trained, tmp_path, capsys):
    src, dst, back = tmp_path / "src", tmp_path / "dst", tmp_path / "back"
    _tree(src)
    base = ["--weights", str(trained), "--quiet"]
    assert cli.main(["compress", str(src), str(dst), "--quality", "1", *base]) == 1  # broken.png failed
    out = capsys.readouterr().out
    assert "broken.png" in out and "compressed 2 files" in out
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.fae")) == ["a.fae", "sub/b.fae"]
    header = read_header(dst / "sub" / "b.fae")
    assert (header.height, header.width, header.quality) == (40, 64, 1)
    before = (dst / "a.fae").stat().st_mtime_ns
    (src / "broken.png").unlink()
    assert cli.main(["compress", str(src), str(dst), "--quality", "1", *base]) == 0
    assert "2 skipped" in capsys.readouterr().out
    assert (dst / "a.fae").stat().st_mtime_ns == before
    assert cli.main(["decompress", str(dst), str(back), *base]) == 0
    with Image.open(back / "sub" / "b.png") as img:
        assert img.size == (64, 40) and img.mode == "RGB"
    from fastae.codec.api import load_codec

    codec = load_codec(quality=1, weights=trained)
    with Image.open(back / "a.png") as img:
        assert np.array_equal(np.asarray(img), codec.reconstruct(src / "a.png"))


def test_compress_rejects_bad_arguments(trained, tmp_path, capsys):
    assert cli.main(["compress", str(tmp_path / "missing"), str(tmp_path / "d"), "--weights", str(trained),
                     "--quality", "1"]) == 2
    assert "missing" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path), str(tmp_path / "d"), "--weights", str(trained),
                     "--quality", "9"]) == 2
    assert "quality must be an integer in 1..2" in capsys.readouterr().err
    # without --quality a model of fewer than 4 qualities codes at its highest
    from fastae.codec.api import load_codec

    (tmp_path / "one").mkdir()
    _save(photo((30, 40)), tmp_path / "one" / "a.png")
    assert cli.main(["compress", str(tmp_path / "one"), str(tmp_path / "d2"), "--weights", str(trained), "--quiet"]) == 0
    assert read_header((tmp_path / "d2" / "a.fae").read_bytes()).quality == 2
    assert load_codec(weights=trained).quality == 2 and load_codec().quality == 4
    assert fastae.load_codec(weights=trained).quality == 2  # the package's own entry point too
    assert cli.main(["compress", str(tmp_path), str(tmp_path / "d"), "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path), str(tmp_path / "d"), "--weights", str(trained), "--refine", "-1"]) == 2
    assert "refine must be a number of steps >= 0 (0: off), got -1" in capsys.readouterr().err


@pytest.mark.slow
def test_compress_refine(trained, tmp_path, capsys):
    """--refine reaches the encoder: the files are those of load_codec(refine=...), and decompress
    (which takes no --refine) reads them back to the refining codec's reconstruction. 20 steps:
    on this 4-step model 3 found nothing better than the analysis' own latents (same file)."""
    from fastae.codec.api import load_codec

    src, dst, back = tmp_path / "src", tmp_path / "dst", tmp_path / "back"
    _tree(src)
    (src / "broken.png").unlink()
    base = ["--weights", str(trained), "--quiet", "--quality", "2"]
    assert cli.main(["compress", str(src), str(dst), "--refine", "20", *base]) == 0
    refined = load_codec(quality=2, weights=trained, refine=20)
    assert (dst / "a.fae").read_bytes() == refined.compress(src / "a.png")
    assert (dst / "a.fae").read_bytes() != load_codec(quality=2, weights=trained).compress(src / "a.png")
    assert cli.main(["decompress", str(dst), str(back), "--weights", str(trained), "--quiet"]) == 0
    with Image.open(back / "a.png") as img:
        assert np.array_equal(np.asarray(img), refined.reconstruct(src / "a.png"))


@pytest.mark.slow
def test_eval_writes_json_and_plot(trained, tmp_path, capsys):
    data = tmp_path / "imgs"
    data.mkdir()
    _save(photo((96, 96)), data / "a.png")
    out = tmp_path / "rd.json"
    with warnings.catch_warnings():  # an untrained model's curve may not allow a BD-rate: a warning, not a failure
        warnings.simplefilter("ignore", RuntimeWarning)
        assert cli.main(["eval", "--data", str(data), "--weights", str(trained), "--qualities", "1", "2",
                         "--references", "webp", "--output", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert set(result["fastae"]) == {"1", "2"} and "webp" in result
    assert result["meta"]["refine"] == 0
    row = result["fastae"]["1"]["per_image"]["a.png"]
    assert row["bpp"] > 0 and row["psnr"] > 5
    with Image.open(out.with_suffix(".png")) as img:
        assert img.size[0] > 100
    assert "BD-rate vs webp" in capsys.readouterr().out
    # --compare: the earlier result's curve is plotted beside, with BD-rate against it (itself: 0%).
    again = tmp_path / "rd2.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert cli.main(["eval", "--data", str(data), "--weights", str(trained), "--qualities", "1", "2",
                         "--references", "--output", str(again), "--compare", str(out), "--quiet"]) == 0
    both = json.loads(again.read_text())
    name = "tiny-cli (rd.json)"
    assert both[name] == result["fastae"] and set(both["bd_rate"]) == {name}
    assert both["bd_rate"][name] is None or abs(both["bd_rate"][name]) < 1e-6
    assert f"BD-rate vs {name}" in capsys.readouterr().out
    # two earlier results of one other model (e.g. before and after an encoder change): the second
    # is named with its file; a file that is not an eval result fails before anything is coded
    other = dict(result, meta=dict(result["meta"], model="other"))
    for f in ("o1.json", "o2.json"):
        (tmp_path / f).write_text(json.dumps(other))
    third = tmp_path / "rd3.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert cli.main(["eval", "--data", str(data), "--weights", str(trained), "--qualities", "1", "2",
                         "--references", "--output", str(third), "--compare", str(tmp_path / "o1.json"),
                         str(tmp_path / "o2.json"), "--quiet"]) == 0
    assert {"other", "other (o2.json)"} <= set(json.loads(third.read_text()))
    (tmp_path / "bad.json").write_text("{not json")
    for bad, message in (("bad.json", "not a JSON file"), ("o1.json", "given twice")):
        args = [str(tmp_path / "o1.json")] * (bad == "o1.json") + [str(tmp_path / bad)]
        assert cli.main(["eval", "--data", str(data), "--weights", str(trained), "--qualities", "1",
                         "--references", "--output", str(tmp_path / "no.json"), "--compare", *args, "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()
    # outputs that would overwrite an input or each other, and results of other images: refused
    # before anything is coded
    (tmp_path / "elsewhere.json").write_text(json.dumps(dict(result, fastae={
        q: dict(v, per_image={"b.png": v["per_image"]["a.png"]}) for q, v in result["fastae"].items()})))
    base = ["eval", "--data", str(data), "--weights", str(trained), "--qualities", "1", "--references", "--quiet"]
    _save(np.rot90(photo((96, 96)), 2).copy(), data / "b.png")
    for extra, message in ((["--output", str(data / "a.png")], "is the image"),
                           (["--output", str(data / "rd.json")], "is inside --data"),
                           (["--output", str(tmp_path / "x.json"), "--limit", "1", "--plot", str(data / "b.png")],
                            "is the image"),  # protected though --limit leaves it out
                           (["--output", str(tmp_path / "x.json"), "--plot", str(tmp_path / "x.json")], "the same file"),
                           (["--output", str(tmp_path / "y.json"), "--compare", str(tmp_path / "y.json")],
                            "is the --compare file"),
                           (["--output", str(tmp_path / "z.json"), "--compare", str(tmp_path / "elsewhere.json")],
                            "evaluated on other images"),
                           (["--output", str(tmp_path / "z.json"), "--limit", "0"], "--limit must be >= 1")):
        assert cli.main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
    assert not (tmp_path / "z.json").exists() and not (tmp_path / "x.json").exists()
    with Image.open(data / "a.png") as img:
        assert img.size == (96, 96)


def test_train_codec_rejects_bad_settings_before_training(trained, photos, tmp_path, capsys):
    base = ["train", "codec", "--data", str(photos), "--steps", "2", "--crop", "32", "--channels", "8",
            "--latent", "8", "--lmbda", "0.01", "0.1", "--downscale", "1"]
    for extra, message in ((["--resume"], "no checkpoint to resume"),
                           (["--model-id", ""], "model id must be 1..64 ASCII characters"),
                           (["--model-id", "é"], "model id must be 1..64 ASCII characters"),
                           (["--latent", "0"], "M must be a positive integer"),
                           (["--lmbda", "0.1", "inf"], "lambdas must be positive, finite"),
                           (["--downscale", "0"], "downscale must be an integer >= 1"),
                           (["--lr", "0"], "lr must be a positive number"),
                           (["--crop", "4096"], "no image of at least 4096x4096")):
        out = tmp_path / f"run{len(extra)}{extra[-1][:3]}"
        assert cli.main(base + ["--out", str(out)] + extra) == 2, extra
        assert message in capsys.readouterr().err
        assert not out.exists()  # nothing made for a run that cannot start
    (tmp_path / "text.safetensors").write_text("not weights")
    assert cli.main(["compress", str(tmp_path), str(tmp_path / "d"), "--weights", str(tmp_path / "text.safetensors")]) == 2
    assert "text.safetensors: not a readable safetensors file" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path), str(tmp_path / "d"), "--weights", str(trained.parent)]) == 2
    assert "is a folder: pass the codec file in it" in capsys.readouterr().err


def test_add_comparison_bd_rate_against_a_shifted_curve():
    from fastae.codec import eval as rd

    def curve(psnrs):
        return {str(q): {"mean": {"bpp": r, "psnr": p, "ms_ssim": None}} for q, (r, p) in
                enumerate(zip([0.2, 0.4, 0.8, 1.6], psnrs), start=1)}

    result = {"fastae": curve([28.0, 31.0, 34.0, 37.0])}
    rd.add_comparison(result, {"fastae": curve([27.0, 30.0, 33.0, 36.0])}, "older")
    assert result["bd_psnr"]["older"] == pytest.approx(1.0, abs=1e-6)  # 1 dB better everywhere
    assert result["bd_rate"]["older"] < -10  # so fewer bits at equal PSNR
    assert result["psnr_at"]["older"]["0.5"] == pytest.approx(30.0 + 3 * np.log2(0.5 / 0.4), abs=0.2)
    with pytest.raises(ValueError, match="already"):
        rd.add_comparison(result, {"fastae": curve([1, 2, 3, 4])}, "older")


@kodak
def test_compress_no_side_search(tmp_path):
    """--no-side-search reaches the encoder: on the shipped model at quality 1, kodim20's smooth sky
    is a crop where the search runs (fewer bytes; v8 no longer needs it on the crops in tests/data),
    and the two files are those of load_codec(side_search=True / False)."""
    from fastae.codec.api import load_codec

    src = tmp_path / "src"
    src.mkdir()
    _save(kodak_crop("kodim20.png", 64, 256, (64, 256)), src / "sky.png")
    for flag, dst, search in (([], "on", True), (["--no-side-search"], "off", False)):
        assert cli.main(["compress", str(src), str(tmp_path / dst), "--quality", "1", "--quiet", *flag]) == 0
        assert (tmp_path / dst / "sky.fae").read_bytes() == load_codec(quality=1, side_search=search).compress(
            src / "sky.png")
    assert (tmp_path / "on" / "sky.fae").stat().st_size < (tmp_path / "off" / "sky.fae").stat().st_size
