"""Rate-distortion evaluation of an image codec against the classic codecs, measured in the same run.

This is what ``fastae eval --data DIR`` runs. A codec is measured at a few quality settings on a
set of images; each (quality, image) pair gives a rate in bits per pixel (``8 * len(bytes) / (H * W)``,
the whole compressed file) and a distortion (PSNR in dB, MS-SSIM). The reference codecs (through
Pillow, encoded and decoded in memory: WebP and JPEG; AVIF where Pillow has libavif; HEIC and JPEG
XL with the ``eval`` extra's plugins; see ``REFERENCES``) are measured on the same images, and the
curves are compared with the Bjøntegaard delta rate (BD-rate) and delta PSNR (BD-PSNR).

Usage::

    from fastae.codec.eval import evaluate, plot_rd

    def load(quality):                     # quality -> an object with compress() / decompress()
        return MyCodec.from_checkpoint(f"runs/codec/q{quality}.pt")

    images = {p.stem: np.asarray(Image.open(p).convert("RGB")) for p in Path("kodak").glob("*.png")}
    result = evaluate(load, images, qualities=[1, 2, 3, 4])
    print(result["bd_rate"])               # {"webp": -12.3, "jpeg": -41.0}: % bits saved vs each
    json.dump(result, open("rd.json", "w"))
    plot_rd(result, "rd.png")

Conventions:

* A codec's RD curve is the per-quality **mean over images** of bpp and of PSNR (the mean of the
  per-image PSNRs, not the PSNR of the mean MSE), as in the usual Kodak tables. BD-rates,
  ``psnr_at`` values and the plot use these mean curves.
* BD-rate and BD-PSNR follow VCEG-M33 with piecewise cubic Hermite (PCHIP) interpolation instead
  of the cubic polynomial fit, as CompressAI and the common ``bjontegaard`` packages do; the
  integrals are exact (``PchipInterpolator.integrate``).
* MS-SSIM needs images larger than 160 px on each side for its 5 scales; smaller images get fewer
  scales (see :func:`ms_ssim`), so MS-SSIM values are only comparable between images of similar size.
* PSNR and MS-SSIM are computed on the RGB arrays (all channels together), with peak value 255.

The result of :func:`evaluate` is plain JSON: qualities are string keys, and values that are not
finite numbers (the PSNR of a lossless image, a BD-rate that cannot be computed) are ``None``.

MS-SSIM needs the optional ``pytorch_msssim`` package (``pip install fastae[eval]``), plotting needs
matplotlib; both are imported only when used.
"""

import functools
import io
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import numpy as np

from fastae.codec.metrics import _WIN_SIZE, MS_SSIM_WEIGHTS, _ms_ssim_levels, ms_ssim, psnr  # noqa: F401 (re-exported)

PathLike = Union[str, os.PathLike]

__all__ = [
    "psnr", "ms_ssim", "pillow_codec_points", "REFERENCES", "Reference", "check_references", "rd_figure", "bd_rate", "bd_psnr", "psnr_at_rate", "evaluate", "plot_rd",
    "DEFAULT_QUALITIES", "MS_SSIM_WEIGHTS", "PSNR_AT_BPP", "rd_markdown", "write_rd_section",
]


@dataclass(frozen=True)
class Reference:
    """A classic codec measured beside fastae, through Pillow: its label, Pillow's format name and
    save arguments (besides ``quality``), its quality ladder, and the plugin module it needs."""
    label: str
    format: str
    options: Dict[str, Any]
    ladder: tuple
    plugin: Optional[str] = None  # module to import (it registers the format with Pillow)
    install: str = "pip install 'fastae[eval]'"


#: The reference codecs. Settings as in the usual comparisons: JPEG 4:2:0 optimized; WebP method 6
#: (slowest, best); AVIF (Pillow's libavif, AOM) speed 6, 4:4:4; HEIC through pillow-heif (libheif,
#: x265: HEVC intra, the coder of BPG) 4:4:4; JPEG XL through pillow-jxl-plugin (libjxl) effort 7.
#: The ladders span about 0.1 .. 2.5 bpp on Kodak (AVIF and HEIC reach about 43 dB at the top).
REFERENCES = {
    "webp": Reference("WebP", "WEBP", {"method": 6}, (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90)),
    "jpeg": Reference("JPEG", "JPEG", {"subsampling": 2, "optimize": True},  # 2 = 4:2:0
                      (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90)),
    "avif": Reference("AVIF", "AVIF", {"speed": 6, "subsampling": "4:4:4"}, (5, 10, 20, 30, 40, 50, 60, 70, 80, 90),
                      install="pip install -U pillow (a Pillow built with libavif: 11.2 or newer)"),
    "heic": Reference("HEIC (x265)", "HEIF", {"chroma": 444}, (5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65),
                      plugin="pillow_heif"),
    "jxl": Reference("JPEG XL", "JXL", {"effort": 7}, (1, 5, 10, 20, 35, 50, 65, 80, 90, 95), plugin="pillow_jxl"),
}

