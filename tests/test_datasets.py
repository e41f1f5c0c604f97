"""fastae.datasets: Parquet files and WebDataset shards compressed and decompressed, by both engines.

The oracle of every compressed image is ``codec.compress`` of the same image file read through
``fastae.data.open_image`` (the input policy of files), and of every decoded one ``codec.decompress``.
"""

import functools
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from fastae import cli
from fastae.codec.format import read_header
from fastae.data.images import open_image
from fastae.datasets import ERRORS_FILE, compress_dataset, decompress_dataset, detect
from tests._codec import photo

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from fastae.datasets.parquet import image_bytes, write_images  # noqa: E402
from fastae.datasets.webdataset import write_shard  # noqa: E402


def _same(codec):
    return codec


def _factory(codec):
    """A picklable make_codec returning ``codec``."""
    return functools.partial(_same, codec)


def _images(n=4):
    """Bytes of ``n`` small image files of several sizes and formats (a JPEG with an EXIF rotation)."""
    out = []
    for i in range(n):
        rgb = photo((24 + 8 * i, 40))
        if i % 3 == 2:
            image = Image.fromarray(rgb)
            exif = image.getexif()
            exif[0x0112] = 6  # "rotate 90": the file reads 40 x (24 + 8i) upright
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", exif=exif)
            out.append(buffer.getvalue())
        else:
            out.append(image_bytes(rgb))
    return out


def _expected(codec, data):
    return codec.compress(open_image(data))


def test_parquet_round_trip(tiny_codec, tmp_path):
    images = _images(4)
    cells = images[:2] + [b"not an image", None] + images[2:]
    src = tmp_path / "train.parquet"
    write_images(src, [c for c in cells], label=list(range(6)), row_group_size=4,
                 names=[f"img{i}.jpg" for i in range(6)])
    # a null struct cell (row 3): rewrite the column with a null in it
    table = pq.read_table(src)
    structs = table.column("image").to_pylist()
    structs[3] = None
    table = table.set_column(0, "image", pa.array(structs, type=table.schema.field("image").type))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(src).metadata), src, row_group_size=4)

    summary = compress_dataset(src, tmp_path / "fae", make_codec=_factory(tiny_codec), progress=False)
    assert (summary.files, summary.images, summary.ok) == (1, 4, False)
    assert [w for w, _ in summary.failed] == ["train.parquet: row 2"]
    assert json.loads((tmp_path / "fae" / ERRORS_FILE).read_text())["row"] == 2

    out = pq.ParquetFile(tmp_path / "fae" / "train.parquet")
    assert [out.metadata.row_group(g).num_rows for g in range(out.num_row_groups)] == [4, 2]
    assert out.schema_arrow.metadata[b"huggingface"] == pq.read_schema(src).metadata[b"huggingface"]
    assert out.schema_arrow.field("image").type == table.schema.field("image").type
    rows = out.read().to_pylist()
    assert [r["label"] for r in rows] == list(range(6))
    for i, row in enumerate(rows):
        if i in (2, 3):
            assert row["fae_height"] is None and (row["image"] is None or row["image"]["bytes"] is None)
            continue
        assert row["image"]["bytes"] == _expected(tiny_codec, cells[i])
        assert row["image"]["path"] == f"img{i}.fae"
        upright = open_image(cells[i])
        assert (row["fae_width"], row["fae_height"]) == upright.size
        assert (row["fae_quality"], row["fae_model"], row["fae_error"]) == (tiny_codec.quality, "tiny", None)
    assert "not an image" in rows[2]["fae_error"] and rows[3]["fae_error"] is None and rows[3]["image"] is None

    back = decompress_dataset(tmp_path / "fae", tmp_path / "png", make_codec=_factory(tiny_codec), progress=False)
    assert (back.images, back.ok) == (4, True)
    restored = pq.read_table(tmp_path / "png" / "train.parquet")
    assert restored.schema == table.schema and restored.schema.metadata == table.schema.metadata
    for row, fae in zip(restored.to_pylist(), rows):
        if fae["fae_height"] is None:
            continue
        png = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        assert np.array_equal(np.atleast_3d(png), np.atleast_3d(tiny_codec.decompress(fae["image"]["bytes"])))
        assert row["image"]["path"].endswith(".png")


