"""Compress image datasets where they live: folders, Parquet files, WebDataset tar shards.

    from fastae.datasets import compress_dataset, decompress_dataset
    summary = compress_dataset("train.parquet", "train_fae", quality=4)           # or a folder, shards
    summary = compress_dataset("shards/", "shards_fae", engine="ray", workers=8)  # a Ray Data pipeline
    print(summary.format())
    decompress_dataset("train_fae", "train_png")

The kind of SRC is detected (``input_format`` overrides): a folder of images (fastae.codec.folder),
a Parquet file or a folder of them (fastae.datasets.parquet), a WebDataset shard ``x.tar``, a folder
of shards or a brace pattern ``shard-{000..009}.tar`` (fastae.datasets.webdataset). Each input
file becomes one output file of the same kind and relative name under DST (a single input file
may also be given its output file name: ``compress_dataset("a.parquet", "b.parquet")``), or of
the kind ``format`` asks for: Parquet files and shards convert into each other or into folders
(fastae.datasets.convert), a folder of images packs into Parquet files or shards.

The work per file is one function; the engine (fastae.datasets.engines) runs it here or on a Ray
cluster, with the same output bytes. Outputs are written under a temporary name and renamed when
complete, so a killed run leaves no partial file, and a re-run skips the files already done
(those of another model or quality are reported, ``force=True`` redoes them). Images that fail
(a Parquet cell, a tar member, a file) are reported in ``summary.failed``, in
``DST/fastae-errors.jsonl`` and by ``summary.ok``; the rest is done.
"""

import dataclasses
import functools
import json
import os
import re
import time
from pathlib import Path

from fastae.codec import DEFAULT_MODEL
from fastae.codec.folder import DECODED_FORMATS, FAE_SUFFIX, Summary, _mb
from fastae.data.images import IMAGE_EXTENSIONS

KINDS = ("folder", "parquet", "webdataset")
ERRORS_FILE = "fastae-errors.jsonl"
_SUFFIX = {"parquet": ".parquet", "webdataset": ".tar"}

__all__ = ["ERRORS_FILE", "KINDS", "DatasetSummary", "FaeDataset", "compress_dataset", "decompress_dataset",
           "detect"]


def __getattr__(name):
    if name == "FaeDataset":
        from fastae.data.fae import FaeDataset

        return FaeDataset
    raise AttributeError(f"module 'fastae.datasets' has no attribute {name!r}")


