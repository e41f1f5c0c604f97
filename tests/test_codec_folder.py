"""fastae.codec.folder: folder walking, resumability, atomic writes, failures, workers.

A lossless stand-in codec (zlib over raw pixels) replaces the learned one: these tests are
about the folder logic, not about compression."""

import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastae.codec import folder
from fastae.codec.folder import IMAGE_EXTENSIONS, Summary, compress_folder, decompress_folder
from tests._codec import photo


class PngCodec:
    """Lossless stand-in: b"TST1" + (h, w, c) + zlib(raw pixels). Module-level so it pickles."""

    calls = 0  # compress calls in this process (meaningful with workers=1 only)

    def compress(self, path):
        type(self).calls += 1
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            array = np.asarray(image)
        if array.ndim == 2:
            array = array[:, :, None]
        h, w, c = array.shape
        return b"TST1" + struct.pack("<HHB", h, w, c) + zlib.compress(array.tobytes())

    def decompress(self, data):
        if data[:4] != b"TST1":
            raise ValueError("not a TST1 file (bad magic)")
        h, w, c = struct.unpack("<HHB", data[4:9])
        return np.frombuffer(zlib.decompress(data[9:]), np.uint8).reshape(h, w, c)


class CrashOnSecondImage(PngCodec):
    """Raises KeyboardInterrupt (as if the user pressed Ctrl-C) on the third file: in sorted walk
    order broken.png (fails), kodim01.png (done), then a/grey.png (interrupted)."""

    def compress(self, path):
        if type(self).calls >= 2:
            raise KeyboardInterrupt
        return super().compress(path)


class FloatDecoder(PngCodec):
    def decompress(self, data):
        return super().decompress(data).astype(np.float32)


@pytest.fixture(autouse=True)
def _reset_counters():
    PngCodec.calls = CrashOnSecondImage.calls = 0


def _crop(index):
    """A 32 x 32 crop of real photo content (tests/data/codec), another for each index."""
    return photo((96, 152))[32 * (index % 3):32 * (index % 3) + 32, 40 * index:40 * index + 32].copy()


@pytest.fixture
def tree(tmp_path):
    """SRC with 4 images (one grey, nested folders), notes.txt, a corrupt broken.png and hidden
    entries. Returns (src, {relative .fae path: original pixels as HxW or HxWx3})."""
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / ".hidden_dir").mkdir()
    images = {
        "kodim01.png": _crop(1),
        "a/kodim02.png": _crop(2),
        "a/b/kodim03.png": _crop(3),
        "a/grey.png": np.add.outer(np.arange(12), np.arange(20)).astype(np.uint8) * 9,  # 12x20 L
    }
    for rel, array in images.items():
        Image.fromarray(array).save(src / rel)
    (src / "notes.txt").write_text("not an image\n")
    (src / "broken.png").write_bytes(b"this is not a PNG at all" * 10)
    Image.fromarray(images["kodim01.png"]).save(src / ".hidden.png")
    Image.fromarray(images["kodim01.png"]).save(src / ".hidden_dir" / "x.png")
    return src, {str(Path(rel).with_suffix(".fae")): array for rel, array in images.items()}


def _files(root):
    """Every file under root (hidden ones included), as sorted relative posix paths."""
    return sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file())


def _stats(root):
    return {rel: (s.st_ino, s.st_mtime_ns, s.st_size) for rel in _files(root) for s in [os.stat(Path(root) / rel)]}


