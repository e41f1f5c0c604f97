"""The reports of ``fastae eval`` results: the rate-distortion plot (``plot_rd``, ``rd_figure``) and
the markdown tables that ``python -m fastae.codec.eval --readme FILE RESULT.json ...`` writes
between ``<!-- codec-table:start -->`` and ``<!-- codec-table:end -->`` (``rd_markdown``,
``write_rd_section``)."""

from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from fastae._io import atomic_path
from fastae.codec.eval import _CODEC_NAMES, _SUMMARY_KEYS, PSNR_AT_BPP, REFERENCES, PathLike, _curve_points

# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------

#: Line styles of the plot: fastae solid, the references dashed or dotted, each its own marker.
_STYLES = {"fastae": "o-", "webp": "s--", "jpeg": "^:", "avif": "D--", "heic": "v--", "jxl": "P:"}


def plot_rd(result: Mapping[str, Any], path: PathLike) -> Path:
    """Write a PNG of PSNR (dB) against bpp with one line per codec in ``result`` (from :func:`evaluate`),
    each named in a legend outside the axes (so it never covers a curve) with fastae's BD-rate
    against it. Written atomically; returns the path.

    Uses matplotlib's ``Figure`` with the Agg canvas (no pyplot, no display needed).
    """
    fig = rd_figure(result)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return Path(path)


