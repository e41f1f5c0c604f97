"""fastae.codec.eval: PSNR / MS-SSIM, Pillow reference codecs, Bjøntegaard deltas, evaluate(), plot_rd().

Numbers are checked against independent oracles: hand-computed PSNRs, pytorch_msssim itself, BD values
that follow in closed form from scaled or shifted curves, and Pillow's own encoder output.
"""

import io
import json
import math
import warnings

import numpy as np
import pytest
from PIL import Image

from fastae.codec import eval as ce
from tests._codec import photo

CROP = (128, 192)  # H, W of the test images: fast, and above the 80 px needed for 4 MS-SSIM scales


def _photos(n, crop=CROP):
    """n images of real photo content (the crops of tests/data/codec, tiled to ``crop``), named photo0..."""
    image = photo(crop)
    return {f"photo{i}": np.ascontiguousarray(np.rot90(image, 2 * i)) for i in range(n)}


def _noisy(a, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(a.astype(np.float64) + rng.normal(0, sigma, a.shape), 0, 255).round().astype(np.uint8)


def _smooth_image(h, w, seed=0):
    """A smooth synthetic RGB image (so SSIM values are not dominated by the noise added to it)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    chans = [128 + 80 * np.sin(x / (5 + 3 * c) + rng.uniform(0, 3)) * np.cos(y / (7 + 2 * c)) for c in range(3)]
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)


# --- psnr ----------------------------------------------------------------------------------------

def test_psnr_hand_computed():
    a = np.full((4, 5, 3), 100, np.uint8)
    assert ce.psnr(a, a + 1) == pytest.approx(20 * math.log10(255), abs=1e-12)  # MSE 1
    assert ce.psnr(a + 1, a) == pytest.approx(48.13080360867909, abs=1e-12)
    b = a.copy()
    b[0, 0, 0] = 110  # one error of 10 among 60 values: MSE 100 / 60
    assert ce.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 * 60 / 100), abs=1e-12)
    assert ce.psnr(a[..., 0], a[..., 0] + 2) == pytest.approx(10 * math.log10(255 ** 2 / 4), abs=1e-12)  # HxW
    assert ce.psnr(a, a + 1, max_value=1.0) == pytest.approx(0.0, abs=1e-12)
    # uint8 arithmetic must not wrap: 0 vs 255 is an error of 255, MSE 255**2, PSNR 0
    assert ce.psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0, abs=1e-12)
    assert ce.psnr(a, a.copy()) == float("inf")


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(4, 5, 3\) and \(5, 4, 3\)"):
        ce.psnr(np.zeros((4, 5, 3), np.uint8), np.zeros((5, 4, 3), np.uint8))


# --- ms_ssim -------------------------------------------------------------------------------------

def test_ms_ssim_identical_and_monotone_in_noise():
    a = _smooth_image(192, 176)  # > 160 px: the 5-scale pytorch_msssim path
    assert ce.ms_ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-6)
    light, heavy = ce.ms_ssim(a, _noisy(a, 5)), ce.ms_ssim(a, _noisy(a, 25))
    assert 0 < heavy < light < 1


def test_ms_ssim_matches_pytorch_msssim():
    """The 5-scale path is pytorch_msssim's; the module's own multi-scale loop (used for 2-4 scales)
    reproduces pytorch_msssim.ms_ssim exactly when run with the 5 standard weights."""
    import pytorch_msssim
    import torch

    a = _smooth_image(170, 200, seed=1)
    b = _noisy(a, 12, seed=2)
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].float()
    ref = float(pytorch_msssim.ms_ssim(x, y, data_range=255))
    assert _ms_ssim_oracle(x, y, ce.MS_SSIM_WEIGHTS) == pytest.approx(ref, abs=1e-6)
    assert ce.ms_ssim(a, b) == pytest.approx(ref, abs=1e-12)
    assert ce._ms_ssim_levels(x, y, ce.MS_SSIM_WEIGHTS) == pytest.approx(ref, abs=1e-6)
    # one scale of the loop is plain SSIM
    assert ce._ms_ssim_levels(x, y, [1.0]) == pytest.approx(float(pytorch_msssim.ssim(x, y, data_range=255)), abs=1e-6)
    # and the float64 computation agrees to float32 precision
    assert ce._ms_ssim_levels(x.double(), y.double(), ce.MS_SSIM_WEIGHTS) == pytest.approx(ref, abs=1e-5)


def _ms_ssim_oracle(x, y, weights):
    """MS-SSIM with len(weights) scales assembled from pytorch_msssim's own per-scale (ssim, cs) function."""
    import sys

    import torch
    import torch.nn.functional as F

    mod = sys.modules["pytorch_msssim.ssim"]  # the module (the package's `ssim` attribute is the function)
    win = mod._fspecial_gauss_1d(11, 1.5).repeat(x.shape[1], 1, 1, 1)
    terms = []
    for level in range(len(weights)):
        s, cs = mod._ssim(x, y, data_range=255, win=win, size_average=False)
        if level < len(weights) - 1:
            terms.append(torch.relu(cs))
            pad = [n % 2 for n in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
        else:
            terms.append(torch.relu(s))
    return float(np.prod([t.double().numpy() ** w for t, w in zip(terms, weights)], axis=0).mean())


def test_ms_ssim_small_image_fallbacks():
    import pytorch_msssim
    import torch

    a64 = _smooth_image(64, 64, seed=3)  # 64 > 40: 3 scales with renormalised weights
    b64 = _noisy(a64, 10)
    v = ce.ms_ssim(a64, b64)
    x = torch.from_numpy(a64).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b64).permute(2, 0, 1)[None].float()
    w = np.array(ce.MS_SSIM_WEIGHTS[:3]) / sum(ce.MS_SSIM_WEIGHTS[:3])
    assert v == pytest.approx(_ms_ssim_oracle(x, y, w), abs=1e-6)
    assert 0 < v < 1 and ce.ms_ssim(a64, a64.copy()) == pytest.approx(1.0, abs=1e-6)
    assert ce.ms_ssim(a64, _noisy(a64, 30)) < v

    a16 = _smooth_image(16, 16, seed=4)  # <= 20 px: single-scale pytorch_msssim.ssim
    b16 = _noisy(a16, 10)
    x = torch.from_numpy(a16).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b16).permute(2, 0, 1)[None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "skipping Gaussian smoothing" warning: 16 >= 11
        assert ce.ms_ssim(a16, b16) == pytest.approx(float(pytorch_msssim.ssim(x, y, data_range=255)), abs=1e-12)
    assert ce.ms_ssim(a16, a16.copy()) == pytest.approx(1.0, abs=1e-6)

    with pytest.raises(ValueError, match=r"at least 11x11.*\(8, 30, 3\)"):
        ce.ms_ssim(np.zeros((8, 30, 3), np.uint8), np.zeros((8, 30, 3), np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        ce.ms_ssim(a64, a16)


def test_evaluate_keeps_going_on_an_image_too_small_for_ms_ssim():
    """A 1x1 image in the folder has no MS-SSIM (None, and so has the mean) but its rate and
    PSNR are measured, for fastae and the references alike."""
    images = {"a.png": _smooth_image(32, 32, seed=5), "dot.png": np.full((1, 1, 3), 90, np.uint8)}

    class Lossless:
        def compress(self, image):
            return np.asarray(image).tobytes()

        def decompress(self, data):
            return np.frombuffer(data, np.uint8).reshape(-1, 1, 3) if len(data) == 3 else \
                np.frombuffer(data, np.uint8).reshape(32, 32, 3)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # BD-rate of a lossless "codec": not computed
        result = ce.evaluate(lambda q: Lossless(), images, [1], references=("webp",), progress=False)
    row = result["fastae"]["1"]["per_image"]["dot.png"]
    assert row["ms_ssim"] is None and row["bpp"] == 24.0
    assert result["fastae"]["1"]["per_image"]["a.png"]["ms_ssim"] == pytest.approx(1.0, abs=1e-6)
    assert all(p["per_image"]["dot.png"]["ms_ssim"] is None for p in result["webp"].values())


# --- Bjøntegaard ---------------------------------------------------------------------------------

RATES = [0.2, 0.4, 0.7, 1.1, 1.6]
PSNRS = [27.0, 29.5, 31.8, 33.6, 35.1]


def test_bd_identical_scaled_and_shifted_curves():
    assert ce.bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-12)
    assert ce.bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-12)
    # 10% fewer bits at every PSNR: log-rate curves differ by log(0.9) everywhere
    assert ce.bd_rate(RATES, PSNRS, [r * 0.9 for r in RATES], PSNRS) == pytest.approx(-10.0, abs=1e-6)
    assert ce.bd_rate(RATES, PSNRS, [r * 1.25 for r in RATES], PSNRS) == pytest.approx(25.0, abs=1e-6)
    # +1 dB at every rate
    assert ce.bd_psnr(RATES, PSNRS, RATES, [p + 1 for p in PSNRS]) == pytest.approx(1.0, abs=1e-9)
    # order of the points does not matter (sorted by rate)
    perm = [3, 0, 4, 2, 1]
    assert ce.bd_rate([RATES[i] for i in perm], [PSNRS[i] for i in perm],
                      [0.9 * RATES[i] for i in perm[::-1]], [PSNRS[i] for i in perm[::-1]]) == pytest.approx(-10.0, abs=1e-6)


def test_bd_partial_overlap_exact():
    """Two-point curves are straight lines in (PSNR, log-rate), so BD-rate has a closed form: anchor
    log r = log 0.5 + (p - 30) * log(2) / 4 on [30, 34]; test is the anchor halved, on [32, 36].
    Over the overlap [32, 34] the difference is log(0.5) everywhere -> -50%."""
    ra, pa = [0.5, 1.0], [30.0, 34.0]
    rt = [0.25 * 2 ** 0.5, 0.25 * 2 ** 1.5]  # anchor rates at 32 and 36 dB, halved
    pt = [32.0, 36.0]
    assert ce.bd_rate(ra, pa, rt, pt) == pytest.approx(-50.0, abs=1e-9)
    # BD-PSNR: at equal rate the test is 4 dB higher (half the bits = 4 dB on the anchor line)
    assert ce.bd_psnr(ra, pa, rt, pt) == pytest.approx(4.0, abs=1e-9)


def test_bd_errors():
    with pytest.raises(ValueError, match="same length.*3 rates and 2 PSNRs"):
        ce.bd_rate([1, 2, 3], [30, 31], RATES, PSNRS)
    with pytest.raises(ValueError, match="at least 2.*got 1"):
        ce.bd_rate(RATES, PSNRS, [1.0], [30.0])
    with pytest.raises(ValueError, match="positive"):
        ce.bd_rate([0.0, 1.0], [30, 31], RATES, PSNRS)
    with pytest.raises(ValueError, match="positive"):
        ce.bd_psnr(RATES, PSNRS, [-1.0, 1.0], [30, 31])
    with pytest.raises(ValueError, match="no PSNR overlap"):
        ce.bd_rate(RATES, PSNRS, [0.1, 0.2], [40.0, 41.0])
    with pytest.raises(ValueError, match="no log-rate overlap"):
        ce.bd_psnr(RATES, PSNRS, [5.0, 6.0], [30.0, 32.0])
    with pytest.raises(ValueError, match="increase strictly"):
        ce.bd_rate(RATES, [27.0, 29.5, 29.0, 33.6, 35.1], RATES, PSNRS)


def test_psnr_at_rate():
    rates, psnrs = [0.25, 1.0, 0.5], [28.0, 36.0, 32.0]  # unsorted on purpose
    assert ce.psnr_at_rate(rates, psnrs, 0.5) == pytest.approx(32.0, abs=1e-12)
    assert ce.psnr_at_rate(rates, psnrs, 0.25) == pytest.approx(28.0, abs=1e-12)
    assert ce.psnr_at_rate(rates, psnrs, 1.0) == pytest.approx(36.0, abs=1e-12)
    # linear in log-rate: sqrt(0.5 * 1.0) is halfway between the 0.5 and 1.0 points
    assert ce.psnr_at_rate(rates, psnrs, math.sqrt(0.5)) == pytest.approx(34.0, abs=1e-12)
    # a quarter of the way from 0.25 to 0.5 in log-rate
    assert ce.psnr_at_rate(rates, psnrs, 0.25 * 2 ** 0.25) == pytest.approx(29.0, abs=1e-12)
    assert math.isnan(ce.psnr_at_rate(rates, psnrs, 0.2))
    assert math.isnan(ce.psnr_at_rate(rates, psnrs, 1.01))
    with pytest.raises(ValueError, match="target_bpp"):
        ce.psnr_at_rate(rates, psnrs, 0.0)


# --- Pillow reference codecs ---------------------------------------------------------------------

def test_pillow_codec_points_on_a_photo():
    image = _photos(1)["photo0"]
    h, w = image.shape[:2]
    for codec, qualities in (("jpeg", [10, 30, 50, 70, 90]), ("webp", [5, 30, 60, 90])):
        points = ce.pillow_codec_points(image, codec, qualities)
        assert [p["quality"] for p in points] == qualities
        bpps, psnrs = [p["bpp"] for p in points], [p["psnr"] for p in points]
        assert all(b2 > b1 for b1, b2 in zip(bpps, bpps[1:])), (codec, bpps)
        assert all(p2 > p1 - 0.05 for p1, p2 in zip(psnrs, psnrs[1:])), (codec, psnrs)
        assert psnrs[-1] > psnrs[0] + 5
        assert all(0 < p["ms_ssim"] <= 1 for p in points)
        # bytes is the size of Pillow's own output with the documented settings, decoded PSNR matches
        buf = io.BytesIO()
        q = qualities[1]
        if codec == "jpeg":
            Image.fromarray(image).save(buf, "JPEG", quality=q, subsampling="4:2:0", optimize=True)
        else:
            Image.fromarray(image).save(buf, "WEBP", quality=q, method=6)
        data = buf.getvalue()
        assert points[1]["bytes"] == len(data)
        assert points[1]["bpp"] == pytest.approx(8 * len(data) / (h * w), rel=1e-12)
        decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        mse = np.mean((decoded.astype(float) - image.astype(float)) ** 2)
        assert points[1]["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=1e-9)
    with pytest.raises(ValueError, match="unknown reference codec 'png'"):
        ce.pillow_codec_points(image, "png")
    with pytest.raises(ValueError, match="HxWx3 uint8.*float64"):
        ce.pillow_codec_points(image.astype(float), "jpeg", [50])


# --- evaluate / plot_rd --------------------------------------------------------------------------

class _JpegCodec:
    """A stand-in for a learned codec: Pillow JPEG with the reference settings, at one quality."""

    def __init__(self, quality):
        self.quality = quality

    def compress(self, image):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=self.quality, subsampling="4:2:0", optimize=True)
        return buf.getvalue()

    def decompress(self, data):
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def result():
    images = _photos(2)
    return ce.evaluate(_JpegCodec, images, [20, 70], references=("webp", "jpeg"), progress=False,
                       reference_qualities={"webp": [10, 40, 80, 95], "jpeg": [20, 70]})


def test_evaluate_structure(result):
    images = _photos(2)
    assert set(result) == {"fastae", "webp", "jpeg", "bd_rate", "bd_psnr", "psnr_at"}
    assert list(result["fastae"]) == ["20", "70"] and list(result["webp"]) == ["10", "40", "80", "95"]
    for q, entry in result["fastae"].items():
        assert set(entry["per_image"]) == set(images)
        for name, m in entry["per_image"].items():
            assert set(m) == {"bpp", "psnr", "ms_ssim", "encode_s", "decode_s"}
            assert m["encode_s"] >= 0 and m["decode_s"] >= 0
            data = _JpegCodec(int(q)).compress(images[name])
            assert m["bpp"] == pytest.approx(8 * len(data) / (CROP[0] * CROP[1]), rel=1e-12)
            assert m["psnr"] == pytest.approx(ce.psnr(images[name], _JpegCodec(0).decompress(data)), abs=1e-12)
        for k in ("bpp", "psnr", "ms_ssim"):  # curves are per-quality means over images
            assert entry["mean"][k] == pytest.approx(np.mean([m[k] for m in entry["per_image"].values()]), rel=1e-12)
    assert result["fastae"]["70"]["mean"]["bpp"] > result["fastae"]["20"]["mean"]["bpp"]
    # the stand-in is exactly the JPEG reference: identical curves
    assert list(result["jpeg"]) == list(result["fastae"])
    for q, entry in result["jpeg"].items():
        assert entry["mean"] == result["fastae"][q]["mean"]
        for name, m in entry["per_image"].items():
            for k in ("bpp", "psnr", "ms_ssim"):
                assert m[k] == result["fastae"][q]["per_image"][name][k]
    assert result["bd_rate"]["jpeg"] == pytest.approx(0.0, abs=1e-9)
    assert result["bd_psnr"]["jpeg"] == pytest.approx(0.0, abs=1e-9)
    assert result["psnr_at"]["fastae"] == result["psnr_at"]["jpeg"]
    # against WebP the stand-in (JPEG) needs more bits: finite and positive
    assert math.isfinite(result["bd_rate"]["webp"]) and result["bd_rate"]["webp"] > 0
    assert math.isfinite(result["bd_psnr"]["webp"]) and result["bd_psnr"]["webp"] < 0
    assert set(result["psnr_at"]) == {"fastae", "webp", "jpeg"}
    assert set(result["psnr_at"]["webp"]) == {"0.25", "0.5", "1.0"}
    # psnr_at agrees with psnr_at_rate on the mean curve (None where outside the range)
    rates = [e["mean"]["bpp"] for e in result["webp"].values()]
    psnrs = [e["mean"]["psnr"] for e in result["webp"].values()]
    for t, v in result["psnr_at"]["webp"].items():
        expected = ce.psnr_at_rate(rates, psnrs, float(t))
        assert (v is None and math.isnan(expected)) or v == pytest.approx(expected, abs=1e-12)


def test_evaluate_json_round_trip(result):
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result


def test_evaluate_single_reference_and_errors():
    images = _photos(2)
    with warnings.catch_warnings(record=True) as caught:  # one quality: no BD values, no psnr_at
        warnings.simplefilter("always")
        r = ce.evaluate(_JpegCodec, images, [50], references=("webp",), progress=False,
                        reference_qualities={"webp": [30, 60]})
    messages = sorted(str(w.message) for w in caught if w.category is RuntimeWarning)
    assert len(messages) == 2 and messages[0].startswith("BD-PSNR vs webp not computed")
    assert messages[1].startswith("BD-rate vs webp not computed") and "at least 2" in messages[1]
    assert set(r) == {"fastae", "webp", "bd_rate", "bd_psnr", "psnr_at"}
    assert r["bd_rate"] == {"webp": None} and r["psnr_at"]["fastae"] == {"0.25": None, "0.5": None, "1.0": None}
    json.dumps(r, allow_nan=False)
    with pytest.raises(ValueError, match="unknown reference codec 'bpg'"):
        ce.evaluate(_JpegCodec, images, [50], references=("bpg",), progress=False)
    with pytest.raises(ValueError, match="HxWx3 uint8.*\\(4, 4\\)"):
        ce.evaluate(_JpegCodec, {"x": np.zeros((4, 4), np.uint8)}, [50], progress=False)

    class Bad(_JpegCodec):
        def decompress(self, data):
            return super().decompress(data)[:-1]

    with pytest.raises(ValueError, match=r"shape \(128, 192, 3\).*got shape \(127, 192, 3\)"):
        ce.evaluate(Bad, images, [50], references=(), progress=False)


def test_plot_rd(result, tmp_path):
    path = ce.plot_rd(result, tmp_path / "sub" / "rd.png")
    assert path == tmp_path / "sub" / "rd.png"
    assert [p.name for p in path.parent.iterdir()] == ["rd.png"]  # no temp file left behind
    assert path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert im.size == (1200, 600)
    # Every curve is named, and the legend lies outside the axes: it covers no data.
    fig = ce.rd_figure(result)
    fig.canvas.draw()
    legend, ax = fig.legends[0], fig.axes[0]
    assert [t.get_text().split(" (")[0] for t in legend.get_texts()] == ["fastae", "WebP", "JPEG"]
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1  # beside the axes, not cut off
    assert all(label.get_text() for label in ax.get_xticklabels() + ax.get_yticklabels())
    with pytest.raises(ValueError, match="at least one codec curve"):
        ce.plot_rd({"bd_rate": {}}, tmp_path / "empty.png")