#: Each reference codec's quality ladder.
DEFAULT_QUALITIES = {name: ref.ladder for name, ref in REFERENCES.items()}

#: Rates (bpp) at which :func:`evaluate` reports each codec's interpolated PSNR.
PSNR_AT_BPP = (0.25, 0.5, 1.0)

_CODEC_NAMES = {"fastae": "fastae", **{name: ref.label for name, ref in REFERENCES.items()}}
_SUMMARY_KEYS = ("meta", "bd_rate", "bd_psnr", "psnr_at")


# ---------------------------------------------------------------------------------------------
# Reference codecs
# ---------------------------------------------------------------------------------------------

def _check_image(name: str, image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected {name} to be an HxWx3 uint8 array, got shape {a.shape} dtype {a.dtype}")
    return a


def _pillow_encode(image: np.ndarray, codec: str, quality) -> bytes:
    from PIL import Image

    ref = REFERENCES[codec]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=ref.format, quality=int(quality), **ref.options)
    return buf.getvalue()


def _pillow_decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


@functools.lru_cache(maxsize=None)
def _available(codec: str) -> Optional[str]:
    """None when Pillow can write and read ``codec`` here, else why not and what to install."""
    from PIL import features

    ref = REFERENCES[codec]
    if ref.plugin is not None:
        try:
            module = __import__(ref.plugin)
        except ImportError:
            return f"{ref.label} needs the {ref.plugin.replace('_', '-')} package: {ref.install}"
        if ref.plugin == "pillow_heif":  # registers HEIF with Pillow (pillow_jxl does so on import)
            module.register_heif_opener()
    elif codec == "avif" and not features.check("avif"):
        return f"{ref.label}: this Pillow was built without AVIF support: {ref.install}"
    return None


def _check_codec_name(codec: str) -> str:
    name = str(codec).lower()
    if name not in REFERENCES:
        raise ValueError(f"unknown reference codec {codec!r}: expected one of {sorted(REFERENCES)}")
    return name


def check_references(references: Iterable[str]) -> List[str]:
    """The reference codec names, checked: ValueError for an unknown one, ModuleNotFoundError (naming
    what to install) for one that this Pillow cannot write."""
    names = [_check_codec_name(r) for r in references]
    for name in names:
        why = _available(name)
        if why is not None:
            raise ModuleNotFoundError(why)
    return names


class _PillowCodec:
    """compress()/decompress() through Pillow at one quality: the reference codecs in :func:`evaluate`."""

    def __init__(self, codec: str, quality):
        self.codec, self.quality = check_references([codec])[0], quality

    def compress(self, image: np.ndarray) -> bytes:
        return _pillow_encode(image, self.codec, self.quality)

    def decompress(self, data: bytes) -> np.ndarray:
        return _pillow_decode(data)


def pillow_codec_points(image, codec: str = "webp", qualities: Optional[Iterable] = None) -> List[Dict[str, Any]]:
    """Encode an HxWx3 uint8 image with a reference codec (``REFERENCES``: webp, jpeg, avif, heic,
    jxl) at each quality, in memory, and decode it. ``qualities`` defaults to the codec's ladder. Returns one dict per quality, in
    the given order: ``{"quality", "bytes", "bpp", "psnr", "ms_ssim"}`` where ``bytes`` is the size
    of the whole file and ``bpp = 8 * bytes / (H * W)``.
    """
    name = check_references([codec])[0]
    a = _check_image("image", image)
    qualities = DEFAULT_QUALITIES[name] if qualities is None else list(qualities)
    points = []
    for q in qualities:
        if not 0 <= q <= 100:
            raise ValueError(f"{name} quality must be in 0..100, got {q!r}")
        data = _pillow_encode(a, name, q)
        decoded = _pillow_decode(data)
        points.append({"quality": q, "bytes": len(data), "bpp": 8.0 * len(data) / (a.shape[0] * a.shape[1]),
                       "psnr": psnr(a, decoded), "ms_ssim": _ms_ssim_or_none(a, decoded)})
    return points