def rd_figure(result: Mapping[str, Any]):
    """The matplotlib Figure that :func:`plot_rd` writes."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curves = [k for k in result if k not in _SUMMARY_KEYS]
    if not curves:
        raise ValueError(f"expected a result from evaluate() with at least one codec curve, got keys {list(result)}")
    fig = Figure(figsize=(12, 6), layout="constrained")  # constrained: the axes take what the legend leaves
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bd = result.get("bd_rate", {})
    colours = colormaps["tab10"].colors
    for i, name in enumerate(curves):
        rates, psnrs = _curve_points(result[name])
        label = _CODEC_NAMES.get(name, name)
        if name in bd:
            label += " (" + ("n/a" if bd[name] is None else f"{bd[name]:+.1f}%") + ")"
        # past ten curves the colours repeat: the line style tells those apart
        style = _STYLES.get(name, "o" + ("-", "-.", "--")[i // len(colours) % 3])
        ax.plot(rates, psnrs, style, label=label, markersize=4, color=colours[i % len(colours)],
                linewidth=2.2 if name == "fastae" else 1.2)
    ax.set_xlabel("bits per pixel (bpp)")
    ax.set_ylabel("PSNR (dB, RGB)")
    meta = result.get("meta", {})
    on = f" on {meta['images']} images" if isinstance(meta, dict) and meta.get("images") else ""
    model = f": {meta['model']}" if isinstance(meta, dict) and meta.get("model") else ""
    ax.set_title(f"Rate-distortion{on}, mean per quality{model}", loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=9, title="fastae's BD-rate against each" if bd else None,
               title_fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------- tables

RD_START, RD_END = "<!-- codec-table:start -->", "<!-- codec-table:end -->"


def _fmt_db(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def rd_markdown(result: Mapping[str, Any], title: str, source: str = "") -> List[str]:
    """Markdown lines of one ``fastae eval`` result: PSNR at ``PSNR_AT_BPP`` of fastae and of each
    reference measured in the same run, fastae's BD-rate against each, and fastae's rate and PSNR
    per quality. Curves added with ``--compare`` (other models) are left out."""
    meta = result.get("meta") or {}
    at = result.get("psnr_at") or {}
    refs = [name for name in REFERENCES if name in result]
    model = meta.get("model", "fastae")
    head = f"| {title} | " + " | ".join(f"{b} bpp" for b in PSNR_AT_BPP) + f" | BD-rate of {model} against it |"
    lines = [head, "|---" * (len(PSNR_AT_BPP) + 2) + "|"]
    lines.append(f"| **{model}** | " + " | ".join(f"**{_fmt_db(at.get('fastae', {}).get(str(b)))}**"
                                                   for b in PSNR_AT_BPP) + " | |")
    for name in refs:
        bd = (result.get("bd_rate") or {}).get(name)
        ref = REFERENCES[name]
        settings = ", ".join(f"{k} {v}" for k, v in ref.options.items()
                             if k != "optimize") if name != "jpeg" else "4:2:0, optimized"
        lines.append(f"| {ref.label}, {settings} | " + " | ".join(_fmt_db(at.get(name, {}).get(str(b)))
                                                               for b in PSNR_AT_BPP)
                     + " | " + ("n/a" if bd is None else f"{bd:+.1f}%") + " |")
    qualities = sorted(result.get("fastae", {}), key=int)
    rates = [result["fastae"][q]["mean"]["bpp"] for q in qualities]
    psnrs = [result["fastae"][q]["mean"]["psnr"] for q in qualities]
    where = f"{meta.get('images', '?')} images of `{meta.get('data', '?')}`"
    how = (f"{meta.get('device', '?')}, {meta.get('threads', '?')} threads, torch {meta.get('torch', '?')}"
           + (f", transforms in {meta['precision']}" if meta.get("precision") else "") + f", {str(meta.get('date', ''))[:10]}")
    lines += ["", f"{where}; PSNR (RGB, mean over images per quality setting) at each rate; whole-file bits; "
              f"negative BD-rate: fastae needs fewer bits. Per quality {', '.join(qualities)}: "
              + ", ".join(f"{r:.2f}" for r in rates) + " bpp at " + ", ".join("n/a" if p is None else f"{p:.1f}" for p in psnrs)
              + f" dB. `{meta.get('command', 'fastae eval')}` ({how})" + (f": `{source}`." if source else ".")]
    return lines


def write_rd_section(path: PathLike, results: Sequence[PathLike], titles: Optional[Sequence[str]] = None) -> None:
    """Rewrite the text between ``RD_START`` and ``RD_END`` in the file ``path`` with one table per
    ``fastae eval`` JSON in ``results`` (``titles``: the first column's heading of each)."""
    import json

    from fastae._io import rewrite_section

    titles = list(titles) if titles else [Path(r).stem for r in results]
    if len(titles) != len(results):
        raise ValueError(f"expected one title per result, got {len(titles)} titles for {len(results)} results")
    names = " ".join(Path(r).name for r in results)
    lines = [f"<!-- generated by `python -m fastae.codec.eval --readme {Path(path).name}` from {names}; "
             "do not edit by hand -->"]
    for title, file in zip(titles, results):
        with open(file, encoding="utf-8") as f:
            result = json.load(f)
        if not isinstance(result, dict) or "fastae" not in result or "psnr_at" not in result:
            raise ValueError(f"{file}: not a `fastae eval` result (no fastae curve and psnr_at)")
        lines += [""] + rd_markdown(result, title, source=Path(file).name)
    rewrite_section(path, "\n".join(lines), RD_START, RD_END)


def main(argv=None) -> int:
    """``python -m fastae.codec.eval --readme README.md RESULT.json [...] [--titles ...]``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m fastae.codec.eval",
                                     description="Write the rate-distortion tables of `fastae eval` results into "
                                                 f"a markdown file, between {RD_START} and {RD_END}.")
    parser.add_argument("results", nargs="+", help="`fastae eval --output` JSON files")
    parser.add_argument("--readme", required=True, metavar="FILE", help="the markdown file to rewrite")
    parser.add_argument("--titles", nargs="+", help="the first column's heading of each table (default: file names)")
    args = parser.parse_args(argv)
    try:
        write_rd_section(args.readme, args.results, args.titles)
    except (ValueError, OSError) as e:
        print(f"python -m fastae.codec.eval: {e}", file=sys.stderr)
        return 2
    print(f"rewrote the codec tables of {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
