"""Set a codec checkpoint's highest qualities' gains by extrapolating the log-gains of the qualities
below them (w2, step 2,600): qualities 9 and 10 had started as copies of quality 8 and their
log-gains moved ~0.03 per 100 steps at --lr 1e-4, while each doubling of lambda from quality 3 to
8 had settled at a step of about +0.28 (log_gain) and -0.30 (log_inv_gain) per channel. Each of
the last ``--qualities`` rows becomes the row below it plus the mean per-channel step of the three
steps before them; the checkpoint is then resumed (``fastae train codec ... --resume``).

    python experiments/w2/extrapolate_gains.py /work/runs/codec-w2 --qualities 2
"""

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a fastae train codec --out folder")
    parser.add_argument("--qualities", type=int, default=2, help="how many of the highest qualities to set")
    args = parser.parse_args(argv)
    path = Path(args.checkpoint) / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    n = args.qualities
    report = {}
    for name in ("log_gain", "log_inv_gain"):
        g = tensors[name].double()
        first = g.shape[0] - n  # the first row to set
        if first < 4:
            raise SystemExit(f"{name}: {g.shape[0]} qualities leave fewer than 4 to extrapolate from")
        step = (g[first - 1] - g[first - 4]) / 3  # per channel, mean of the three steps below
        before = g[first:].mean(1).tolist()
        for i in range(n):
            g[first + i] = g[first - 1] + (i + 1) * step
        tensors[name] = g.to(tensors[name].dtype)
        report[name] = {"step_mean": float(step.mean()), "rows_mean_before": before,
                        "rows_mean_after": g[first:].mean(1).tolist()}
    save_file(tensors, str(path.with_suffix(".tmp")), metadata=meta)
    path.with_suffix(".tmp").replace(path)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