# ---------------------------------------------------------------------------------------------
# Bjøntegaard deltas
# ---------------------------------------------------------------------------------------------

def _curve(name: str, rates, psnrs):
    """Validated (rate, psnr) float64 arrays sorted by rate."""
    r = np.asarray(rates, dtype=np.float64).ravel()
    p = np.asarray(psnrs, dtype=np.float64).ravel()
    if len(r) != len(p):
        raise ValueError(f"{name}: rates and PSNRs must have the same length, got {len(r)} rates and {len(p)} PSNRs")
    if len(r) < 2:
        raise ValueError(f"{name}: need at least 2 (rate, PSNR) points, got {len(r)}")
    if not np.all(np.isfinite(r)) or not np.all(r > 0):
        raise ValueError(f"{name}: rates must be finite and positive, got {r.tolist()}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: PSNRs must be finite, got {p.tolist()}")
    order = np.argsort(r, kind="stable")
    return r[order], p[order]


def _monotone(name: str, r, p):
    if not (np.all(np.diff(r) > 0) and np.all(np.diff(p) > 0)):
        raise ValueError(f"{name}: PSNR must increase strictly with rate for Bjøntegaard interpolation, got "
                         f"(rate, PSNR) points {list(zip(r.tolist(), p.tolist()))}")


def _bd_curves(rate_anchor, psnr_anchor, rate_test, psnr_test):
    ra, pa = _curve("anchor", rate_anchor, psnr_anchor)
    rt, pt = _curve("test", rate_test, psnr_test)
    _monotone("anchor", ra, pa)
    _monotone("test", rt, pt)
    return np.log(ra), pa, np.log(rt), pt


def _mean_diff(xa, ya, xt, yt, what: str) -> float:
    """Mean of (PCHIP(xt, yt) - PCHIP(xa, ya)) over the overlap of the two x ranges (x increasing)."""
    from scipy.interpolate import PchipInterpolator

    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if not hi > lo:
        raise ValueError(f"no {what} overlap between the curves: anchor spans [{xa[0]:.4g}, {xa[-1]:.4g}], "
                         f"test spans [{xt[0]:.4g}, {xt[-1]:.4g}]")
    int_a = PchipInterpolator(xa, ya).integrate(lo, hi)
    int_t = PchipInterpolator(xt, yt).integrate(lo, hi)
    return float((int_t - int_a) / (hi - lo))


def bd_rate(rate_anchor, psnr_anchor, rate_test, psnr_test) -> float:
    """Bjøntegaard delta rate in percent: the average bitrate difference of the test curve against the
    anchor at equal PSNR, over the PSNR interval both curves cover. Negative: test needs fewer bits.

    VCEG-M33 with PCHIP interpolation of log(rate) as a function of PSNR, integrated exactly. Each
    curve is a sequence of >= 2 (rate, PSNR) points (any rate unit, the same for both; any order,
    sorted by rate here) whose PSNR increases strictly with rate. Raises ValueError for mismatched
    lengths, fewer than 2 points, non-positive rates, non-monotone curves or no PSNR overlap.
    """
    la, pa, lt, pt = _bd_curves(rate_anchor, psnr_anchor, rate_test, psnr_test)
    return float((math.exp(_mean_diff(pa, la, pt, lt, "PSNR")) - 1.0) * 100.0)


def bd_psnr(rate_anchor, psnr_anchor, rate_test, psnr_test) -> float:
    """Bjøntegaard delta PSNR in dB: the average PSNR difference of the test curve against the anchor
    at equal rate, over the log-rate interval both curves cover. Positive: test has higher quality.

    PCHIP interpolation of PSNR as a function of log(rate), integrated exactly; inputs and errors
    as for :func:`bd_rate` (no rate overlap instead of no PSNR overlap).
    """
    la, pa, lt, pt = _bd_curves(rate_anchor, psnr_anchor, rate_test, psnr_test)
    return _mean_diff(la, pa, lt, pt, "log-rate")


def psnr_at_rate(rates, psnrs, target_bpp: float) -> float:
    """PSNR of a curve at ``target_bpp``, interpolated linearly in log(rate) between the two measured
    points around it; ``nan`` when ``target_bpp`` is outside the measured rate range.

    Points are sorted by rate; they need not be monotone in PSNR. Raises ValueError as :func:`bd_rate`
    for malformed curves and for a non-positive or non-finite ``target_bpp``.
    """
    r, p = _curve("curve", rates, psnrs)
    target = float(target_bpp)
    if not (math.isfinite(target) and target > 0):
        raise ValueError(f"target_bpp must be a finite positive rate, got {target_bpp!r}")
    if target < r[0] or target > r[-1]:
        return float("nan")
    return float(np.interp(math.log(target), np.log(r), p))


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def _finite_or_none(x) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def _ms_ssim_or_none(a, b) -> Optional[float]:
    """MS-SSIM, or None for an image smaller than its window (it has no MS-SSIM; its other figures stand)."""
    if min(a.shape[:2]) < _WIN_SIZE:
        return None
    return _finite_or_none(ms_ssim(a, b))


