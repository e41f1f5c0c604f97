"""The chart of a run: every case's implementations as bars of their speed-up over eager PyTorch
(eager median / median, log scale, 1.0x = eager), one panel per suite, each bar labelled with its
value, the legend beside the panels."""

from pathlib import Path

from fastae.bench.cases import is_fastae

_FASTAE_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:cyan", "tab:olive")
_OTHER_COLORS = ("tab:orange", "tab:gray", "tab:brown", "tab:pink", "tab:red")
# Tick mantissas per decade, coarse to fine: the first that puts at least four ticks on the axis is used.
_TICK_TIERS = ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.1, 1.25, 1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))
_SUITE_TITLES = {"ops": "ops: one linear_act call", "losses": "losses: forward + backward",
                 "train": "train: one step (forward, backward, Adam)", "codec": "codec"}
_BAR_IN = 0.17  # inches per bar
_GAP_IN = 0.12  # inches between cases


def _colors(impls):
    fastae = [i for i in impls if is_fastae(i)]
    other = [i for i in impls if not is_fastae(i)]
    out = {i: _FASTAE_COLORS[k % len(_FASTAE_COLORS)] for k, i in enumerate(fastae)}
    out.update({i: _OTHER_COLORS[k % len(_OTHER_COLORS)] for k, i in enumerate(other)})
    return out


def ratio_ticks(lo, hi) -> list:
    """Tick values for a log axis from ``lo`` to ``hi``: 1-2-5 steps (powers of ten alone when that
    gives more than nine), finer steps when that gives fewer than four; 1.0 is always one of them."""
    for tier in _TICK_TIERS:
        ticks = sorted(round(m * 10.0**e, 6) for e in range(-3, 4) for m in tier if lo <= m * 10.0**e <= hi)
        if len(ticks) > 9 and tier is _TICK_TIERS[0]:
            return [t for t in ticks if t in (0.001, 0.01, 0.1, 1, 10, 100, 1000)]
        if len(ticks) >= 4:
            break
    while len(ticks) > 9:  # thin out, keeping 1.0
        one = ticks.index(1)
        ticks = [t for k, t in enumerate(ticks) if (k - one) % 2 == 0]
    return ticks


def speedup_figure(result):
    """The matplotlib figure of ``result`` (a ``fastae bench`` run, as ``report.load_run`` gives
    it): every row other than eager that has a ratio to eager."""
    import matplotlib  # a core dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import NullLocator

    rows = [r for r in result["rows"] if r["impl"] != "eager" and r.get("ratio_vs_eager")]
    if not rows:
        raise ValueError("--plot: no row has a ratio to eager (no eager baseline ran)")
    suites = [s for s in dict.fromkeys([*result.get("suites", []), *(r["suite"] for r in rows)])
              if any(r["suite"] == s for r in rows)]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    impls = [i for i in impls if is_fastae(i)] + [i for i in impls if not is_fastae(i)]  # fastae's bars first
    colors = _colors(impls)
    values = [r["ratio_vs_eager"] for r in rows]
    lo, hi = min(min(values), 1.0), max(max(values), 1.0)
    xlim = (lo / 1.6, hi * 1.6)  # room for the value labels beyond the longest bars
    ticks = ratio_ticks(*xlim)

    panels = []  # (suite, [(case, [rows])])
    for suite in suites:
        cases = {}
        for r in rows:
            if r["suite"] == suite:
                cases.setdefault(r["case"], []).append(r)
        panels.append((suite, [(c, sorted(rs, key=lambda r: impls.index(r["impl"]))) for c, rs in cases.items()]))
    heights = [sum(len(rs) * _BAR_IN + _GAP_IN for _, rs in cases) + 0.2 for _, cases in panels]
    tall = heights[0] > 4  # the scale at the top of the first panel as well
    gap, top, bottom = 0.75, 0.85 if tall else 0.55, 0.75  # inches: between panels, above the first, below the last
    total = sum(heights) + gap * (len(panels) - 1) + top + bottom
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, total), squeeze=False,
                             gridspec_kw={"height_ratios": heights, "hspace": gap / (sum(heights) / len(panels))})
    fig.subplots_adjust(top=1 - top / total, bottom=bottom / total)
    for ax, (suite, cases) in zip(axes[:, 0], panels):
        y, centers, labels = 0.0, [], []
        for case, case_rows in cases:
            start = y
            for r in case_rows:
                v = r["ratio_vs_eager"]
                ax.barh(y + 0.5, v - 1, left=1, height=0.82, color=colors[r["impl"]])
                ax.text(v * 1.03 if v >= 1 else v / 1.03, y + 0.5, f"{v:.2f}x", va="center",
                        ha="left" if v >= 1 else "right", fontsize=7.5)
                y += 1
            centers.append((start + y) / 2)
            labels.append(case)
            y += _GAP_IN / _BAR_IN
            if case != cases[-1][0]:  # a rule between cases
                ax.axhline(y - _GAP_IN / _BAR_IN / 2, color="0.85", lw=0.6)
        ax.set_ylim(y - _GAP_IN / _BAR_IN / 2, -_GAP_IN / _BAR_IN / 2)  # first case on top
        ax.set_yticks(centers, labels, fontsize=8)
        ax.tick_params(axis="y", length=0)
        ax.set_xscale("log")
        ax.set_xlim(*xlim)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks], fontsize=8)
        ax.tick_params(axis="x", labelbottom=True)
        ax.grid(axis="x", color="0.88", lw=0.6)
        ax.set_axisbelow(True)
        ax.axvline(1.0, color="k", lw=1.0, ls="--")
        ax.set_title(_SUITE_TITLES.get(suite, suite), fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("speed-up over eager PyTorch = eager median / median (log scale; right of 1.0x: faster)",
                           fontsize=8.5)
    handles = [Patch(color=colors[i], label=i) for i in impls]
    handles.append(Line2D([], [], color="k", lw=1.0, ls="--", label="eager PyTorch (1.0x)"))
    if tall:
        axes[0, 0].tick_params(axis="x", labeltop=True)
    axes[0, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
                      fontsize=8, title="implementation", title_fontsize=8.5, frameon=False)
    dev = result["device"]
    fig.suptitle(f"fastae bench on {dev.get('name')} ({dev.get('type')}), {result.get('timestamp', '')[:10]}: "
                 "each bar is a speed-up over eager PyTorch (right of the dashed 1.0x line: faster)",
                 fontsize=10, x=0.02, y=1 - 0.1 / total, ha="left", va="top")
    return fig


def plot_speedups(result, path) -> Path:
    """Write ``speedup_figure(result)`` to ``path`` (PNG, SVG or PDF by its suffix)."""
    import matplotlib.pyplot as plt

    from fastae._io import atomic_path

    fig = speedup_figure(result)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    plt.close(fig)
    return path