def test_first_run_outputs_and_summary(tree, tmp_path, capsys):
    src, expected = tree
    dst = tmp_path / "dst"
    summary = compress_folder(src, dst, PngCodec, progress=True)

    assert _files(dst) == sorted(expected)  # mirrored tree, suffix replaced, nothing else
    for rel, array in expected.items():
        decoded = PngCodec().decompress((dst / rel).read_bytes())
        np.testing.assert_array_equal(decoded.reshape(array.shape), array)

    assert [path for path, _ in summary.failed] == ["broken.png"]
    assert "UnidentifiedImageError" in summary.failed[0][1] and "broken.png" in summary.failed[0][1]
    assert not summary.ok
    assert summary.files == 4 and summary.skipped == 0 and summary.ignored == 1  # notes.txt
    assert summary.bytes_out == sum((dst / rel).stat().st_size for rel in expected)
    assert summary.bytes_in == sum((src / rel).with_suffix(".png").stat().st_size for rel in expected)
    assert summary.pixels == sum(a.shape[0] * a.shape[1] for a in expected.values()) == 3 * 32 * 32 + 12 * 20
    assert summary.bpp == pytest.approx(8 * summary.bytes_out / summary.pixels)
    assert summary.seconds > 0 and summary.images_per_s > 0
    text = summary.format()
    assert text.startswith("compressed 4 files (0 skipped, 1 failed, 1 ignored): ")
    assert "bpp" in text and "images/s" in text
    assert text.splitlines()[1].startswith("  FAILED broken.png: UnidentifiedImageError")
    assert "compress" in capsys.readouterr().err  # the progress bar


def test_second_run_skips_everything(tree, tmp_path):
    src, expected = tree
    dst = tmp_path / "dst"
    compress_folder(src, dst, PngCodec, progress=False)
    before = _stats(dst)
    PngCodec.calls = 0

    summary = compress_folder(src, dst, PngCodec, progress=False)
    assert summary.files == 0 and summary.skipped == 4
    assert [path for path, _ in summary.failed] == ["broken.png"]  # no output: tried again
    assert PngCodec.calls == 1  # only broken.png; nothing recompressed
    assert summary.bytes_in == summary.bytes_out == summary.pixels == 0
    assert _stats(dst) == before  # same inodes, mtimes, sizes
    assert summary.format().startswith("compressed 0 files (4 skipped, 1 failed, 1 ignored): 0 B -> 0 B, n/a bpp")


def test_force_recompresses(tree, tmp_path):
    src, expected = tree
    dst = tmp_path / "dst"
    compress_folder(src, dst, PngCodec, progress=False)
    before = _stats(dst)
    contents = {rel: (dst / rel).read_bytes() for rel in expected}
    PngCodec.calls = 0

    summary = compress_folder(src, dst, PngCodec, force=True, progress=False)
    assert summary.files == 4 and summary.skipped == 0 and PngCodec.calls == 5
    after = _stats(dst)
    assert sorted(after) == sorted(before)
    assert all(after[rel][0] != before[rel][0] for rel in expected)  # replaced (new inode)
    assert {rel: (dst / rel).read_bytes() for rel in expected} == contents


def test_interrupted_run_leaves_no_partial_files_and_resumes(tree, tmp_path):
    src, expected = tree
    dst = tmp_path / "dst"
    with pytest.raises(KeyboardInterrupt):
        compress_folder(src, dst, CrashOnSecondImage, progress=False)
    assert CrashOnSecondImage.calls == 2  # the interrupted call is not counted
    assert _files(dst) == ["kodim01.fae"]  # the completed one, no temp or partial file
    np.testing.assert_array_equal(PngCodec().decompress((dst / "kodim01.fae").read_bytes()), expected["kodim01.fae"])

    summary = compress_folder(src, dst, PngCodec, progress=False)
    assert summary.files == 3 and summary.skipped == 1
    assert _files(dst) == sorted(expected)


def test_interrupt_during_write_leaves_no_temp(tree, tmp_path, monkeypatch):
    src, expected = tree
    dst = tmp_path / "dst"

    def half_then_interrupt(path, data):
        Path(path).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(folder, "_write_bytes", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        compress_folder(src, dst, PngCodec, progress=False)
    assert _files(dst) == []

    def half_then_fail(path, data):
        Path(path).write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(folder, "_write_bytes", half_then_fail)
    summary = compress_folder(src, dst, PngCodec, progress=False)
    assert summary.files == 0 and len(summary.failed) == 5
    assert all("disk full" in msg for path, msg in summary.failed if path != "broken.png")
    assert _files(dst) == []


def test_stale_temp_files_are_removed(tree, tmp_path):
    src, expected = tree
    dst = tmp_path / "dst"
    (dst / "a" / "b").mkdir(parents=True)
    stale = [dst / ".kodim01.fae.k2x_9abc.fastae-tmp", dst / "a" / ".kodim02.fae.zzzz1234.fastae-tmp",
             dst / "a" / "b" / ".whatever.fae.q1w2e3r4.fastae-tmp"]
    kept = [dst / "a" / ".keep", dst / "a" / ".kodim02.png.abcd1234.fastae-tmp", dst / "a" / "x.fae.abcd1234.fastae-tmp",
            dst / "a" / ".user.fae.backup.tmp"]
    for path in stale + kept:
        path.write_bytes(b"partial")

    summary = compress_folder(src, dst, PngCodec, progress=False)
    assert summary.files == 4
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)  # only this run's own temp pattern is touched