def _measure(codec, image: np.ndarray, name: str, quality) -> Dict[str, Optional[float]]:
    t0 = time.perf_counter()
    data = codec.compress(image)
    t1 = time.perf_counter()
    decoded = codec.decompress(data)
    t2 = time.perf_counter()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"codec.compress() at quality {quality!r} must return bytes, got {type(data).__name__}")
    decoded = np.asarray(decoded)
    if decoded.shape != image.shape or decoded.dtype != np.uint8:
        raise ValueError(f"codec.decompress() at quality {quality!r} on image {name!r} must return a uint8 "
                         f"array of shape {image.shape}, got shape {decoded.shape} dtype {decoded.dtype}")
    return {"bpp": 8.0 * len(bytes(data)) / (image.shape[0] * image.shape[1]),
            "psnr": _finite_or_none(psnr(image, decoded)), "ms_ssim": _ms_ssim_or_none(image, decoded),
            "encode_s": t1 - t0, "decode_s": t2 - t1}


def _mean(values) -> Optional[float]:
    values = list(values)
    if any(v is None for v in values):  # an infinite PSNR (lossless image) makes the mean infinite
        return None
    return float(np.mean(values))


def _curve_points(curve: Mapping[str, Any]):
    """(mean bpp, mean PSNR) arrays of one codec's result, for qualities with finite means."""
    pts = [(v["mean"]["bpp"], v["mean"]["psnr"]) for v in curve.values()
           if v["mean"]["bpp"] is not None and v["mean"]["psnr"] is not None]
    pts.sort()
    return np.array([p[0] for p in pts], dtype=np.float64), np.array([p[1] for p in pts], dtype=np.float64)


def _safe(fn, *args, what: str) -> Optional[float]:
    try:
        return _finite_or_none(fn(*args))
    except ValueError as e:
        warnings.warn(f"{what} not computed: {e}", RuntimeWarning, stacklevel=3)
        return None