@dataclasses.dataclass
class DatasetSummary(Summary):
    """What a dataset run did: ``files`` output files written, ``images`` images coded in them,
    ``failed`` the (file or file:row / file:member, reason) of what failed."""

    kind: str = "folder"
    images: int = 0
    errors_file: str = None

    @property
    def images_per_s(self):
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def format(self):
        if self.kind == "folder":  # one image a file: the folder tool's report
            return super().format() + (f"\n  failures listed in {self.errors_file}" if self.errors_file else "")
        counts = f"{self.skipped} skipped, {len(self.failed)} failed"
        bpp = f"{self.bpp:.3g} bpp" if self.pixels else "n/a bpp"
        files = f"{self.files} {self.kind} file{'' if self.files == 1 else 's'}"
        lines = [f"{self.action} {self.images} image{'' if self.images == 1 else 's'} in {files} ({counts}): "
                 f"{_mb(self.bytes_in)} -> {_mb(self.bytes_out)}, {bpp}, {self.images_per_s:.3g} images/s"]
        lines += [f"  FAILED {where}: {message}" for where, message in self.failed]
        if self.errors_file:
            lines.append(f"  failures listed in {self.errors_file}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- sources


def _expand_braces(pattern):
    """``shard-{000..009}.tar`` (zero-padded ranges) and ``{a,b}`` alternatives, expanded in order."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[:match.start()], pattern[match.end():], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        a, b = numeric.groups()
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        step = 1 if int(b) >= int(a) else -1
        options = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    else:
        options = body.split(",")
    return [p for option in options for p in _expand_braces(head + option + tail)]


def _kind_of_file(path, decompress):
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".tar":
        return "webdataset"
    if suffix == FAE_SUFFIX if decompress else suffix in IMAGE_EXTENSIONS:
        return "folder"
    return None


def detect(src, input_format=None, decompress=False):
    """``(kind, base, units)`` of the source ``src``: its kind (one of :data:`KINDS`), the folder its
    units are relative to, and the sorted relative paths of its units (Parquet files or shards;
    empty for a folder of images, which fastae.codec.folder walks itself). ValueError for an empty
    source, one that mixes formats or a file of another kind; FileNotFoundError for a missing one."""
    from fastae.data.images import walk

    if input_format is not None and input_format not in KINDS:
        raise ValueError(f"input format must be one of {KINDS}, got {input_format!r}")
    text = str(src)
    if "{" in text and not os.path.exists(text):
        paths = _expand_braces(text)
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{text}: {len(missing)} of its {len(paths)} shards are missing: "
                                    f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}")
        kinds = {_kind_of_file(p, decompress) for p in paths}
        kind = input_format or (kinds.pop() if len(kinds) == 1 else None)
        if kind not in ("parquet", "webdataset"):
            raise ValueError(f"{text}: a brace pattern must name .tar shards or .parquet files, got {paths[:3]}")
        bases = {os.path.dirname(p) for p in paths}
        base = Path(bases.pop()) if len(bases) == 1 else Path(os.path.commonpath([os.path.abspath(p) for p in paths]))
        return kind, base, [Path(os.path.relpath(p, base)) for p in paths]
    path = Path(src)
    if not path.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if path.is_file():
        kind = input_format or _kind_of_file(path, decompress)
        if kind not in ("parquet", "webdataset"):
            raise ValueError(f"{src}: expected a folder, a .parquet file or a .tar shard (or --input-format), "
                             f"got a {path.suffix or 'suffix-less'} file")
        return kind, path.parent, [Path(path.name)]
    found = {"folder": [], "parquet": [], "webdataset": []}
    for rel, names, _ in walk(path):
        for name in names:
            kind = _kind_of_file(name, decompress)
            if kind:
                found[kind].append(rel / name)
    present = [k for k in KINDS if found[k]]
    if input_format is not None:
        if not found[input_format]:
            raise ValueError(f"{src}: no {input_format} input in it (found: {', '.join(present) or 'nothing'})")
        present = [input_format]
    if not present:
        what = ".fae files" if decompress else "images"
        raise ValueError(f"{src}: empty source: no {what}, .parquet files or .tar shards in it")
    if len(present) > 1:
        counts = ", ".join(f"{len(found[k])} {k} file{'s' if len(found[k]) > 1 else ''}" for k in present)
        raise ValueError(f"{src} mixes formats ({counts}); give one kind (--input-format, or a sub-folder)")
    kind = present[0]
    return kind, path, [] if kind == "folder" else sorted(found[kind])


# ---------------------------------------------------------------------------------------------- runs


def compress_dataset(src, dst, quality=None, model=DEFAULT_MODEL, weights=None, device="cpu", precision="auto", *,
                     make_codec=None, input_format=None, format=None, column=None, engine="local", workers=1,
                     gpus_per_worker=0, batch_size=None, ray_address=None, force=False, images_per_file=1000,
                     progress=True) -> DatasetSummary:
    """Compress the dataset ``src`` into ``dst`` (see the module docstring); return a :class:`DatasetSummary`.

    ``quality``, ``model``, ``weights``, ``device``, ``precision``: as ``fastae.load_codec``
    (``make_codec``: a picklable zero-argument callable returning the codec instead).
    ``column``: the Parquet image column (default: found by name or type).
    ``format``: the kind of output, default the input's; a folder of images may also be packed into
    Parquet files (``part-00000.parquet``, Hugging Face layout) or shards (``shard-00000.tar``) of
    ``images_per_file`` images each, in sorted order (so a re-run of the same folder resumes); a
    Parquet file becomes a shard or a folder, a shard a Parquet file or a folder, one output per
    input (fastae.datasets.convert says how rows, samples and columns map).
    ``engine``: "local" (``workers`` processes) or "ray" (an actor pool of ``workers`` actors with
    ``gpus_per_worker`` GPUs each; ``ray_address`` joins a running cluster, else one is started
    here unless Ray is already initialised). ``batch_size``: images of a folder per Ray task
    (default 8; Parquet files and shards are one per task); with the local engine, images of a
    folder coded together in one process (default 1; for a GPU, see ``Codec.compress_batch``)."""
    make_codec = make_codec or _factory(quality, model, weights, device, precision)
    return _run("compressed", src, dst, make_codec, input_format, format, column, engine, workers, gpus_per_worker,
                batch_size, ray_address, force, progress, "png", images_per_file)


def decompress_dataset(src, dst, model=DEFAULT_MODEL, weights=None, device="cpu", precision="auto", *,
                       make_codec=None, input_format=None, column=None, to="png", engine="local", workers=1,
                       gpus_per_worker=0, batch_size=None, ray_address=None, force=False,
                       progress=True) -> DatasetSummary:
    """Decode a dataset written by :func:`compress_dataset` into ``dst``, images as PNG (``to="npy"``:
    .npy arrays H x W x C uint8), in the same kind of files. Options as :func:`compress_dataset`."""
    if to not in DECODED_FORMATS:
        raise ValueError(f"to must be one of {DECODED_FORMATS}, got {to!r}")
    make_codec = make_codec or _factory(None, model, weights, device, precision)
    return _run("decompressed", src, dst, make_codec, input_format, None, column, engine, workers, gpus_per_worker,
                batch_size, ray_address, force, progress, to)


def _factory(quality, model, weights, device, precision):
    from fastae.codec.api import CodecFactory

    # fails now, with a clear message, on an unknown model, quality or weights file
    return CodecFactory(quality=quality, model=model, device=device, weights=weights, precision=precision)


def _run(action, src, dst, make_codec, input_format, format, column, engine, workers, gpus_per_worker, batch_size,
         ray_address, force, progress, to, images_per_file=1000):
    from fastae.datasets import engines

    start = time.perf_counter()
    if str(src) == "" or str(dst) == "":
        raise ValueError(f"source and destination must be paths, got {str(src)!r} and {str(dst)!r}")
    kind, base, units = detect(src, input_format, decompress=action == "decompressed")
    if format is not None and format not in KINDS:
        raise ValueError(f"format must be one of {KINDS}, got {format!r}")
    pack = kind == "folder" and format in ("parquet", "webdataset")  # image files packed into Parquet or shards
    convert = kind != "folder" and format not in (None, kind)  # Parquet <-> shards, either to a folder
    if isinstance(images_per_file, bool) or not isinstance(images_per_file, int) or images_per_file < 1:
        raise ValueError(f"images_per_file must be an integer >= 1, got {images_per_file!r}")
    if column is not None and kind != "parquet":
        raise ValueError(f"column applies to Parquet sources; {src} is a {kind} source")
    # a Ray task takes a batch of images of a folder, one Parquet file or shard otherwise
    run = engines.runner(engine, workers, gpus_per_worker,
                         batch_size or (8 if kind == "folder" and not pack else 1), ray_address, progress)
    if kind == "folder" and not pack:
        return _run_folder(action, src, dst, make_codec, run, engine, force, progress, to, start, batch_size)
    out_kind = format if pack or convert else kind
    out_suffix = _SUFFIX.get(out_kind, "")  # a folder per input file when converting to a folder
    if "parquet" in (kind, out_kind):
        import pyarrow  # noqa: F401 - a missing extra fails now, with the extra's name

    dst = Path(dst)
    if pack:
        units, inputs, task = _pack_plan(src, out_kind, images_per_file)
        single = False
        outputs = [dst / rel for rel in units]
        _check_paths(src, dst, [], outputs, single)
    else:
        single = len(units) == 1 and Path(src).is_file() and out_suffix and dst.suffix.lower() == out_suffix
        outputs = [dst] if single else [dst / rel.with_suffix(out_suffix) for rel in units]
        inputs = [base / rel for rel in units]
        _check_paths(src, dst, inputs, outputs, single)
        if kind == "parquet":
            _check_columns(inputs, column, action)
        task = _task(kind, action, column, to, out_kind)
    out_dir = dst.parent if single else dst
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = DatasetSummary(action=action, kind=out_kind)
    codec = functools.cache(make_codec)

    def cleanup(any_age):
        from fastae.codec.folder import _remove_stale_temps

        for folder in sorted({o.parent for o in outputs}):
            _remove_stale_temps(folder, out_suffix, any_age)

    from fastae.codec.folder import _run_lock

    with _run_lock(out_dir, cleanup):
        todo = []
        for rel, in_path, out_path in zip(units, inputs, outputs):
            if not force and os.path.lexists(out_path):
                problem = _check_existing(out_kind, action, out_path, codec)
                if problem:
                    summary.failed.append((rel.as_posix(), problem))
                else:
                    summary.skipped += 1
                continue
            todo.append((rel, str(in_path), str(out_path)))
        _process(todo, task, make_codec, run, summary, progress)
    summary.failed.sort(key=lambda f: f[0])
    summary.seconds = time.perf_counter() - start
    _write_errors(summary, out_dir)
    return summary


def _check_paths(src, dst, inputs, outputs, single):
    real_inputs = {os.path.realpath(p) for p in inputs}  # (none when packing: the outputs are new files)
    clash = [str(o) for o in outputs if os.path.realpath(o) in real_inputs]
    if clash:
        raise ValueError(f"the output {clash[0]} would overwrite its input; choose another destination")
    if not single:
        if os.path.lexists(dst) and not dst.is_dir():
            raise FileExistsError(f"destination {dst} exists and is not a folder")
        src_dir = os.path.realpath(src)
        if Path(src).is_dir() and Path(os.path.realpath(dst)).is_relative_to(src_dir):
            raise ValueError(f"destination {dst} is inside the source {src}: its outputs would be read as inputs "
                             f"next time; choose a folder outside it")


def _pack_plan(src, out_kind, images_per_file):
    """The units of packing the images of the folder ``src`` into Parquet files or shards of
    ``images_per_file`` images each, in sorted order: output names, their inputs (a JSON list of
    ``[relative name, path]``) and the task."""
    from fastae.data.images import list_images
    from fastae.datasets import units as unit_tasks

    paths = list_images(src)
    files = [[p.relative_to(src).as_posix(), str(p)] for p in paths]
    chunks = [files[i:i + images_per_file] for i in range(0, len(files), images_per_file)]
    prefix = "part" if out_kind == "parquet" else "shard"
    names = [Path(f"{prefix}-{k:05d}{_SUFFIX[out_kind]}") for k in range(len(chunks))]
    return names, [json.dumps(chunk) for chunk in chunks], functools.partial(unit_tasks.pack, format=out_kind)


def _check_columns(inputs, column, action):
    """Before any work: every readable Parquet input has the image column (ValueError naming the
    columns found otherwise); an unreadable one is left to fail as its unit."""
    from fastae.datasets import parquet

    for path in inputs:
        try:
            schema = parquet._open(path).schema_arrow
        except ValueError:
            continue
        name = column or (parquet.read_meta(schema).get("column") if action == "decompressed" else None)
        parquet.find_image_column(schema, name, path)


def _task(kind, action, column, to, out_kind):
    from fastae.datasets import units

    if out_kind != kind:
        return functools.partial(units.convert_unit, kind=kind, out_kind=out_kind,
                                 **({"column": column} if kind == "parquet" else {}))
    if kind == "parquet":
        return functools.partial(units.parquet_compress if action == "compressed" else units.parquet_decompress,
                                 column=column, **({} if action == "compressed" else {"to": to}))
    if action == "compressed":
        return units.shard_compress
    return functools.partial(units.shard_decompress, to=to)


def _check_existing(kind, action, path, codec):
    if action != "compressed":
        return None
    c = codec()
    if not all(hasattr(c, a) for a in ("model_id", "hash", "quality")):
        return None
    if kind == "folder":
        from fastae.datasets.convert import check_existing_folder as check_existing
    elif kind == "parquet":
        from fastae.datasets.parquet import check_existing
    else:
        from fastae.datasets.webdataset import check_existing
    return check_existing(path, c)


def _process(todo, task, make_codec, run, summary, progress):
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="compress" if summary.action == "compressed" else "decompress", unit="file",
               disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()

    def record(rel, result):
        status, *rest = result
        if status == "ok":
            stats = rest[0]
            summary.files += 1
            summary.images += stats["images"]
            summary.bytes_in += stats["bytes_in"]
            summary.bytes_out += stats["bytes_out"]
            summary.pixels += stats["pixels"]
            for error in stats["errors"]:
                where = f"row {error['row']}" if "row" in error else f"member {error['member']}"
                summary.failed.append((f"{rel.as_posix()}: {where}", error["reason"]))
        elif status == "fatal":
            raise RuntimeError(f"could not create the codec in a worker: {rest[0]}")
        else:
            summary.failed.append((rel.as_posix(), rest[0]))
        bar.update(1)
        elapsed = time.perf_counter() - start
        postfix = {"images": summary.images, "bytes": f"{_mb(summary.bytes_in)}->{_mb(summary.bytes_out)}",
                   "images/s": f"{summary.images / elapsed:.3g}" if elapsed > 0 else "-"}
        if summary.failed:
            postfix["failed"] = len(summary.failed)
        bar.set_postfix(postfix, refresh=False)

    try:
        if todo:
            run(todo, task, make_codec, record)
    finally:
        bar.close()


def _run_folder(action, src, dst, make_codec, run, engine, force, progress, to, start, batch_size=None):
    from fastae.codec.folder import compress_folder, decompress_folder

    runner = run if engine != "local" else None
    workers = run.keywords.get("workers", 1)
    batch = batch_size or 1 if engine == "local" else 1  # local: images coded together; ray: images per task
    if action == "compressed":
        result = compress_folder(src, dst, make_codec, workers=workers, force=force, progress=progress, runner=runner,
                                 batch_size=batch)
    else:
        result = decompress_folder(src, dst, make_codec, workers=workers, force=force, progress=progress, to=to,
                                   runner=runner, batch_size=batch)
    summary = DatasetSummary(**dataclasses.asdict(result), kind="folder", images=result.files)
    summary.seconds = time.perf_counter() - start
    _write_errors(summary, Path(dst))
    return summary


def _write_errors(summary, folder):
    """The failures of this run, one JSON object a line, in ``folder/fastae-errors.jsonl``."""
    if not summary.failed:
        return
    from fastae._io import write_text

    path = Path(folder) / ERRORS_FILE
    lines = []
    for where, reason in summary.failed:
        file, _, item = where.partition(": ")
        entry = {"file": file, "reason": reason}
        if item:
            key, _, value = item.partition(" ")
            entry[key] = int(value) if key == "row" else value
        lines.append(json.dumps(entry))
    write_text(path, "\n".join(lines) + "\n")
    summary.errors_file = str(path)