def test_parquet_binary_and_column_choice(tiny_codec, tmp_path):
    images = _images(2)
    src = tmp_path / "in"
    src.mkdir()
    write_images(src / "a.parquet", images, column="jpg", struct=False, caption=["x", "y"])
    summary = compress_dataset(src, tmp_path / "out", make_codec=_factory(tiny_codec), progress=False)
    assert summary.ok and summary.images == 2
    table = pq.read_table(tmp_path / "out" / "a.parquet")
    assert table.schema.field("jpg").type == pa.binary()
    assert table.column("jpg").to_pylist() == [_expected(tiny_codec, b) for b in images]
    assert table.column("caption").to_pylist() == ["x", "y"]

    two = tmp_path / "two.parquet"
    pq.write_table(pa.table({"left": pa.array(images, pa.binary()), "right": pa.array(images, pa.binary())}), two)
    with pytest.raises(ValueError, match=r"several image columns \(left, right\).*columns: left \(binary\)"):
        compress_dataset(two, tmp_path / "o2", make_codec=_factory(tiny_codec), progress=False)
    summary = compress_dataset(two, tmp_path / "o2", make_codec=_factory(tiny_codec), column="right", progress=False)
    out = pq.read_table(tmp_path / "o2" / "two.parquet")
    assert out.column("left").to_pylist() == images  # carried unchanged
    assert out.column("right").to_pylist() == [_expected(tiny_codec, b) for b in images]
    with pytest.raises(ValueError, match=r"no column 'pixels'; columns: left \(binary\), right \(binary\)"):
        compress_dataset(two, tmp_path / "o3", make_codec=_factory(tiny_codec), column="pixels", progress=False)
    assert not (tmp_path / "o3" / "two.parquet").exists()


def _members(path):
    with tarfile.open(path) as shard:
        return [(m.name, shard.extractfile(m).read()) for m in shard if m.isfile()]


def test_webdataset_round_trip(tiny_codec, tmp_path):
    images = _images(3)
    samples = [{"__key__": f"{i:06d}", "jpg": b, "cls": str(i).encode(), "json": b'{"i": %d}' % i}
               for i, b in enumerate(images)]
    samples[1]["jpg"] = b"\x89PNG broken"
    for s in range(2):
        write_shard(tmp_path / f"shard-{s:03d}.tar", samples[s:])
    pattern = str(tmp_path / "shard-{000..001}.tar")
    assert detect(pattern)[0] == "webdataset"
    summary = compress_dataset(pattern, tmp_path / "out", make_codec=_factory(tiny_codec), progress=False)
    assert (summary.files, summary.images) == (2, 3)
    assert sorted(w for w, _ in summary.failed) == ["shard-000.tar: member 000001.jpg",
                                                    "shard-001.tar: member 000001.jpg"]
    for s in range(2):
        before, after = _members(tmp_path / f"shard-{s:03d}.tar"), _members(tmp_path / "out" / f"shard-{s:03d}.tar")
        expected = []
        for name, data in before:
            if name.endswith(".jpg"):
                if name != "000001.jpg":
                    expected.append((name[:-4] + ".fae", _expected(tiny_codec, data)))
            else:
                expected.append((name, data))  # copied byte for byte, in order
        assert after == expected

    back = decompress_dataset(tmp_path / "out", tmp_path / "back", make_codec=_factory(tiny_codec), to="npy",
                              progress=False)
    assert back.ok and back.images == 3
    decoded = dict(_members(tmp_path / "back" / "shard-000.tar"))
    fae = dict(_members(tmp_path / "out" / "shard-000.tar"))
    array = np.load(io.BytesIO(decoded["000000.npy"]))
    assert np.array_equal(array, np.atleast_3d(tiny_codec.decompress(fae["000000.fae"])))
    assert decoded["000002.cls"] == b"2"


