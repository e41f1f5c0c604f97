"""Compress a folder of images into a mirrored folder of ``.fae`` files, and back.

This is the engine behind ``fastae compress SRC DST --quality Q`` and ``fastae decompress DST
OUT``. It knows nothing about the codec itself: it is given a *codec factory*, a picklable
zero-argument callable returning an object with ``compress(path) -> bytes`` and
``decompress(data) -> uint8 array HxWxC`` (C = 1 or 3). Each worker calls the factory once.

    import functools
    from fastae.codec.folder import compress_folder, decompress_folder

    make_codec = functools.partial(load_codec, quality=4)      # whatever builds the real codec
    summary = compress_folder("photos", "photos_fae", make_codec, workers=4)
    print(summary.format())     # compressed 24 files (0 skipped, 0 failed): 9.4 MB -> 0.45 MB, ...
    if not summary.ok:
        raise SystemExit(1)
    decompress_folder("photos_fae", "photos_png", make_codec, workers=4)

Behaviour:

* SRC is walked recursively in sorted order; hidden files and folders (name starting with
  ``.``) are skipped. Files with an image extension are inputs; other files are counted as
  ``ignored``. ``.fae`` files are never inputs of ``compress_folder``, so DST may equal SRC or
  lie inside it (a DST inside SRC is not walked).
* ``a/kodim01.png`` becomes ``DST/a/kodim01.fae`` (the suffix is replaced). Two inputs that
  would write the same output (``a.png`` and ``a.jpg``) are both reported as failed, and
  neither is written.
* Resumable: an existing output is skipped unless ``force=True``. ``compress_folder`` skips a
  ``.fae`` only when its header says this run's model and quality; any other (another quality,
  model, or a damaged file) is reported as failed and left alone.
* Every output is written under a temporary hidden name beside its target and renamed onto it
  only when complete (:func:`fastae._io.atomic_path`), so a kill never leaves a partial file.
* A file whose compression/decompression raises is reported (path and message); the others
  are still done. ``Summary.ok`` is False when anything failed.

Stale temporary files: a run that is killed (SIGKILL, power loss) can leave its temporary
files (``.NAME.fae.XXXXXXXX.fastae-tmp``, ``.NAME.png.XXXXXXXX.fastae-tmp``) behind. The next run removes
those it finds in the output folders it visits (the DST mirror of each SRC folder walked) —
but a temporary file of a run that is still going must not be removed, or that run's rename
fails. So each run holds a ``flock`` on the DST folder for its whole duration: a shared lock
while it works; it removes all matching temporary files only if it could first take the lock
exclusively, i.e. when no other run on the same DST is alive (a flock dies with its process,
so a killed run never blocks the cleanup). Otherwise (another run alive, no ``fcntl`` as on
Windows, a filesystem without flock) it removes only temporary files older than an hour: a
live run keeps a temporary file for the time of one write, seconds at most. Limit: the lock is
on DST itself, so it does not protect a concurrent run whose DST is a *different* folder
nested inside this one and younger than an hour.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import time
from pathlib import Path

from fastae._io import TEMP_SUFFIX, atomic_path
from fastae.data.images import IMAGE_EXTENSIONS, walk

__all__ = ["IMAGE_EXTENSIONS", "Summary", "compress_folder", "decompress_folder"]
FAE_SUFFIX = ".fae"
DECODED_FORMATS = ("png", "npy")  # what decompress writes
_STALE_AGE_S = 3600.0  # when the DST lock is not ours alone: age above which a temp file is stale


@dataclasses.dataclass
class Summary:
    """What a folder run did. ``bytes_in``/``bytes_out`` are the sizes of the files read and
    written for the ``files`` processed in this run (skipped ones not included)."""

    action: str = "compressed"
    files: int = 0
    skipped: int = 0
    failed: list = dataclasses.field(default_factory=list)  # [(relative path, message)]
    ignored: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    pixels: int = 0
    seconds: float = 0.0

    @property
    def ok(self):
        return not self.failed

    @property
    def compressed_bytes(self):
        """Bytes of the compressed side: the outputs when compressing, the inputs when decompressing."""
        return self.bytes_in if self.action == "decompressed" else self.bytes_out

    @property
    def bpp(self):
        """Bits per pixel of the compressed files processed (nan when no pixels)."""
        return 8.0 * self.compressed_bytes / self.pixels if self.pixels else float("nan")

    @property
    def images_per_s(self):
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def format(self):
        counts = f"{self.skipped} skipped, {len(self.failed)} failed"
        if self.ignored:
            counts += f", {self.ignored} ignored"
        bpp = f"{self.bpp:.3g} bpp" if self.pixels else "n/a bpp"
        lines = [
            f"{self.action} {self.files} file{'' if self.files == 1 else 's'} ({counts}): "
            f"{_mb(self.bytes_in)} -> {_mb(self.bytes_out)}, {bpp}, {self.images_per_s:.3g} images/s"
        ]
        lines += [f"  FAILED {path}: {message}" for path, message in self.failed]
        return "\n".join(lines)


def _mb(n):
    """Byte count for people: "9.4 MB", "0.45 MB", "12.3 kB", "84 B"."""
    if n < 1000:
        return f"{n} B"
    x, unit = (n / 1e6, "MB") if n >= 100_000 else (n / 1e3, "kB")
    text = f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"
    return f"{text} {unit}"


# ---------------------------------------------------------------------------------------------
# Public entry points


def compress_folder(src, dst, make_codec, workers=1, force=False, progress=True, extensions=None, runner=None,
                    batch_size=1):
    """Compress every image under ``src`` to ``dst/<relative path>.fae``; return a :class:`Summary`.

    ``make_codec``: picklable zero-argument callable returning the codec (called once per worker).
    ``batch_size``: images coded together in this process (``Codec.compress_batch``: batched
    transforms on the codec's device, the same files), for a GPU; on a CPU one at a time is faster.
    ``extensions``: image suffixes to take (default :data:`IMAGE_EXTENSIONS`), case-insensitive.
    ``runner``: None (this process, or a pool of ``workers`` processes) or a callable
    ``runner(todo, task, make_codec, record)`` that runs ``_run_task(task, codec, in_path, out_path)``
    for every ``(rel, in_path, out_path)`` of ``todo`` and calls ``record(rel, result)`` with each
    result (fastae.datasets.engines: the Ray Data engine).
    """
    exts = IMAGE_EXTENSIONS if extensions is None else _normalize_extensions(extensions)
    codec = functools.cache(make_codec)  # made on the first existing output to check

    def check_existing(path):
        """Why the .fae already at ``path`` is not this run's output (None: it is, skip it)."""
        from fastae.codec.format import CodecError, read_header

        c = codec()
        if not all(hasattr(c, a) for a in ("model_id", "hash", "quality")):  # not a fastae Codec: nothing to compare
            return None
        try:
            header = read_header(path)
        except (CodecError, OSError) as e:
            return f"{path} exists but is not a readable .fae file ({e}); --force replaces it"
        return other_run(path, header, c)

    return _run_folder(
        "compressed", src, dst, make_codec, workers, force, progress,
        is_input=lambda name: _suffix(name) in exts, out_suffix=FAE_SUFFIX, task=_compress_task,
        check_existing=check_existing, runner=runner, batch_size=batch_size, batch_task=_compress_batch,
    )


def decompress_folder(src, dst, make_codec, workers=1, force=False, progress=True, to="png", runner=None,
                      batch_size=1):
    """Decompress every ``.fae`` under ``src`` to ``dst/<relative path>.png`` (``to="npy"``: ``.npy``
    arrays H x W x C uint8, C = 1 or 3); return a :class:`Summary`. ``runner``, ``batch_size``: as
    ``compress_folder`` (here ``Codec.decompress_many``)."""
    if to not in DECODED_FORMATS:
        raise ValueError(f"to must be one of {DECODED_FORMATS}, got {to!r}")
    return _run_folder(
        "decompressed", src, dst, make_codec, workers, force, progress,
        is_input=lambda name: _suffix(name) == FAE_SUFFIX, out_suffix="." + to,
        task=functools.partial(_decompress_task, to=to), runner=runner, batch_size=batch_size,
        batch_task=functools.partial(_decompress_batch, to=to),
    )


# ---------------------------------------------------------------------------------------------
# The run


def _run_folder(action, src, dst, make_codec, workers, force, progress, is_input, out_suffix, task,
                check_existing=None, runner=None, batch_size=1, batch_task=None):
    if str(src) == "" or str(dst) == "":  # Path("") is the current folder: never what was meant
        raise ValueError(f"source and destination must be folder paths, got {str(src)!r} and {str(dst)!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder not found (or not a folder): {src}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if not callable(make_codec):
        raise TypeError(f"make_codec must be a zero-argument callable, got {make_codec!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size > 1 and (workers > 1 or runner is not None):
        raise ValueError(f"batch_size {batch_size} batches images in this process (for its device); it does not "
                         f"combine with workers={workers} or another engine")

    if os.path.lexists(dst) and not dst.is_dir():
        raise FileExistsError(f"destination {dst} exists and is not a folder")
    start = time.perf_counter()
    summary = Summary(action=action)
    dst.mkdir(parents=True, exist_ok=True)
    inputs, dirs = _walk(src, dst, is_input, out_suffix, summary)

    def cleanup(any_age):
        for rel_dir in dirs:
            _remove_stale_temps(dst / rel_dir, out_suffix, any_age)

    with _run_lock(dst, cleanup):
        # Map inputs to outputs; outputs claimed by several inputs are conflicts.
        by_out = {}
        for rel in inputs:
            by_out.setdefault(rel.with_suffix(out_suffix), []).append(rel)
        todo = []
        for rel in inputs:
            out_rel = rel.with_suffix(out_suffix)
            claimants = by_out[out_rel]
            if len(claimants) > 1:
                others = ", ".join(c.as_posix() for c in claimants if c != rel)
                summary.failed.append((rel.as_posix(), f"output {out_rel.as_posix()} would also be written by "
                                       f"{others}; rename one of them (nothing written)"))
            elif not force and os.path.lexists(dst / out_rel):
                problem = check_existing and check_existing(dst / out_rel)
                if problem:
                    summary.failed.append((rel.as_posix(), problem))
                else:
                    summary.skipped += 1
            else:
                todo.append((rel, str(src / rel), str(dst / out_rel)))

        _process(todo, task, make_codec, workers, progress, summary, runner,
                 batch=(batch_task, batch_size) if batch_size > 1 else None)

    summary.failed.sort()
    summary.seconds = time.perf_counter() - start
    return summary


def _process(todo, task, make_codec, workers, progress, summary, runner=None, batch=None):
    """Run ``todo`` and record each result in ``summary``: through ``runner``, a pool of ``workers``
    processes, ``batch`` = (batch_task, size) in this process, or ``task`` file by file here."""
    from tqdm.auto import tqdm

    desc = "compress" if summary.action == "compressed" else "decompress"
    bar = tqdm(total=len(todo), desc=desc, unit="file", disable=not progress, dynamic_ncols=True)

    def record(rel, result):
        status, *rest = result
        if status == "ok":
            n_in, n_out, pixels = rest
            summary.files += 1
            summary.bytes_in += n_in
            summary.bytes_out += n_out
            summary.pixels += pixels
        elif status == "fatal":
            raise RuntimeError(f"could not create the codec in a worker process: {rest[0]}")
        else:
            summary.failed.append((rel.as_posix(), rest[0]))
        bar.update(1)
        postfix = {"bytes": f"{_mb(summary.bytes_in)}->{_mb(summary.bytes_out)}",
                   "bpp": f"{summary.bpp:.3f}" if summary.pixels else "-"}
        if summary.failed:
            postfix["failed"] = len(summary.failed)
        bar.set_postfix(postfix, refresh=False)

    try:
        if runner is not None:
            if todo:
                runner(todo, task, make_codec, record)
        elif batch is not None:
            if todo:
                _batched(make_codec(), todo, record, *batch)
        elif workers == 1 or len(todo) <= 1:
            if todo:
                codec = make_codec()
                for rel, in_path, out_path in todo:
                    record(rel, _run_task(task, codec, in_path, out_path))
        else:
            _process_pool(todo, task, make_codec, workers, record)
    finally:
        bar.close()


def _process_pool(todo, task, make_codec, workers, record):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx,
                               initializer=_worker_init, initargs=(make_codec,))
    try:
        futures = {pool.submit(_worker_task, task, in_path, out_path): rel for rel, in_path, out_path in todo}
        for future in as_completed(futures):
            try:
                result = future.result()
            except Exception as exc:  # the worker died (BrokenProcessPool) or the result did not pickle
                result = ("error", _message(exc))
            record(futures[future], result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# Work done per file (in a worker process when workers > 1)

_WORKER_CODEC = None
_WORKER_ERROR = None


def _worker_init(make_codec):
    global _WORKER_CODEC, _WORKER_ERROR
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)  # N workers x all cores each would oversubscribe the CPU
    try:
        _WORKER_CODEC = make_codec()
    except Exception as exc:  # reported by the first task, so the run stops with the reason
        _WORKER_ERROR = _message(exc)


def _worker_task(task, in_path, out_path):
    if _WORKER_CODEC is None:
        return ("fatal", _WORKER_ERROR or "codec not initialised")
    return _run_task(task, _WORKER_CODEC, in_path, out_path)


def other_run(path, header, codec):
    """Why the output at ``path``, whose (first) .fae file has ``header``, is not from this run's
    codec (None: it is, the output can be skipped)."""
    if (header.model_id, header.model_hash, header.quality) == (codec.model_id, codec.hash, codec.quality):
        return None
    made_by = header.model_id or f"unknown, hash {header.model_hash.hex()}"
    return (f"{path} exists from another run (model {made_by}, quality {header.quality}; this run: "
            f"model {codec.model_id}, quality {codec.quality}); --force replaces it")


def _run_task(task, codec, in_path, out_path):
    """Run one file; an Exception becomes an ("error", message) result, anything else
    (KeyboardInterrupt, SystemExit) propagates."""
    try:
        return ("ok", *task(codec, in_path, out_path))
    except Exception as exc:
        return ("error", _message(exc))


def _compress_task(codec, in_path, out_path):
    data = codec.compress(in_path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"codec.compress returned {type(data).__name__}, expected bytes")
    return _store_compressed(in_path, out_path, data)


def _store_compressed(in_path, out_path, data):
    """Write the .fae bytes ``data`` of ``in_path`` to ``out_path``; (bytes in, bytes out, pixels)."""
    from PIL import Image

    with Image.open(in_path) as image:  # reads the header only
        width, height = image.size
    with atomic_path(out_path) as tmp:
        _write_bytes(tmp, data)
    return os.path.getsize(in_path), os.path.getsize(out_path), width * height


def _batched(codec, todo, record, batch_task, size):
    """Run ``todo`` ``size`` files at a time through ``batch_task(codec, items) -> [result]``."""
    for start in range(0, len(todo), size):
        items = todo[start:start + size]
        for (rel, _, _), result in zip(items, batch_task(codec, items)):
            record(rel, result)


def _compress_batch(codec, items):
    """The results of compressing ``items`` ([(rel, in_path, out_path)]) together: each image read
    on its own (a bad one fails alone), the good ones through ``codec.compress_batch``."""
    if not hasattr(codec, "_compress_prepared"):  # not a fastae Codec: one image at a time
        return [_run_task(_compress_task, codec, i, o) for _, i, o in items]
    results, prepared, where = [None] * len(items), [], []
    for k, (_, in_path, _) in enumerate(items):
        try:
            prepared.append(codec._prepare(in_path))
            where.append(k)
        except Exception as exc:
            results[k] = ("error", _message(exc))
    try:
        files = codec._compress_prepared(prepared) if prepared else []
    except Exception:  # the batch as a whole (memory, a device error): each image on its own
        files = None
    for i, k in enumerate(where):
        in_path, out_path = items[k][1], items[k][2]
        if files is None:
            results[k] = _run_task(_compress_task, codec, in_path, out_path)
            continue
        try:
            results[k] = ("ok", *_store_compressed(in_path, out_path, files[i]))
        except Exception as exc:
            results[k] = ("error", _message(exc))
    return results


def _decompress_batch(codec, items, to="png"):
    """The results of decoding ``items`` together (``codec.decompress_many``); when any file of the
    batch is damaged, each file on its own, so that only the damaged ones fail."""
    try:
        datas = []
        for _, in_path, _ in items:
            with open(in_path, "rb") as f:
                datas.append(f.read())
        arrays = codec.decompress_many(datas)
    except Exception:
        return [_run_task(functools.partial(_decompress_task, to=to), codec, i, o) for _, i, o in items]
    results = []
    for data, array, (_, _, out_path) in zip(datas, arrays, items):
        try:
            results.append(("ok", *_store_decoded(data, array, out_path, to)))
        except Exception as exc:
            results.append(("error", _message(exc)))
    return results


def _decompress_task(codec, in_path, out_path, to="png"):
    with open(in_path, "rb") as f:
        data = f.read()
    return _store_decoded(data, codec.decompress(data), out_path, to)


def _store_decoded(data, array, out_path, to):
    """Write the decoded image ``array`` of the .fae bytes ``data`` to ``out_path``; (bytes in, bytes out, pixels)."""
    encoded, pixels = encoded_file(array, to)
    with atomic_path(out_path) as tmp:
        _write_bytes(tmp, encoded)
    return len(data), len(encoded), pixels


#: zlib level of decoded PNG files: fast, as a decoder's output should be (see decoded_file)
PNG_LEVEL = 1


def decoded_file(codec, data, to="png"):
    """``(bytes of a .png or .npy file, pixels)`` of the .fae bytes ``data`` decoded by ``codec``:
    a grey image as an 8-bit grey PNG / an H x W x 1 array, colour as RGB / H x W x 3, uint8."""
    return encoded_file(codec.decompress(data), to)


def encoded_file(array, to="png"):
    """``(bytes of a .png or .npy file, pixels)`` of a decoded image (what ``decoded_file`` writes)."""
    import io

    import numpy as np
    from PIL import Image

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"codec.decompress returned dtype {array.dtype}, expected uint8")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or array.ndim == 3 and array.shape[2] == 3):
        raise ValueError(f"codec.decompress returned shape {array.shape}, expected HxWx1 or HxWx3")
    buffer = io.BytesIO()
    if to == "npy":
        np.save(buffer, np.ascontiguousarray(np.atleast_3d(array)), allow_pickle=False)
    else:
        # "L" for HxW, "RGB" for HxWx3; zlib level 1: on Kodak 66 ms an image against 240 ms at
        # Pillow's default 6, for files 5% larger (PNG_LEVEL)
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue(), array.shape[0] * array.shape[1]


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _message(exc):
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Walking, temporary files, locking