def test_temp_files_of_a_live_run_are_kept(tree, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    src, expected = tree
    dst = tmp_path / "dst"
    (dst / "a").mkdir(parents=True)
    fresh = dst / "a" / ".kodim02.fae.abcd1234.fastae-tmp"
    old = dst / "a" / ".grey.fae.efgh5678.fastae-tmp"
    fresh.write_bytes(b"being written")
    old.write_bytes(b"left by a killed run")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))

    fd = os.open(dst, os.O_RDONLY)  # another run on dst is alive: it holds the shared lock
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        summary = compress_folder(src, dst, PngCodec, progress=False)
    finally:
        os.close(fd)
    assert summary.files == 4
    assert fresh.exists() and not old.exists()

    compress_folder(src, dst, PngCodec, progress=False)  # alone now: every temp file is stale
    assert not fresh.exists()


def test_name_conflict_is_reported_not_overwritten(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    pixels = np.full((8, 8, 3), 100, np.uint8)
    Image.fromarray(pixels).save(src / "a.png")
    Image.fromarray(pixels).save(src / "a.jpg")
    Image.fromarray(pixels).save(src / "c.PNG")
    dst.mkdir()
    (dst / "a.fae").write_bytes(b"old")

    summary = compress_folder(src, dst, PngCodec, progress=False)
    assert [path for path, _ in summary.failed] == ["a.jpg", "a.png"]
    assert "a.fae" in summary.failed[0][1] and "a.png" in summary.failed[0][1]
    assert "a.jpg" in summary.failed[1][1]
    assert (dst / "a.fae").read_bytes() == b"old"
    assert summary.files == 1 and _files(dst) == ["a.fae", "c.fae"]


@pytest.mark.slow
def test_workers_give_identical_outputs(tree, tmp_path):
    src, expected = tree
    one = compress_folder(src, tmp_path / "one", PngCodec, workers=1, progress=False)
    two = compress_folder(src, tmp_path / "two", PngCodec, workers=2, progress=False)
    assert _files(tmp_path / "one") == _files(tmp_path / "two") == sorted(expected)
    for rel in expected:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    for name in ("files", "skipped", "failed", "ignored", "bytes_in", "bytes_out", "pixels"):
        assert getattr(one, name) == getattr(two, name), name


def test_decompress_round_trip(tree, tmp_path):
    src, expected = tree
    dst, out = tmp_path / "dst", tmp_path / "out"
    compress_folder(src, dst, PngCodec, progress=False)
    (dst / "a" / "corrupt.fae").write_bytes(b"garbage, not a codec file")
    (dst / "readme.txt").write_text("hi")

    summary = decompress_folder(dst, out, PngCodec, progress=False)
    assert summary.failed == [("a/corrupt.fae", "ValueError: not a TST1 file (bad magic)")]
    assert summary.files == 4 and summary.ignored == 1 and not summary.ok
    assert _files(out) == sorted(str(Path(rel).with_suffix(".png")) for rel in expected)
    for rel, array in expected.items():
        with Image.open(out / Path(rel).with_suffix(".png")) as image:
            assert image.mode == ("L" if array.ndim == 2 else "RGB")
            np.testing.assert_array_equal(np.asarray(image), array)
    assert summary.bytes_in == sum((dst / rel).stat().st_size for rel in expected)
    assert summary.bytes_out == sum((out / rel).with_suffix(".png").stat().st_size for rel in expected)
    assert summary.pixels == sum(a.shape[0] * a.shape[1] for a in expected.values())
    assert summary.bpp == pytest.approx(8 * summary.bytes_in / summary.pixels)  # of the .fae files
    assert summary.format().startswith("decompressed 4 files (0 skipped, 1 failed, 1 ignored)")

    before = _stats(out)
    again = decompress_folder(dst, out, PngCodec, progress=False)
    assert again.files == 0 and again.skipped == 4 and _stats(out) == before
    forced = decompress_folder(dst, out, PngCodec, force=True, progress=False)
    assert forced.files == 4 and all(_stats(out)[rel][0] != before[rel][0] for rel in before)


def test_decompress_rejects_wrong_dtype(tree, tmp_path):
    src, expected = tree
    compress_folder(src, tmp_path / "dst", PngCodec, progress=False)
    summary = decompress_folder(tmp_path / "dst", tmp_path / "out", FloatDecoder, progress=False)
    assert summary.files == 0 and len(summary.failed) == 4
    assert all("uint8" in msg for _, msg in summary.failed)
    assert _files(tmp_path / "out") == []


def test_dst_equal_to_or_inside_src(tree, tmp_path):
    src, expected = tree
    inside = compress_folder(src, src / "out", PngCodec, progress=False)
    assert inside.files == 4 and _files(src / "out") == sorted(expected)
    again = compress_folder(src, src / "out", PngCodec, progress=False)  # out/ is not walked
    assert again.skipped == 4 and again.ignored == 1

    same = compress_folder(src, src, PngCodec, progress=False)
    assert same.files == 4 and all((src / rel).is_file() for rel in expected)
    again = compress_folder(src, src, PngCodec, progress=False)
    assert again.files == 0 and again.skipped == 4 and again.ignored == 1  # .fae are not "ignored"


def test_extensions_and_defaults(tree, tmp_path):
    src, expected = tree
    assert ".fae" not in IMAGE_EXTENSIONS and {".png", ".jpg", ".tiff", ".pgm"} <= IMAGE_EXTENSIONS
    summary = compress_folder(src, tmp_path / "dst", PngCodec, progress=False, extensions=["JPG", ".fae"])
    assert summary.files == 0 and summary.failed == [] and summary.ignored == 6


def test_summary_format():
    summary = Summary(files=24, bytes_in=9_400_000, bytes_out=450_000, pixels=7_500_000, seconds=24 / 3.1)
    assert summary.format() == "compressed 24 files (0 skipped, 0 failed): 9.4 MB -> 0.45 MB, 0.48 bpp, 3.1 images/s"
    assert summary.ok and summary.bpp == pytest.approx(0.48)
    small = Summary(action="decompressed", files=1, bytes_in=84, bytes_out=12_345, pixels=64, seconds=0.5,
                    failed=[("x.fae", "ValueError: bad")])
    assert small.format() == ("decompressed 1 file (0 skipped, 1 failed): 84 B -> 12.3 kB, 10.5 bpp, 2 images/s\n"
                              "  FAILED x.fae: ValueError: bad")
    assert not small.ok


def test_argument_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        compress_folder(missing, tmp_path / "dst", PngCodec)
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="file.png"):
        decompress_folder(tmp_path / "file.png", tmp_path / "dst", PngCodec)
    for workers in (0, -3):
        with pytest.raises(ValueError, match=str(workers)):
            compress_folder(tmp_path, tmp_path / "dst", PngCodec, workers=workers)
    assert not (tmp_path / "dst").exists()  # nothing created on bad arguments