def test_bad_sources(tiny_codec, tmp_path):
    make = _factory(tiny_codec)
    with pytest.raises(ValueError, match="empty source"):
        (tmp_path / "empty").mkdir()
        compress_dataset(tmp_path / "empty", tmp_path / "o", make_codec=make, progress=False)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_images(mixed / "a.parquet", _images(1))
    write_shard(mixed / "b.tar", [{"__key__": "k", "png": _images(1)[0]}])
    with pytest.raises(ValueError, match=r"mixes formats \(1 parquet file, 1 webdataset file\)"):
        compress_dataset(mixed, tmp_path / "o", make_codec=make, progress=False)
    assert detect(mixed, input_format="parquet")[2] == [__import__("pathlib").Path("a.parquet")]
    with pytest.raises(ValueError, match="inside the source"):
        compress_dataset(mixed, mixed / "out", make_codec=make, input_format="parquet", progress=False)
    with pytest.raises(FileNotFoundError, match="1 of its 2 shards are missing"):
        compress_dataset(str(mixed / "{b,c}.tar"), tmp_path / "o", make_codec=make, progress=False)

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.tar").write_bytes(b"this is no tar" * 100)
    (bad / "y.tar").write_bytes(b"")
    write_shard(bad / "z.tar", [{"__key__": "k", "png": _images(1)[0]}])
    summary = compress_dataset(bad, tmp_path / "badout", make_codec=make, progress=False)
    assert summary.files == 1 and sorted(dict(summary.failed)) == ["x.tar", "y.tar"]
    assert all(reason.startswith("ValueError: not a tar file") for _, reason in summary.failed)
    assert sorted(os.listdir(tmp_path / "badout")) == [ERRORS_FILE, "z.tar"]
    pbad = tmp_path / "pbad"
    pbad.mkdir()
    (pbad / "c.parquet").write_bytes(b"PAR1 garbage PAR1")
    summary = compress_dataset(pbad, tmp_path / "pout", make_codec=make, progress=False)
    assert "not a readable Parquet file" in dict(summary.failed)["c.parquet"]
    assert os.listdir(tmp_path / "pout") == [ERRORS_FILE]


class _Interrupting:
    """A codec that stops the run (as Ctrl-C would) at its ``stop_at``-th image."""

    def __init__(self, codec, stop_at):
        self.codec, self.stop_at, self.calls = codec, stop_at, 0
        self.model_id, self.hash, self.quality = codec.model_id, codec.hash, codec.quality

    def compress(self, image):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.codec.compress(image)


def test_killed_run_resumes(tiny_codec, tmp_path):
    images = _images(2)
    for s in range(3):
        write_images(tmp_path / f"part-{s}.parquet", images)
    src, dst = tmp_path, tmp_path.parent / (tmp_path.name + "-out")
    interrupting = _Interrupting(tiny_codec, stop_at=4)  # in the second file
    with pytest.raises(KeyboardInterrupt):
        compress_dataset(src, dst, make_codec=lambda: interrupting, progress=False)
    assert os.listdir(dst) == ["part-0.parquet"]  # no partial file, under any name
    done = (dst / "part-0.parquet").stat().st_mtime_ns
    summary = compress_dataset(src, dst, make_codec=_factory(tiny_codec), progress=False)
    assert (summary.files, summary.skipped, summary.ok) == (2, 1, True)
    assert (dst / "part-0.parquet").stat().st_mtime_ns == done
    other = tiny_codec.with_quality(1)
    summary = compress_dataset(src, dst, make_codec=_factory(other), progress=False)
    assert len(summary.failed) == 3 and "exists from another run" in summary.failed[0][1]
    assert (dst / "part-0.parquet").stat().st_mtime_ns == done
    summary = compress_dataset(src, dst, make_codec=_factory(other), force=True, progress=False)
    assert summary.files == 3
    assert read_header(pq.read_table(dst / "part-2.parquet").column("image")[0].as_py()["bytes"]).quality == 1


