"""``fastae bench``: its options, and the command that runs the suites, prints the table and
writes the JSON and the chart."""

import argparse
import json
import shlex
import sys

import torch

from fastae.bench.cases import SUITES
from fastae.bench.ops import EAGER_ACT
from fastae.bench.plot import plot_speedups
from fastae.bench.report import format_table
from fastae.bench.runner import run


def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(subparsers):
    """Add the ``bench`` subcommand to an argparse ``subparsers`` (fastae.cli's); its func returns an exit status."""
    p = subparsers.add_parser(
        "bench", help="throughput of fastae's fused paths beside eager PyTorch and torch.compile",
        description="Throughput of fastae's fused paths beside eager PyTorch and torch.compile, timed in one run, "
                    "with the device's matmul and copy peaks measured in the same run; see fastae/bench/. "
                    "Tables, the README section and the chart of stored runs: python -m fastae.bench.report.")
    p.add_argument("--suite", default="all", help=f"one of {', '.join(SUITES)}, all, or a comma list (default all)")
    p.add_argument("--quick", action="store_true", help="a few small shapes, no torch.compile on the CPU (well under a minute on a 2-core CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--dtype", type=_csv, help="comma list of float32, bfloat16, float16 "
                                              "(default: cuda float32,bfloat16; cpu float32)")
    p.add_argument("--activations", type=_csv, default=["relu", "gelu"],
                   help="linear_act activations, comma list or 'all' (default relu,gelu)")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile rows; auto: off for --quick on the CPU, on otherwise")
    p.add_argument("--output", help="write the results JSON here (atomically)")
    p.add_argument("--plot", help="write a bar chart of the ratios to eager here (needs matplotlib)")
    p.add_argument("--codec-weights",
                   help="measure this codec file (from `fastae train codec`) instead of the shipped one")
    p.add_argument("--images", help="codec: a folder of images (e.g. Kodak) instead of synthetic ones")
    p.add_argument("--cases", action="append", metavar="TEXT",
                   help="only cases whose name contains TEXT (repeatable; case-insensitive)")
    p.add_argument("--min-time", type=float,
                   help="seconds of timed calls per row (default: quick 0.25 CPU / 0.05 CUDA; else 0.5 CPU / 0.2 CUDA)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-peaks", action="store_true", help=argparse.SUPPRESS)  # tests: skip the peak measurement
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    suites = SUITES if args.suite == "all" else tuple(_csv(args.suite))
    if not suites:
        raise ValueError(f"--suite: no suite named; expected {', '.join(SUITES)} or all")
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"--suite: unknown suite {s!r}; expected {', '.join(SUITES)} or all")
    if args.plot and set(suites) <= {"codec"}:
        raise ValueError("--plot draws each row's ratio to eager PyTorch; the codec suite has no eager rows")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    activations = list(EAGER_ACT) if args.activations == ["all"] else args.activations
    argv = getattr(args, "argv", None)
    command = shlex.join(["fastae", *(argv if argv is not None else sys.argv[1:])])
    result = run(suites, device, quick=args.quick, dtypes=args.dtype, activations=activations, compile=args.compile,
                 codec_weights=args.codec_weights, images=args.images, cases=args.cases, min_time=args.min_time,
                 progress=not args.no_progress, command=command, measure_peaks=not args.no_peaks)
    print(format_table(result))
    if args.output:
        from fastae._io import write_text

        write_text(args.output, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.output}")
    if args.plot:
        print(f"wrote {plot_speedups(result, args.plot)}")
    failed = sorted({r["case"] for r in result["rows"] if "setup failed" in (r.get("error") or "")})
    if failed:  # the case could not even be prepared (e.g. --images names no image folder)
        print(f"fastae bench: setup failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """``python -m fastae.bench ...``: the same as ``fastae bench ...``."""
    parser = argparse.ArgumentParser(prog="fastae")
    add_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["bench", *argv])
    args.argv = ["bench", *argv]
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"fastae bench: {e}", file=sys.stderr)
        return 2
