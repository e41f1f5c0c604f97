"""Compressing a dataset into another kind of files: Parquet to WebDataset shards or to a folder,
shards to Parquet or to a folder (``fastae compress SRC DST --format KIND``).

The images are coded as in a same-kind run (the same .fae bytes); what the two kinds hold besides
them is mapped the way the tools that read both map it (Hugging Face ``datasets``, Ray Data's
``read_webdataset``):

- **Parquet -> shards**: one sample a row, in row order. Its key is the image path of the row
  without its suffix (the Hugging Face struct's ``path``) when every row has one, they are
  distinct and none has a dot in its stem; else the row number (``000000``, ``000001``, ...).
  Members: ``KEY.fae``, then ``KEY.COLUMN`` for every other column (bytes as they are, strings as
  UTF-8, numbers as their decimal text — the ``.cls`` convention —, anything else as JSON); a null
  cell writes no member.
- **Shards -> Parquet**: one row a sample (members grouped by key, the WebDataset way), in shard
  order: ``__key__``, an ``image`` column {bytes, path} (Hugging Face Image) holding the .fae of
  the sample's image member, one binary column per other member extension (``cls``, ``json``,
  ...; null where a sample lacks it; WebDataset members are untyped, so they stay bytes), and the
  ``fae_*`` columns. A sample holds one image in Parquet: a second image member is reported and
  left out (``--format webdataset`` keeps every member).
- **Parquet -> folder**: ``DST/NAME/KEY.fae`` (NAME: the Parquet file's name without ``.parquet``,
  KEY as above) and, when the file has other columns, ``DST/NAME/metadata.jsonl`` — one line
  ``{"file_name": "KEY.fae", COLUMN: value, ...}`` per image, the Hugging Face ImageFolder layout
  (bytes values as base64 text).
- **Shards -> folder**: ``DST/NAME/`` holds the shard's members as files (``KEY.fae``, ``KEY.cls``,
  ...), member paths kept.

Failures are reported as in a same-kind run (a Parquet row keeps its place with ``fae_error``; a
tar member or a Parquet row of a folder or shard output is left out). Each output file or folder
is written under a temporary name and renamed when complete.
"""

import base64
import io
import json
import os
import posixpath
import re
import tarfile

from fastae.codec.folder import FAE_SUFFIX, other_run
from fastae.datasets import parquet, webdataset

ROWS_PER_GROUP = 64
METADATA_FILE = "metadata.jsonl"
_KEY = re.compile(r"[^.]+")


def _row_keys(source, name, kind):
    """The sample key of every row of the Parquet file ``source`` (see the module docstring)."""
    n = source.metadata.num_rows
    numbers = [f"{i:0{max(6, len(str(max(n - 1, 0))))}d}" for i in range(n)]
    if kind != "struct" or n == 0:
        return numbers
    cells = source.read(columns=[f"{name}.path"]).column(name).to_pylist()
    keys = []
    for cell in cells:
        path = (cell or {}).get("path")
        if not path:
            return numbers
        path = path.replace("\\", "/")
        stem = posixpath.splitext(path)[0]
        parts = stem.split("/")
        if path.startswith("/") or ".." in parts or "" in parts or not _KEY.fullmatch(parts[-1]):
            return numbers
        keys.append(stem)
    return keys if len(set(keys)) == len(keys) else numbers


