"""fastae eval's reference codecs beyond WebP and JPEG: AVIF, HEIC (x265) and JPEG XL, through Pillow."""

import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from fastae.codec import eval as ce


def _photo_like(h=96, w=128, seed=0):
    """Smooth colour gradients with a few edges: compressible like a photo, unlike noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([np.sin(xx * (3 + c) + yy * 2 + c) * 0.35 + 0.5 for c in range(3)], axis=2)
    for _ in range(4):
        top, left = rng.integers(0, h - 20), rng.integers(0, w - 20)
        rgb[top:top + 20, left:left + 30] = rng.random(3)
    rgb += rng.normal(0, 0.01, rgb.shape)
    return (rgb.clip(0, 1) * 255).round().astype(np.uint8)


def _needs(codec):
    why = ce._available(codec)
    return pytest.mark.skipif(why is not None, reason=str(why))


@pytest.mark.parametrize("codec", [pytest.param(c, marks=_needs(c)) for c in ("avif", "heic", "jxl")])
def test_reference_points_are_pillows_own_files(codec):
    image = _photo_like()
    ladder = ce.REFERENCES[codec].ladder
    qualities = [ladder[1], ladder[len(ladder) // 2], ladder[-1]]
    points = ce.pillow_codec_points(image, codec, qualities)
    bpps, psnrs = [p["bpp"] for p in points], [p["psnr"] for p in points]
    assert all(b2 > b1 for b1, b2 in zip(bpps, bpps[1:])), bpps
    assert all(p2 > p1 for p1, p2 in zip(psnrs, psnrs[1:])), psnrs
    # The bytes are those of Pillow's save with the documented settings; the PSNR is numpy's.
    ref = ce.REFERENCES[codec]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=ref.format, quality=qualities[1], **ref.options)
    data = buf.getvalue()
    assert points[1]["bytes"] == len(data)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    mse = np.mean((decoded.astype(float) - image.astype(float)) ** 2)
    assert points[1]["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-9)


@_needs("avif")
def test_avif_reference_is_444():
    buf = io.BytesIO()
    ref = ce.REFERENCES["avif"]
    Image.fromarray(_photo_like()).save(buf, format=ref.format, quality=50, **ref.options)
    data = buf.getvalue()
    # av1C box payload byte 2: tier, high_bitdepth, twelve_bit, monochrome, subsampling x, subsampling y, position
    flags = data[data.index(b"av1C") + 4 + 2]
    assert (flags >> 3) & 1 == 0 and (flags >> 2) & 1 == 0 and (flags >> 4) & 1 == 0  # 4:4:4, colour


@_needs("heic")
def test_heic_reference_is_444():
    import pillow_heif

    buf = io.BytesIO()
    ref = ce.REFERENCES["heic"]
    Image.fromarray(_photo_like()).save(buf, format=ref.format, quality=50, **ref.options)
    assert pillow_heif.open_heif(io.BytesIO(buf.getvalue())).info["chroma"] == 444


def test_missing_plugin_names_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pillow_jxl", None)  # import fails as if not installed
    ce._available.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match=r"JPEG XL needs the pillow-jxl package: pip install 'fastae\[eval\]'"):
            ce.check_references(["webp", "jxl"])
        with pytest.raises(ValueError, match="unknown reference codec 'bpg'"):
            ce.check_references(["bpg"])
    finally:
        ce._available.cache_clear()


class _Quantizer:
    """A stand-in codec, far worse than any reference: 2x2 block means rounded to a multiple of
    ``step`` and deflated (0.3 .. 1.6 bpp on ``_photo_like`` for steps 64 .. 8)."""

    def __init__(self, step):
        self.step = step

    def compress(self, image):
        h, w = image.shape[:2]
        q = np.round(image.reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)) / self.step).astype(np.uint8)
        return h.to_bytes(2, "big") + zlib.compress(q.tobytes(), 9)

    def decompress(self, data):
        h = int.from_bytes(data[:2], "big")
        q = np.frombuffer(zlib.decompress(data[2:]), np.uint8).reshape(h // 2, -1, 3).astype(float) * self.step
        return np.clip(q.repeat(2, 0).repeat(2, 1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec", [pytest.param(c, marks=_needs(c)) for c in ("avif", "heic", "jxl")])
def test_evaluate_measures_every_reference_in_the_same_run(codec, tmp_path):
    images = {"a": _photo_like(seed=1), "b": _photo_like(seed=2)}
    ladder = ce.REFERENCES[codec].ladder
    result = ce.evaluate(_Quantizer, images, qualities=[64, 32, 16, 8], references=["webp", codec],
                         progress=False, reference_qualities={codec: ladder})
    assert set(result[codec]) == {str(q) for q in ladder}
    assert set(result["bd_psnr"]) == set(result["bd_rate"]) == {"webp", codec}
    # The deflated quantizer is far worse than every reference: several dB lower at equal rate.
    assert result["bd_psnr"][codec] < -3 and result["bd_psnr"]["webp"] < -3
    assert result[codec][str(ladder[-1])]["mean"]["psnr"] > result[codec][str(ladder[0])]["mean"]["psnr"]
    path = ce.plot_rd(result, tmp_path / "rd.png")
    with Image.open(path) as im:
        assert im.width > im.height  # the legend sits to the right of the axes
    json.dumps(result)


def test_cli_eval_without_a_plugin_says_what_to_install(monkeypatch, tmp_path, capsys):
    from fastae.cli import main

    Image.fromarray(_photo_like()).save(tmp_path / "a.png")
    monkeypatch.setitem(__import__("sys").modules, "pillow_heif", None)
    ce._available.cache_clear()
    try:
        assert main(["eval", "--data", str(tmp_path), "--references", "webp", "heic",
                     "--output", str(tmp_path.parent / "rd.json")]) == 1
    finally:
        ce._available.cache_clear()
    err = capsys.readouterr().err
    assert err.strip() == "fastae eval: HEIC (x265) needs the pillow-heif package: pip install 'fastae[eval]'"
    assert not (tmp_path.parent / "rd.json").exists()


# ---------------------------------------------------------------------------------------------- README tables

STORED = (__import__("pathlib").Path(__file__).resolve().parents[1] / "bench" / "results"
          / "codec-kodak-checkerboard-v4-search-cpu-2026-11-25.json")


@pytest.mark.skipif(not STORED.is_file(), reason="bench/results is not here (an sdist, not a checkout)")
def test_rd_table_of_a_stored_eval_carries_its_numbers_between_the_markers(tmp_path):
    result = json.loads(STORED.read_text())
    readme = tmp_path / "README.md"
    head, tail = "# x\r\n\n<!-- codec-table:start -->\n", "\n<!-- codec-table:end -->\nafter\n"
    readme.write_bytes((head + "old" + tail).encode())
    assert ce.main([str(STORED), "--readme", str(readme), "--titles", "Kodak"]) == 0
    text = readme.read_bytes().decode()
    assert text.startswith(head) and text.endswith(tail) and "old" not in text
    rows = {line.split(" | ")[0].strip("| *"): line for line in text.splitlines() if line.startswith("| ")}
    fastae_row = rows["fastae-checkerboard-v4"]
    for bpp in ("0.25", "0.5", "1.0"):
        assert f"**{result['psnr_at']['fastae'][bpp]:.2f}**" in fastae_row
    webp = rows["WebP, method 6"]
    assert f"{result['bd_rate']['webp']:+.1f}%" in webp and f"{result['psnr_at']['webp']['1.0']:.2f}" in webp
    assert "fastae-checkerboard-v2" not in rows  # --compare curves are not references
    q8 = result["fastae"]["8"]["mean"]
    assert f"{q8['bpp']:.2f} bpp" in text or f", {q8['bpp']:.2f} bpp" in text
    # Not an eval result, a title count that does not match: errors, the file untouched.
    assert ce.main([str(tmp_path / "README.md"), "--readme", str(readme)]) == 2
    assert ce.main([str(STORED), str(STORED), "--readme", str(readme), "--titles", "one"]) == 2
    assert readme.read_bytes().decode() == text
