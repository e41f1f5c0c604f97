"""The codec investigations of experiments/ (the figures in the docs) run on tiny models."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from fastae.codec.api import load_codec
from fastae.codec.format import unpack
from fastae.codec.model_file import export_codec
from fastae.models.codec import CheckerboardCodec, FactorizedCodec, HyperpriorCodec
from tests._codec import photo
from tests._util import experiment_script


@pytest.mark.slow
def test_experiment_codec_memory_codes_the_tiled_image(tmp_path):
    """experiments/codec_memory.py (the README's memory table) on a tiny model: a row per size with both
    steps, the file being the one compress writes for the tiled image."""
    script = experiment_script("codec_memory")
    torch.manual_seed(0)
    weights = export_codec(FactorizedCodec(N=8, M=8, lambdas=(0.01, 0.1)), tmp_path / "tiny.safetensors", model_id="tiny")
    tile = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(tile).save(tmp_path / "tile.png")
    script.main(["--image", str(tmp_path / "tile.png"), "--sizes", "48", "--quality", "2", "--weights", str(weights),
                "--json", str(tmp_path / "m.json")])
    (row,) = json.loads((tmp_path / "m.json").read_text())["rows"]
    expected = load_codec(quality=2, weights=weights).compress(np.tile(tile, (3, 2, 1))[:48, :48].copy())
    assert row["size"] == 48 and row["compress"]["bytes"] == row["decompress"]["bytes"] == len(expected)
    assert all(row[step]["peak_mb"] >= 0 and row[step]["seconds"] > 0 for step in ("compress", "decompress"))


@pytest.mark.slow
def test_experiment_codec_speed_times_and_counts_every_latent(tmp_path, capsys):
    """experiments/codec_speed.py (the README's speed and table-flip figures) on a tiny checkerboard model:
    a line per quality with the refine timing, and the flip count over every latent of every image
    (padded to 64: a 40x56 image has 4x4 latents per channel, a 70x30 one 8x4)."""
    script = experiment_script("codec_speed")
    torch.manual_seed(0)
    model = CheckerboardCodec(N=8, M=8, lambdas=(0.01, 0.1))
    torch.nn.init.normal_(model.ctx.params[-1].weight, std=0.3)
    weights = export_codec(model, tmp_path / "tiny.safetensors", model_id="tiny")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for name, shape in (("a.png", (40, 56, 3)), ("b.png", (70, 30, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "images" / name)
    script.main(["--data", str(tmp_path / "images"), "--weights", str(weights), "--qualities", "1", "2",
                "--images", "1", "--refine", "1", "--table-flips", "--streams"])
    out = capsys.readouterr().out
    codec = load_codec(quality=2, weights=weights)
    images = [np.asarray(Image.open(tmp_path / "images" / n)) for n in ("a.png", "b.png")]
    files = [codec.compress(rgb) for rgb in images]
    parts = re.search(r"quality 2: files (\d+) B, anchors (\d+) B, others (\d+) B, hyper (\d+) B; the other latents "
                      r"cost [-+][0-9.]+% against the anchors \(2 images\)", out)
    assert parts, out
    total, anchors, others, hyper = map(int, parts.groups())
    assert total == sum(map(len, files))
    assert anchors + others + hyper == sum(len(s) for f in files for s in unpack(f)[1])
    for q in (1, 2):
        assert re.search(rf"quality {q}: compress [0-9.]+ s, decompress [0-9.]+ s, compress with refine=1 [0-9.]+ s "
                         r"\(median over 1 images", out), out
    flips, total = re.search(r"quality 2: float32 .* for (\d+) of (\d+) latents \(2 images\)", out).groups()
    assert int(total) == 8 * (4 * 4 + 8 * 4) and int(flips) <= int(total)
    with pytest.raises(SystemExit):
        script.main(["--data", str(tmp_path / "images"), "--images", "0"])


@pytest.mark.slow
def test_experiment_codec_tile_rate_codes_the_same_pixels_at_each_tile_size(tmp_path, capsys):
    """experiments/codec_tile_rate.py (the README's rate-against-image-size figures): the payload bits of
    the 512x512 corner coded whole, in 256 and in 128 tiles, on a tiny model."""
    script = experiment_script("codec_tile_rate")
    torch.manual_seed(0)
    weights = export_codec(HyperpriorCodec(N=8, M=8, lambdas=(0.01, 0.1)), tmp_path / "tiny.safetensors", model_id="tiny")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    Image.fromarray(rng.integers(0, 256, (520, 530, 3), dtype=np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(rng.integers(0, 256, (100, 600, 3), dtype=np.uint8)).save(tmp_path / "images" / "small.png")
    script.main(["--data", str(tmp_path / "images"), "--weights", str(weights), "--qualities", "2"])
    out = capsys.readouterr().out
    cells = re.findall(r"(\d+)x\1 tiles ([0-9.]+) bpp ([0-9.]+) dB", out)
    assert [int(c[0]) for c in cells] == [512, 256, 128] and out.strip().endswith("(1 images)"), out
    codec = load_codec(quality=2, weights=weights)
    rgb = np.asarray(Image.open(tmp_path / "images" / "a.png"))[:512, :512]
    tiles = [np.ascontiguousarray(rgb[i:i + 256, j:j + 256]) for i in (0, 256) for j in (0, 256)]
    bits = 8 * sum(len(s) for t in tiles for s in unpack(codec.compress(t))[1])
    assert float(cells[1][1]) == pytest.approx(bits / 512 ** 2, abs=5e-4)
    with pytest.raises(FileNotFoundError, match="none: no such folder"):
        script.main(["--data", str(tmp_path / "images" / "none")])


def test_experiment_codec_scale_floor_codes_with_table_k_at_least(tmp_path, capsys):
    """experiments/codec_scale_floor.py (the README's scale-floor figure): with a floor of k tables no
    latent is coded with a table below k, files still decode exactly, and floor 0 is the codec."""
    script = experiment_script("codec_scale_floor")
    torch.manual_seed(0)
    weights = export_codec(HyperpriorCodec(N=8, M=8, lambdas=(0.01, 0.1)), tmp_path / "tiny.safetensors", model_id="tiny")
    rgb = photo((64, 64))
    plain = load_codec(quality=2, weights=weights)
    low = script.floored(load_codec(quality=2, weights=weights), 0)
    assert low.compress(rgb) == plain.compress(rgb)
    high = script.floored(load_codec(quality=2, weights=weights), 63)  # every latent on the widest table
    scales = torch.tensor([1e-3, 0.05, 0.2, 1.0, 1e3], dtype=torch.float64)
    assert (high.layout.gaussian.index(scales) == 63).all() and (plain.layout.gaussian.index(scales)[:2] == 0).all()
    data = high.compress(rgb)
    assert np.array_equal(high.decompress(data), high.reconstruct(rgb)) and len(data) > len(plain.compress(rgb))
    assert load_codec(quality=1, weights=weights).layout.gaussian.index(scales)[0] == 0  # the shared, cached model is untouched
    (tmp_path / "images").mkdir()
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    script.main(["--data", str(tmp_path / "images"), "--weights", str(weights), "--qualities", "2", "--floors", "0", "63"])
    out = capsys.readouterr().out
    sizes = re.search(r"quality 2: floor 0 \(scale 0\.110\): (\d+) B, floor 63 \(scale 256\.000\): (\d+) B \(1 images\)", out)
    assert sizes and int(sizes.group(1)) == len(plain.compress(rgb)) and int(sizes.group(2)) == len(data), out


def test_experiment_codec_side_search_counts_the_files_it_changed(tmp_path, capsys, monkeypatch):
    """experiments/codec_side_search.py (the README's side-search figures) on a tiny checkerboard model:
    with --share 0 every image is searched; the byte totals are those of load_codec with the search
    off and on, and the count of changed files is that of files that differ."""
    import fastae.codec.refine as refine

    for name in ("SEARCH_SHARE", "OUTLIER_BITS", "SEARCH_STEPS", "SEARCH_LR"):  # the script sets them: restore them after
        monkeypatch.setattr(refine, name, getattr(refine, name))
    script = experiment_script("codec_side_search")
    torch.manual_seed(0)
    model = CheckerboardCodec(N=8, M=8, lambdas=(0.01, 0.1))
    torch.nn.init.normal_(model.ctx.params[-1].weight, std=0.3)
    weights = export_codec(model, tmp_path / "tiny.safetensors", model_id="tiny")
    (tmp_path / "images").mkdir()
    images = [photo((64, 64)), photo((64, 128))]
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(tmp_path / "images" / f"{i}.png")
    script.main(["--data", str(tmp_path / "images"), "--weights", str(weights), "--qualities", "2", "--share", "0",
                "--steps", "4", "--lr", "0.5"])
    out = capsys.readouterr().out
    off = [load_codec(quality=2, weights=weights, side_search=False).compress(rgb) for rgb in images]
    on = [load_codec(quality=2, weights=weights).compress(rgb) for rgb in images]  # the script's settings are still set
    m = re.search(r"quality 2: search off (\d+) B, [0-9.]+ dB, [0-9.]+ s; on (\d+) B \([-+][0-9.]+%\), [0-9.]+ dB, "
                  r"[0-9.]+ s; files changed by the search: (\d) of 2", out)
    assert m, out
    assert int(m.group(1)) == sum(map(len, off)) and int(m.group(2)) == sum(map(len, on))
    assert int(m.group(3)) == sum(a != b for a, b in zip(off, on)) > 0


def test_experiment_codec_precision_compares_both_paths(tmp_path):
    """experiments/codec_precision.py (docs/codec.md's precision figures) on two small photos at one
    quality: each path's mean PSNR and bpp are those of its own compress and decompress, and every
    bf16 file reads to the same latents under either decoder."""
    from fastae.codec.metrics import psnr

    script = experiment_script("codec_precision")
    images = [photo((40, 56)), photo((48, 64))[::-1].copy()]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, rgb in enumerate(images):
        Image.fromarray(rgb).save(folder / f"{i}.png")
    script.main(["--data", str(folder), "--qualities", "2", "--output", str(tmp_path / "p.json")])
    (row,) = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert row["quality"] == 2 and row["images"] == 2 and row["same_latents_either_decoder"] == 2
    for precision in ("bfloat16", "float32"):
        codec = load_codec(quality=2, precision=precision)
        files = [codec.compress(rgb) for rgb in images]
        want_psnr = np.mean([psnr(rgb, codec.decompress(f)) for rgb, f in zip(images, files)])
        want_bpp = np.mean([len(f) * 8 / (rgb.shape[0] * rgb.shape[1]) for rgb, f in zip(images, files)])
        assert row[precision]["psnr"] == pytest.approx(want_psnr, abs=1e-9)
        assert row[precision]["bpp"] == pytest.approx(want_bpp, rel=1e-12)
    assert row["psnr_bf16_minus_fp32"] == pytest.approx(row["bfloat16"]["psnr"] - row["float32"]["psnr"])