def _member_bytes(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return json.dumps(value).encode()
    if isinstance(value, (int, float)):
        return repr(value).encode()
    return json.dumps(value, default=str).encode()


def _json_value(value):
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    return value


def _rows(source, name, kind, columns):
    """``(row, image bytes or None, {column: value})`` of every row, one row group in memory."""
    row = 0
    for g in range(source.num_row_groups):
        table = source.read_row_group(g)
        cells = table.column(name).to_pylist()
        values = {c: table.column(c).to_pylist() for c in columns}
        for i, cell in enumerate(cells):
            data = cell if kind == "binary" or cell is None else cell.get("bytes")
            yield row, data, {c: values[c][i] for c in columns}
            row += 1


def _open_parquet(in_path, column):
    source = parquet._open(in_path)
    schema = source.schema_arrow
    name, kind = parquet.find_image_column(schema, column, in_path)
    present = [c for c in parquet.FAE_COLUMNS if c in schema.names]
    if present:
        raise ValueError(f"{in_path}: already has {', '.join(present)} columns: it was compressed by fastae")
    return source, name, kind, [c for c in schema.names if c != name]


def parquet_to_shard(codec, in_path, out_path, column=None):
    """Compress the Parquet file ``in_path`` into the WebDataset shard ``out_path``."""
    from fastae._io import atomic_path

    source, name, kind, others = _open_parquet(in_path, column)
    bad = [c for c in others if "/" in c or not c or c == FAE_SUFFIX[1:]]
    if bad:
        raise ValueError(f"{in_path}: column {bad[0]!r} cannot name a tar member extension (KEY.{bad[0]})")
    keys = _row_keys(source, name, kind)
    mtime = int(os.path.getmtime(in_path))
    stats = parquet._stats()
    with atomic_path(out_path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        def add(member, data):
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            out.addfile(info, io.BytesIO(data))

        for row, data, values in _rows(source, name, kind, others):
            key = keys[row]
            if data is not None:
                try:
                    add(key + FAE_SUFFIX, parquet.compress_image(codec, data, stats)[0])
                except Exception as e:  # noqa: BLE001 - the sample keeps its other members
                    stats["errors"].append({"row": row, "reason": f"{type(e).__name__}: {e}"})
            for c, value in values.items():
                if value is not None:
                    add(f"{key}.{c}", _member_bytes(value))
    return stats


def parquet_to_folder(codec, in_path, out_path, column=None):
    """Compress the Parquet file ``in_path`` into the new folder ``out_path`` (.fae files and, when
    there are other columns, ``metadata.jsonl``)."""
    from fastae._io import atomic_dir

    source, name, kind, others = _open_parquet(in_path, column)
    keys = _row_keys(source, name, kind)
    stats = parquet._stats()
    with atomic_dir(out_path) as tmp:
        lines = []
        for row, data, values in _rows(source, name, kind, others):
            if data is None:
                continue
            try:
                encoded = parquet.compress_image(codec, data, stats)[0]
            except Exception as e:  # noqa: BLE001 - the row is left out and reported
                stats["errors"].append({"row": row, "reason": f"{type(e).__name__}: {e}"})
                continue
            file_name = keys[row] + FAE_SUFFIX
            path = webdataset.member_path(tmp, file_name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(encoded)
            if others:
                line = {"file_name": file_name, **{c: _json_value(v) for c, v in values.items()}}
                lines.append(json.dumps(line, default=str))
        if lines:
            with open(os.path.join(tmp, METADATA_FILE), "w") as f:
                f.write("\n".join(lines) + "\n")
    return stats


def shard_to_folder(codec, in_path, out_path):
    """Compress the shard ``in_path`` into the new folder ``out_path``: its members as files."""
    return webdataset.compress_shard(codec, in_path, out_path, to_folder=True)


def _sample_key(name):
    """WebDataset's split of a member name into (key, extension): at the first dot of the base name."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext if dot else ""


def _samples(source):
    """``(key, [(member, data)])`` of every sample of the open shard, in order."""
    key, members = None, []
    for member in source:
        if not member.isfile():
            continue
        k, _ = _sample_key(member.name)
        if members and k != key:
            yield key, members
            members = []
        key = k
        members.append((member.name, source.extractfile(member).read()))
    if members:
        yield key, members


def shard_to_parquet(codec, in_path, out_path):
    """Compress the shard ``in_path`` into the Parquet file ``out_path`` (one row a sample)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fastae._io import atomic_path

    with webdataset._open(in_path) as source:
        try:
            extensions = []
            for member in source:  # headers only: the columns must be known before the first row
                if member.isfile() and not webdataset.is_image(member.name):
                    ext = _sample_key(member.name)[1]
                    if ext not in extensions:
                        extensions.append(ext)
        except tarfile.TarError as e:
            raise ValueError(f"damaged tar file ({e})") from None
    clash = [e for e in extensions if e in ("__key__", "image", *parquet.FAE_COLUMNS)]
    if clash:
        raise ValueError(f"{in_path}: members KEY.{clash[0]} would make a column named like one fastae writes")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field("__key__", pa.string()), pa.field("image", struct)] + [pa.field(e, pa.binary())
                                                                             for e in extensions] + parquet._fae_fields()
    features = {f.name: {"dtype": str(f.type), "_type": "Value"} for f in fields}  # every column: `datasets` reads them
    features["image"] = {"_type": "Image"}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode(),
                parquet.META_KEY: json.dumps({"column": "image", "model": codec.model_id, "hash": codec.hash.hex(),
                                              "quality": codec.quality}).encode()}
    schema = pa.schema(fields, metadata=metadata)
    stats = parquet._stats()
    with webdataset._open(in_path) as source, atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        batch, row = [], 0

        def flush():
            nonlocal batch, row
            cells = [sample["image"] for sample in batch]
            images, extra = parquet._compress_cells(codec, cells, "struct", row, stats)
            columns = [pa.array([s["key"] for s in batch], pa.string()), pa.array(images, type=struct)]
            columns += [pa.array([s["members"].get(e) for s in batch], pa.binary()) for e in extensions]
            writer.write_table(pa.Table.from_arrays(columns + extra, schema=schema))
            row += len(batch)
            batch = []

        try:
            for key, members in _samples(source):
                sample = {"key": key, "image": None, "members": {}}
                for member, data in members:
                    if not webdataset.is_image(member):
                        sample["members"][_sample_key(member)[1]] = data
                    elif sample["image"] is None:
                        sample["image"] = {"bytes": data, "path": member}
                    else:
                        stats["errors"].append({"member": member, "reason": (
                            f"a second image of sample {key!r}: a Parquet row holds one image "
                            f"(--format webdataset keeps every member)")})
                batch.append(sample)
                if len(batch) == ROWS_PER_GROUP:
                    flush()
        except tarfile.TarError as e:
            raise ValueError(f"damaged tar file ({e})") from None
        if batch or row == 0:
            flush()
    return stats


def check_existing_folder(path, codec):
    """Why the folder at ``path`` is not this run's output (None: it is, skip it): its first .fae
    file must come from this run's model and quality."""
    from fastae.codec.format import CodecError, read_header

    if not os.path.isdir(path):
        return f"{path} exists and is not a folder; --force replaces it"
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(FAE_SUFFIX):
                try:
                    with open(os.path.join(folder, name), "rb") as f:
                        header = read_header(f.read())
                except (CodecError, OSError) as e:
                    return f"{path} exists but holds an unreadable .fae file ({e}); --force replaces it"
                return other_run(path, header, codec)
    return None