def _suffix(name):
    return os.path.splitext(name)[1].lower()


def _normalize_extensions(extensions):
    if isinstance(extensions, str):
        extensions = [extensions]
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    exts.discard(FAE_SUFFIX)  # .fae files are never inputs
    return frozenset(exts)


def _walk(src, dst, is_input, out_suffix, summary):
    """Sorted relative paths of the inputs under ``src``, and the relative folders visited, by
    fastae.data's walk (hidden entries skipped, symlinked folders followed once); a ``dst`` nested
    inside ``src`` is not entered; other files and repeated folder links are counted in
    ``summary.ignored`` (except our own outputs when ``dst`` is ``src``); a folder that cannot be
    listed goes to ``summary.failed``."""
    same = os.path.realpath(src) == os.path.realpath(dst)
    inputs, dirs = [], []

    def unreadable(exc):  # a folder that cannot be listed is a failure, not silently skipped
        path = Path(exc.filename) if exc.filename else src
        summary.failed.append((Path(os.path.relpath(path, src)).as_posix(), _message(exc)))

    for rel_root, names, repeats in walk(src, exclude=None if same else dst, onerror=unreadable):
        summary.ignored += repeats
        dirs.append(rel_root)
        for name in names:
            if is_input(name):
                inputs.append(rel_root / name)
            elif not (same and _suffix(name) == out_suffix):
                summary.ignored += 1
    return inputs, dirs


