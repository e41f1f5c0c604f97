"""Images/s of `fastae compress` on a dataset as Parquet files and as WebDataset shards, by the
local and the Ray engine, in one run (so the figures share the machine's state).

    python bench/datasets_engines.py --data ../shared/data/kodak --repeat 1 --files 4 \\
        --out bench/results/datasets-engines-cpu.json

The images of --data (repeated --repeat times) are written into --files Parquet files (Hugging
Face {bytes, path} layout) and as many shards; each configuration compresses them into a fresh
folder. The Ray cluster is started once, before any timing (its start-up is not counted; each
run's actor start-up, a codec load per actor, is). The outputs of every configuration are checked
to be the same bytes as the first one's.
"""

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _build(data, repeat, files, root):
    from fastae.data import list_images
    from fastae.datasets.parquet import write_images
    from fastae.datasets.webdataset import write_shard

    paths = list_images(data) * repeat
    blobs = [(f"{i:06d}", p.read_bytes(), p.suffix.lstrip(".").lower()) for i, p in enumerate(paths)]
    (root / "parquet").mkdir()
    (root / "webdataset").mkdir()
    for f in range(files):
        part = blobs[f::files]
        write_images(root / "parquet" / f"part-{f:03d}.parquet", [b for _, b, _ in part],
                     names=[f"{k}.{ext}" for k, _, ext in part])
        write_shard(root / "webdataset" / f"shard-{f:03d}.tar", [{"__key__": k, ext: b} for k, b, ext in part])
    return len(paths)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/kodak")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--files", type=int, default=4, help="Parquet files, and shards")
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--configs", default="local:1,local:2,ray:1,ray:2", help="engine:workers, comma-separated")
    parser.add_argument("--formats", default="parquet,webdataset")
    parser.add_argument("--out", help="JSON results")
    args = parser.parse_args(argv)

    import ray
    import torch

    import fastae
    from fastae.datasets import compress_dataset

    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.configs.split(",")]
    root = Path(tempfile.mkdtemp(prefix="fastae-bench-datasets-"))
    n = _build(args.data, args.repeat, args.files, root)
    if any(engine == "ray" for engine, _ in configs):
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    for kind in args.formats.split(","):
        reference = None
        for engine, workers in configs:
            dst = root / f"out-{kind}-{engine}-{workers}"
            start = time.perf_counter()
            summary = compress_dataset(root / kind, dst, quality=args.quality, engine=engine, workers=workers,
                                       progress=False)
            seconds = time.perf_counter() - start
            assert summary.ok and summary.images == n, summary.format()
            outputs = {p.name: p.read_bytes() for p in sorted(dst.iterdir())}
            reference = reference or outputs
            row = {"format": kind, "engine": engine, "workers": workers, "images": n, "seconds": round(seconds, 2),
                   "images_per_s": round(n / seconds, 3), "same_bytes": outputs == reference}
            rows.append(row)
            print(json.dumps(row), flush=True)
    load = os.getloadavg()
    result = {"meta": {"command": " ".join(["python", "bench/datasets_engines.py", *(argv or sys.argv[1:])]),
                       "device": "cpu", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_average_after": [round(x, 2) for x in load], "torch": torch.__version__,
                       "ray": ray.__version__, "fastae": fastae.__version__, "quality": args.quality,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
              "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"load average after: {load}")


if __name__ == "__main__":
    main()
