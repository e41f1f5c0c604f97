"""Peak memory and seconds of compressing and decompressing one large image with the codec.

Each step runs in a fresh process, and the figure is that process's peak resident memory
(``ru_maxrss``) less its peak after loading the codec. The image is a Kodak photo tiled to
SIZE x SIZE (real content, so the file has a realistic rate).

    python experiments/codec_memory.py --image ../shared/data/kodak/kodim05.png --sizes 2048 4096 [--quality 4]
        [--weights FILE] [--json out.json]
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from fastae.data import read_rgb
import fastae

step, image, size, quality, path, weights = sys.argv[1:7]
size, quality = int(size), int(quality)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
codec = fastae.load_codec(quality=quality, weights=weights or None)
if step == "compress":
    tile = read_rgb(image)
    rgb = np.tile(tile, (size // tile.shape[0] + 1, size // tile.shape[1] + 1, 1))[:size, :size].copy()
base = peak()
t = time.perf_counter()
if step == "compress":
    data = codec.compress(rgb)
    open(path, "wb").write(data)
else:
    data = open(path, "rb").read()
    codec.decompress(data)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": peak() - base, "base_mb": base, "bytes": len(data)}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--quality", type=int, default=4)
    ap.add_argument("--weights", default="", help="a codec weights file (default: the shipped model)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = str(Path(tmp) / f"{size}.fae")
            row = {"size": size, "quality": args.quality}
            for step in ("compress", "decompress"):
                out = subprocess.run([sys.executable, "-c", _CHILD, step, args.image, str(size), str(args.quality), path,
                                      args.weights],
                                     check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                row[step] = result
                print(f"{size}x{size} {step}: {result['peak_mb']:.0f} MB above the loaded codec "
                      f"({result['base_mb']:.0f} MB), {result['seconds']:.1f} s, file {result['bytes']:,} bytes",
                      flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": " ".join(["python", "experiments/codec_memory.py", *sys.argv[1:]]),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
