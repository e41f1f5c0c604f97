"""Markdown tables from a pytest-benchmark JSON: per group, each implementation's median, its
ratio to eager PyTorch and to torch.compile from the same run, and the extra figures.

    python bench/report.py bench/results/cpu-2core-2026-11-24.json
"""

import json
import sys
from collections import defaultdict


def report(path):
    data = json.loads(open(path).read())
    info = data["machine_info"]
    lines = [f"{info.get('cpu', {}).get('brand_raw', 'CPU')}, {data['datetime'][:10]}, "
             f"torch {data.get('commit_info', {}).get('torch', '') or ''}".rstrip(", torch ")]
    groups = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["params"]["impl"]] = bench
    lines += ["", "| group | implementation | median ms | vs eager | vs compile | figure |", "|---|---|---|---|---|---|"]
    for group, benches in groups.items():
        base = {k: benches[k]["stats"]["median"] for k in benches if k in ("eager", "compile", "torch-eager", "torch-compile")}
        eager = base.get("eager", base.get("torch-eager"))
        compiled = base.get("compile", base.get("torch-compile"))
        for impl, bench in benches.items():
            median = bench["stats"]["median"]
            extra = ", ".join(f"{k} {v:.3g}" for k, v in bench["extra_info"].items())
            lines.append(f"| {group} | {impl} | {median * 1e3:.3f} | "
                         f"{f'{eager / median:.2f}x' if eager else ''} | {f'{compiled / median:.2f}x' if compiled else ''} | "
                         f"{extra} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1]))