def evaluate(codec: Callable[[Any], Any], images: Mapping[str, Any], qualities: Iterable,
             references: Iterable[str] = ("webp", "jpeg"), progress: bool = True,
             reference_qualities: Optional[Mapping[str, Iterable]] = None) -> Dict[str, Any]:
    """Measure a codec and the reference codecs on ``images``; return the RD curves and their comparison.

    Args:
        codec: ``codec(quality)`` returns an object with ``compress(image) -> bytes`` and
            ``decompress(bytes) -> image`` for HxWx3 uint8 arrays (e.g. a function loading the
            checkpoint trained for that quality). Called once per quality.
        images: name -> HxWx3 uint8 array.
        qualities: the quality settings passed to ``codec``; any JSON-representable values.
        references: codecs to measure in the same run, from ``REFERENCES`` (webp, jpeg, avif, heic, jxl).
        progress: show a tqdm bar over all (codec, quality, image) measurements.
        reference_qualities: optional codec name -> quality ladder, overriding ``DEFAULT_QUALITIES``.

    Returns a JSON-serialisable dict (qualities as string keys, non-finite numbers as ``None``)::

        {"fastae": {"<q>": {"per_image": {name: {"bpp", "psnr", "ms_ssim", "encode_s", "decode_s"}},
                            "mean": {"bpp", "psnr", "ms_ssim"}}},
         "webp": {...same, keyed by Pillow quality}, "jpeg": {...},
         "bd_rate": {"webp": %, "jpeg": %},     # fastae vs each reference (anchor); < 0: fewer bits
         "bd_psnr": {"webp": dB, "jpeg": dB},
         "psnr_at": {"fastae": {"0.25": dB, "0.5": dB, "1.0": dB}, "webp": {...}, "jpeg": {...}}}

    The curves compared are the per-quality means over images (mean bpp, mean of per-image PSNRs).
    A BD value that cannot be computed (fewer than 2 qualities, no overlap, a non-monotone curve)
    is ``None`` with a RuntimeWarning; a ``psnr_at`` rate outside a curve's range is ``None``.
    """
    from tqdm.auto import tqdm

    if not isinstance(images, Mapping) or len(images) == 0:
        raise ValueError(f"expected images to be a non-empty dict name -> HxWx3 uint8 array, got {type(images).__name__}"
                         f" of length {len(images) if hasattr(images, '__len__') else '?'}")
    images = {str(k): _check_image(f"image {k!r}", v) for k, v in images.items()}
    qualities = list(qualities)
    if not qualities:
        raise ValueError("expected at least one quality, got none")
    keys = [str(q) for q in qualities]
    if len(set(keys)) != len(keys):
        raise ValueError(f"qualities must be distinct, got {qualities}")
    references = check_references(references)
    overrides = {_check_codec_name(k): list(v) for k, v in (reference_qualities or {}).items()}
    ladders = {r: overrides.get(r, list(DEFAULT_QUALITIES[r])) for r in references}

    plan = [("fastae", qualities, codec)] + [(r, ladders[r], lambda q, r=r: _PillowCodec(r, q)) for r in references]
    total = sum(len(qs) for _, qs, _ in plan) * len(images)
    result: Dict[str, Any] = {}
    with tqdm(total=total, disable=not progress, unit="img", desc="eval") as bar:
        for name, qs, factory in plan:
            curve = result[name] = {}
            for q in qs:
                bar.set_description(f"eval {_CODEC_NAMES[name]} q={q}")
                c = factory(q)
                per_image = {}
                for image_name, image in images.items():
                    per_image[image_name] = _measure(c, image, image_name, q)
                    bar.update(1)
                curve[str(q)] = {"per_image": per_image,
                                 "mean": {k: _mean(m[k] for m in per_image.values()) for k in ("bpp", "psnr", "ms_ssim")}}

    test = _curve_points(result["fastae"])
    result["bd_rate"], result["bd_psnr"] = {}, {}
    for r in references:
        anchor = _curve_points(result[r])
        result["bd_rate"][r] = _safe(bd_rate, *anchor, *test, what=f"BD-rate vs {r}")
        result["bd_psnr"][r] = _safe(bd_psnr, *anchor, *test, what=f"BD-PSNR vs {r}")
    result["psnr_at"] = {}
    for name in ["fastae", *references]:
        rates, psnrs = _curve_points(result[name])
        result["psnr_at"][name] = {
            str(t): (_finite_or_none(psnr_at_rate(rates, psnrs, t)) if len(rates) >= 2 else None)
            for t in PSNR_AT_BPP}
    return result


def add_comparison(result: Dict[str, Any], earlier: Mapping[str, Any], name: str) -> Dict[str, Any]:
    """Put the fastae curve of an ``earlier`` evaluate() result (another model, same images) into
    ``result`` as codec ``name``: plotted by :func:`plot_rd`, with fastae's BD-rate and BD-PSNR
    against it and its PSNR at the reference rates. Returns ``result``."""
    if "fastae" not in earlier:
        raise ValueError("add_comparison: the earlier result has no 'fastae' curve")
    if name in result:
        raise ValueError(f"add_comparison: {name!r} is already a curve of this result")
    result[name] = earlier["fastae"]
    anchor, test = _curve_points(earlier["fastae"]), _curve_points(result["fastae"])
    result.setdefault("bd_rate", {})[name] = _safe(bd_rate, *anchor, *test, what=f"BD-rate vs {name}")
    result.setdefault("bd_psnr", {})[name] = _safe(bd_psnr, *anchor, *test, what=f"BD-PSNR vs {name}")
    rates, psnrs = anchor
    result.setdefault("psnr_at", {})[name] = {
        str(t): (_finite_or_none(psnr_at_rate(rates, psnrs, t)) if len(rates) >= 2 else None) for t in PSNR_AT_BPP}
    return result


# ---------------------------------------------------------------------------------------------
# Reports (fastae/codec/rd_report.py): the plot and the README tables
# ---------------------------------------------------------------------------------------------

def plot_rd(result: Mapping[str, Any], path: PathLike) -> Path:
    """Write the RD plot of ``result`` to ``path`` (PNG): see ``fastae.codec.rd_report.plot_rd``."""
    from fastae.codec.rd_report import plot_rd as plot

    return plot(result, path)


def __getattr__(name):  # rd_figure, rd_markdown, write_rd_section, main, RD_START, RD_END
    if name in ("rd_figure", "rd_markdown", "write_rd_section", "main", "RD_START", "RD_END"):
        from fastae.codec import rd_report

        return getattr(rd_report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from fastae.codec.rd_report import main

    raise SystemExit(main())
