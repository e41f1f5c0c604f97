"""``fastae eval``: the command behind the CLI (fastae/cli.py stays thin): checks its inputs and
outputs before minutes of work, measures the codec and the reference codecs on a folder
(``fastae.codec.eval.evaluate``), writes the JSON and the plot, and prints the summary."""

from pathlib import Path

import torch

import fastae


def run(args, codec_factory):
    """``fastae eval``: ``args`` as the CLI parsed them; ``codec_factory(args)`` makes the codec factory
    (after the cheap checks, so that a missing plugin fails before a model loads)."""
    import importlib
    import json

    from fastae._io import write_text
    from fastae.codec import eval as rd
    from fastae.data import list_images, read_rgb

    for module in ("pytorch_msssim", "scipy.interpolate"):  # MS-SSIM and BD-rates, needed after minutes of work:
        importlib.import_module(module)  # a missing one stops the command now

    rd.check_references(args.references)  # a missing plugin fails now, not after fastae's part
    factory = codec_factory(args)
    base = factory()
    if args.qualities is None:  # every quality of the model
        args.qualities = list(range(1, base.model.qualities + 1))
    beyond = [q for q in args.qualities if not 1 <= q <= base.model.qualities]
    if beyond:
        raise ValueError(f"--qualities {' '.join(map(str, beyond))}: {base.model_id} has qualities "
                         f"1..{base.model.qualities}")
    paths = list_images(args.data) if Path(args.data).is_dir() else []
    if not paths:
        raise FileNotFoundError(f"--data {args.data}: no images found")
    out = Path(args.output)
    plot = out.with_suffix(".png") if args.plot is None else Path(args.plot)
    _check_eval_outputs(out, plot, paths, args.compare or [], Path(args.data))
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1 (the first N images), got {args.limit}")
        paths = paths[:args.limit]
    images = {}
    for p in paths:
        try:
            images[str(p.relative_to(args.data))] = read_rgb(p)
        except (OSError, ValueError) as e:  # name the image: one bad file should not read as a bad option
            raise ValueError(f"--data: {p}: {e}") from None
    # read the earlier results first: a bad --compare fails now, not after the evaluation
    earlier_results, compared = [], []
    resolved = [Path(p).resolve() for p in args.compare or []]
    for path, where in zip(args.compare or [], resolved):
        if resolved.count(where) > 1:
            raise ValueError(f"--compare {path}: given twice")
        try:
            earlier = json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"--compare {path}: not a JSON file ({e})") from None
        meta = earlier.get("meta") if isinstance(earlier, dict) else None
        name = meta.get("model", Path(path).stem) if isinstance(meta, dict) else Path(path).stem
        curve = earlier.get("fastae") if isinstance(earlier, dict) else None
        if not isinstance(name, str) or not isinstance(curve, dict) or not curve or not all(
                isinstance(v, dict) and isinstance(v.get("per_image"), dict) for v in curve.values()):
            raise ValueError(f"--compare {path}: not a `fastae eval` result (no 'fastae' curve and model name)")
        theirs = set(next(iter(curve.values()))["per_image"])
        if theirs != set(images):
            missing, extra = sorted(set(images) - theirs), sorted(theirs - set(images))
            raise ValueError(f"--compare {path}: evaluated on other images than --data {args.data} (missing "
                             f"{missing[:3]}{'...' if len(missing) > 3 else ''}, extra {extra[:3]}"
                             f"{'...' if len(extra) > 3 else ''}); a BD-rate needs the same images")
        if name in (base.model_id, "fastae", *args.references, *compared):  # the same model again: name the file
            with_file = f"{name} ({Path(path).name})"
            name = with_file if with_file not in compared else f"{name} ({path})"
        earlier_results.append(earlier)
        compared.append(name)
    result = rd.evaluate(lambda q: base.with_quality(int(q)), images, args.qualities,
                         references=tuple(args.references), progress=not args.quiet)
    import datetime
    import platform

    for earlier, name in zip(earlier_results, compared):
        rd.add_comparison(result, earlier, name)
    result["meta"] = {"command": " ".join(["fastae", *args.argv]), "model": base.model_id,
                      "model_hash": base.hash.hex(), "refine": base.refine,
                      "side_search": base.side_search, "precision": base.precision, "images": len(images),
                      "data": str(args.data),
                      "device": str(base.device), "cpu": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "fastae": fastae.__version__,
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_text(out, json.dumps(result, indent=1) + "\n")
    rd.plot_rd(result, plot)
    print(f"{len(images)} images, qualities {args.qualities}")
    for name in ["fastae", *args.references, *compared]:
        at = result["psnr_at"].get(name, {})
        print(f"  {name:8s} PSNR at 0.25/0.5/1.0 bpp: " +
              " / ".join("n/a" if at.get(k) is None else f"{at[k]:.2f}" for k in ("0.25", "0.5", "1.0")))
    for ref in [*args.references, *compared]:
        value = result["bd_rate"].get(ref)
        print(f"  BD-rate vs {ref}: " + ("n/a" if value is None else f"{value:+.1f}%"))
    print(f"wrote {out} and {plot}")
    return 0


def _check_eval_outputs(out: Path, plot: Path, images, compare, data: Path):
    """Before an evaluation of many minutes: the JSON and the plot go to two different writable
    files, neither of them an input (an image of --data or a --compare result), and the plot not
    into --data, where the next evaluation would take it for an image."""
    import os

    inputs = {p.resolve(): f"the image {p} in --data" for p in images}
    inputs.update({Path(c).resolve(): f"the --compare file {c}" for c in compare})
    for option, path in (("--output", out), ("--plot", plot)):
        if path.resolve() in inputs:
            raise ValueError(f"{option} {path} is {inputs[path.resolve()]}: it would be overwritten")
    if out.resolve() == plot.resolve():
        raise ValueError(f"--output and --plot are the same file ({out}); the plot would overwrite the results")
    if plot.resolve().is_relative_to(data.resolve()):
        raise ValueError(f"--plot {plot} is inside --data {data}: the next evaluation would read it as an image; "
                         f"write it elsewhere (--plot, or an --output outside --data)")
    for option, path in (("--output", out), ("--plot", plot)):
        if path.is_dir():
            raise IsADirectoryError(f"{option} {path} is a folder; give a file name")
        parent = path.resolve().parent
        while not parent.exists():
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise PermissionError(f"{option} {path}: {parent} is not writable")