def test_cli(tmp_path, capsys, monkeypatch):
    from fastae.codec.model_file import export_codec
    from tests._codec import tiny_model

    weights = export_codec(tiny_model("factorized"), tmp_path / "tiny.safetensors", model_id="tiny")
    src = tmp_path / "data.parquet"
    write_images(src, _images(2) + [b"junk"])
    base = ["--weights", str(weights), "--quality", "2", "--quiet"]
    assert cli.main(["compress", str(src), str(tmp_path / "fae.parquet"), *base]) == 1
    captured = capsys.readouterr()
    assert "compressed 2 images in 1 parquet file" in captured.out and "data.parquet: row 2" in captured.err
    assert pq.read_table(tmp_path / "fae.parquet").num_rows == 3
    assert cli.main(["compress", str(src), str(tmp_path / "x"), "--format", "webdataset", *base]) == 1
    assert "compressed 2 images in 1 webdataset file" in capsys.readouterr().out
    assert [m for m, _ in _members(tmp_path / "x" / "data.tar")] == ["0.fae", "1.fae"]  # keys from the paths
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)
    assert cli.main(["compress", str(src), str(tmp_path / "y"), *base]) == 1
    assert "pip install 'fastae[datasets]'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_writes_the_local_bytes(ray_cluster, tmp_path):
    from fastae.codec.api import load_codec
    from fastae.codec.model_file import export_codec
    from tests._codec import tiny_model

    weights = export_codec(tiny_model("factorized"), tmp_path / "tiny.safetensors", model_id="tiny")
    make = functools.partial(load_codec, quality=2, weights=weights)
    images = _images(3) + [b"junk"]
    (tmp_path / "pq").mkdir()
    (tmp_path / "wds").mkdir()
    (tmp_path / "img").mkdir()
    for s in range(2):
        write_images(tmp_path / "pq" / f"p{s}.parquet", images[s:])
        write_shard(tmp_path / "wds" / f"s{s}.tar", [{"__key__": f"k{i}", "png": b, "txt": b"t"}
                                                    for i, b in enumerate(images[s:])])
    for i, b in enumerate(images):
        (tmp_path / "img" / f"{i}.png").write_bytes(b)
    for kind, format in (("pq", None), ("wds", None), ("img", None), ("img", "parquet"), ("pq", "webdataset"),
                         ("wds", "parquet"), ("wds", "folder")):
        src, out = tmp_path / kind, f"{kind}-{format}"
        local = compress_dataset(src, tmp_path / "local" / out, make_codec=make, format=format, images_per_file=2,
                                 progress=False)
        ray = compress_dataset(src, tmp_path / "ray" / out, make_codec=make, format=format, images_per_file=2,
                               engine="ray", workers=2, batch_size=2, progress=False)
        assert (ray.files, ray.images, ray.failed) == (local.files, local.images, local.failed)
        names = sorted(p.relative_to(tmp_path / "local").as_posix() for p in (tmp_path / "local" / out).rglob("*"))
        assert names and names == sorted(p.relative_to(tmp_path / "ray").as_posix()
                                         for p in (tmp_path / "ray" / out).rglob("*"))
        for name in (n for n in names if (tmp_path / "local" / n).is_file()):
            assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name