def _stale_temp_pattern(out_suffix):
    # atomic_path names its temporary files f".{target name}.{mkstemp random}{TEMP_SUFFIX}"
    return re.compile(r"^\..+" + re.escape(out_suffix) + r"\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX) + "$")


def _remove_stale_temps(folder, out_suffix, any_age):
    pattern = _stale_temp_pattern(out_suffix)
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    now = time.time()
    for entry in entries:
        if not pattern.match(entry.name):
            continue
        with contextlib.suppress(OSError):
            is_dir = entry.is_dir(follow_symlinks=False)  # fastae._io.atomic_dir's
            if not (is_dir or entry.is_file(follow_symlinks=False)):
                continue
            if any_age or now - entry.stat(follow_symlinks=False).st_mtime > _STALE_AGE_S:
                if is_dir:
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)


@contextlib.contextmanager
def _run_lock(dst, cleanup):
    """Hold a shared flock on ``dst`` for the whole run. Before that, try to take it exclusively:
    if that works no other run on ``dst`` is alive, every temporary file there is stale and
    ``cleanup(True)`` is called; otherwise ``cleanup(False)`` (remove only old ones)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    fd = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fd = os.open(dst, os.O_RDONLY)
    try:
        exclusive = False
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                exclusive = True
            except OSError:  # another run holds it (or the filesystem does not do flock)
                pass
        if exclusive:
            cleanup(True)
        if fd is not None:
            with contextlib.suppress(OSError):
                # Downgrade (or wait while another run cleans up): other runs may now work too.
                fcntl.flock(fd, fcntl.LOCK_SH)
        if not exclusive:
            cleanup(False)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