def test_unlistable_folder_is_reported(tree, tmp_path, monkeypatch):
    src, expected = tree
    real_scandir = os.scandir

    def scandir(path="."):  # chmod 000 does not stop root, so simulate the refusal
        if Path(path) == src / "a" / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = compress_folder(src, tmp_path / "dst", PngCodec, progress=False)
    assert summary.files == 3
    assert summary.failed[0] == ("a/b", f"PermissionError: [Errno 13] Permission denied: '{src / 'a' / 'b'}'")


def test_existing_files_of_another_quality_or_damaged_are_not_skipped(tmp_path):
    """A .fae already in DST is skipped only if it is this run's model and quality; a file of
    another quality (or a damaged one) is reported, left alone, and replaced only with force."""
    import functools

    import torch

    from fastae.codec.api import load_codec
    from fastae.codec.model_file import export_codec
    from fastae.models.codec import FactorizedCodec

    torch.manual_seed(0)
    weights = export_codec(FactorizedCodec(N=8, M=8, lambdas=(0.01, 0.1)), tmp_path / "tiny.safetensors", model_id="tiny")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src / name)
    q1, q2 = (functools.partial(load_codec, quality=q, weights=weights) for q in (1, 2))
    assert compress_folder(src, dst, q1, progress=False).files == 2
    again = compress_folder(src, dst, q1, progress=False)
    assert again.skipped == 2 and not again.failed
    (dst / "b.fae").write_bytes(b"")
    first = (dst / "a.fae").read_bytes()
    other = compress_folder(src, dst, q2, progress=False)
    assert other.files == 0 and other.skipped == 0 and not other.ok
    reasons = dict(other.failed)
    assert "another run (model tiny, quality 1; this run: model tiny, quality 2)" in reasons["a.png"]
    assert "not a readable .fae file" in reasons["b.png"] and "--force" in reasons["b.png"]
    assert (dst / "a.fae").read_bytes() == first  # left alone
    forced = compress_folder(src, dst, q2, force=True, progress=False)
    assert forced.files == 2 and forced.ok and q2().decompress((dst / "a.fae").read_bytes()).shape == (20, 30, 3)