def test_folder_packed_into_parquet_and_shards(tiny_codec, tmp_path):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    names = ["a.png", "b.png", "sub/c.jpg", "sub/d.png", "z.png"]
    for name, data in zip(names, _images(5)):
        (src / name).write_bytes(data)
    (src / "sub" / "d.png").write_bytes(b"broken")
    make = _factory(tiny_codec)
    summary = compress_dataset(src, tmp_path / "pq", make_codec=make, format="parquet", images_per_file=2,
                               progress=False)
    assert (summary.files, summary.images, [w for w, _ in summary.failed]) == (3, 4, ["part-00001.parquet: row 1"])
    assert sorted(os.listdir(tmp_path / "pq")) == [ERRORS_FILE, "part-00000.parquet", "part-00001.parquet",
                                                   "part-00002.parquet"]
    rows = [r for k in range(3) for r in pq.read_table(tmp_path / "pq" / f"part-{k:05d}.parquet").to_pylist()]
    assert [r["image"]["path"] for r in rows] == ["a.fae", "b.fae", "sub/c.fae", "sub/d.fae", "z.fae"]
    for name, row in zip(names, rows):
        if name == "sub/d.png":
            assert row["image"]["bytes"] is None and "not an image" in row["fae_error"]
        else:
            assert row["image"]["bytes"] == _expected(tiny_codec, (src / name).read_bytes())

    summary = compress_dataset(src, tmp_path / "wds", make_codec=make, format="webdataset", images_per_file=3,
                               progress=False)
    assert (summary.files, summary.images) == (2, 4)
    members = _members(tmp_path / "wds" / "shard-00000.tar") + _members(tmp_path / "wds" / "shard-00001.tar")
    assert [m for m, _ in members] == ["a.fae", "b.fae", "sub/c.fae", "z.fae"]
    assert members[2][1] == _expected(tiny_codec, (src / "sub" / "c.jpg").read_bytes())
    again = compress_dataset(src, tmp_path / "wds", make_codec=make, format="webdataset", images_per_file=3,
                             progress=False)
    assert (again.files, again.skipped) == (0, 2)


def test_parquet_converted_to_shards_and_folders(tiny_codec, tmp_path):
    images = _images(4)
    images[2] = b"not an image"
    names = ["cat/a.png", "cat/b.png", "dog/c.png", "dog/d.jpg"]
    write_images(tmp_path / "named.parquet", images, names=names, row_group_size=3,
                 label=[0, 1, 2, 3], caption=["x", None, "z", "w"])
    write_images(tmp_path / "plain.parquet", images[:2], struct=False, score=[0.5, 1.25])
    make = _factory(tiny_codec)
    summary = compress_dataset(tmp_path / "named.parquet", tmp_path / "named.tar", make_codec=make,
                               format="webdataset", progress=False)
    assert (summary.kind, summary.files, summary.images) == ("webdataset", 1, 3)
    assert [w for w, _ in summary.failed] == ["named.parquet: row 2"]
    expected = []
    for i, name in enumerate(names):  # keys from the struct's paths; the columns as members in order
        key = name.rsplit(".", 1)[0]
        if i != 2:
            expected.append((key + ".fae", _expected(tiny_codec, images[i])))
        expected.append((key + ".label", str(i).encode()))
        if i != 1:
            expected.append((key + ".caption", "xyzw"[i].encode()))
    assert _members(tmp_path / "named.tar") == expected

    summary = compress_dataset(tmp_path / "plain.parquet", tmp_path / "wds", make_codec=make, format="webdataset",
                               progress=False)
    assert summary.images == 2 and [m for m, _ in _members(tmp_path / "wds" / "plain.tar")] == [
        "000000.fae", "000000.score", "000001.fae", "000001.score"]  # no paths: row numbers
    assert _members(tmp_path / "wds" / "plain.tar")[3][1] == b"1.25"

    summary = compress_dataset(tmp_path / "named.parquet", tmp_path / "folder", make_codec=make, format="folder",
                               progress=False)
    assert (summary.kind, summary.files, summary.images) == ("folder", 1, 3)
    out = tmp_path / "folder" / "named"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "cat/a.fae", "cat/b.fae", "dog/d.fae", "metadata.jsonl"]
    assert (out / "dog" / "d.fae").read_bytes() == _expected(tiny_codec, images[3])
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert lines == [{"file_name": "cat/a.fae", "label": 0, "caption": "x"},
                     {"file_name": "cat/b.fae", "label": 1, "caption": None},
                     {"file_name": "dog/d.fae", "label": 3, "caption": "w"}]
    again = compress_dataset(tmp_path / "named.parquet", tmp_path / "folder", make_codec=make, format="folder",
                             progress=False)
    assert (again.files, again.skipped) == (0, 1)
    assert sorted(os.listdir(tmp_path / "folder")) == [ERRORS_FILE, "named"]  # no temporary left