def test_symlinked_folders_are_followed_once(tree, tmp_path):
    src, expected = tree
    top = tmp_path / "top"
    top.mkdir()
    (top / "photos").symlink_to(src, target_is_directory=True)
    (top / "again").symlink_to(src, target_is_directory=True)  # a second link to the same folder
    (Path(src) / "loop").symlink_to(top, target_is_directory=True)  # and a link back up
    summary = compress_folder(top, tmp_path / "dst", PngCodec, progress=False)
    assert summary.files == 4 and summary.ignored >= 2
    written = sorted(p.relative_to(tmp_path / "dst").as_posix() for p in (tmp_path / "dst").rglob("*.fae"))
    assert written == sorted(f"again/{rel}" for rel in expected)  # the first link in sorted order


def _same_codec(codec):
    return codec


def _contents(root):
    return {rel: (Path(root) / rel).read_bytes() for rel in _files(root)}


def test_batched_folder_runs_write_the_files_of_single_ones(tiny_codec, tmp_path):
    """batch_size > 1 (compress_batch / decompress_many, for a GPU) writes the bytes of the
    one-at-a-time run, and a bad image or a damaged file fails alone within its batch."""
    import functools

    src = tmp_path / "src"
    src.mkdir()
    for i, shape in enumerate([(40, 56), (40, 56), (64, 64), (40, 56), (33, 47)]):
        Image.fromarray(photo(shape)).save(src / f"{i}.png")
    Image.fromarray(photo((30, 30))[:, :, 0]).save(src / "grey.png")
    (src / "bad.png").write_bytes(b"junk")
    make = functools.partial(_same_codec, tiny_codec)
    one = compress_folder(src, tmp_path / "one", make, progress=False)
    three = compress_folder(src, tmp_path / "three", make, progress=False, batch_size=3)
    assert (three.files, [f for f, _ in three.failed]) == (one.files, ["bad.png"]) == (6, ["bad.png"])
    assert _contents(tmp_path / "three") == _contents(tmp_path / "one")
    (tmp_path / "one" / "3.fae").write_bytes(b"FAE broken")
    back = [decompress_folder(tmp_path / "one", tmp_path / f"back{b}", make, progress=False, batch_size=b)
            for b in (1, 4)]
    assert [(s.files, [f for f, _ in s.failed]) for s in back] == [(5, ["3.fae"])] * 2
    assert _contents(tmp_path / "back4") == _contents(tmp_path / "back1")
    with pytest.raises(ValueError, match="does not combine with workers=2"):
        compress_folder(src, tmp_path / "x", make, workers=2, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        compress_folder(src, tmp_path / "x", make, batch_size=0, progress=False)