def test_shards_converted_to_parquet_and_folders(tiny_codec, tmp_path):
    images = _images(3)
    samples = [{"__key__": f"s/{i:04d}", "jpg": b, "cls": str(i).encode()} for i, b in enumerate(images)]
    samples[1]["json"] = b'{"a": 1}'
    samples[2]["seg.png"] = images[0]  # a second image: kept by shards and folders, not by a Parquet row
    samples.append({"__key__": "s/0003", "cls": b"9"})  # no image
    write_shard(tmp_path / "in.tar", samples)
    make = _factory(tiny_codec)
    summary = compress_dataset(tmp_path / "in.tar", tmp_path / "out.parquet", make_codec=make, format="parquet",
                               progress=False)
    assert (summary.kind, summary.files, summary.images) == ("parquet", 1, 3)
    assert summary.failed == [("in.tar: member s/0002.seg.png", "a second image of sample 's/0002': a Parquet row "
                               "holds one image (--format webdataset keeps every member)")]
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["__key__", "image", "cls", "json", "fae_height", "fae_width", "fae_quality",
                                  "fae_model", "fae_error"]
    rows = table.to_pylist()
    assert [r["__key__"] for r in rows] == ["s/0000", "s/0001", "s/0002", "s/0003"]
    assert [r["cls"] for r in rows] == [b"0", b"1", b"2", b"9"]
    assert [r["json"] for r in rows] == [None, b'{"a": 1}', None, None]
    for i in range(3):
        assert rows[i]["image"] == {"bytes": _expected(tiny_codec, images[i]), "path": f"s/{i:04d}.fae"}
    assert rows[3]["image"] is None and rows[3]["fae_error"] is None
    back = decompress_dataset(tmp_path / "out.parquet", tmp_path / "back.parquet", make_codec=make, progress=False)
    assert back.ok and back.images == 3  # a converted file decodes like any fastae Parquet file

    summary = compress_dataset(tmp_path / "in.tar", tmp_path / "folder", make_codec=make, format="folder",
                               progress=False)
    assert summary.ok and summary.images == 4
    out = tmp_path / "folder" / "in"
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert sorted(files) == ["s/0000.cls", "s/0000.fae", "s/0001.cls", "s/0001.fae", "s/0001.json", "s/0002.cls",
                             "s/0002.fae", "s/0002.seg.fae", "s/0003.cls"]
    assert files["s/0002.seg.fae"] == _expected(tiny_codec, images[0]) and files["s/0001.json"] == b'{"a": 1}'

    evil = tmp_path / "evil"
    evil.mkdir()
    write_shard(evil / "e.tar", [{"__key__": "../x", "cls": b"1"}])
    summary = compress_dataset(evil, tmp_path / "evil-out", make_codec=make, format="folder", progress=False)
    assert [w for w, _ in summary.failed] == ["e.tar"] and "outside the output folder" in summary.failed[0][1]
    assert not (tmp_path / "x.cls").exists() and os.listdir(tmp_path / "evil-out") == [ERRORS_FILE]


def test_atomic_dir_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    from fastae._io import atomic_dir

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("half")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(target) == ["old.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert os.listdir(target) == ["old.txt"]
    assert os.listdir(tmp_path) == ["out"] and os.listdir(target) == ["new.txt"]
