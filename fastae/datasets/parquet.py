"""Parquet files with an image column: compress each cell to .fae bytes, and back.

The image column is binary (the bytes of an image file) or the Hugging Face ``datasets`` Image
struct ``{bytes, path}``. It is the column named by ``column``, else the only one of those types
whose name is a usual image name (``image``, ``img``, ``jpg``, ``png``, ...), else the only column
of those types. Every other column is carried unchanged; the schema's metadata (which tells
``datasets`` that the column is an Image feature) is kept, with a ``fastae`` entry added that
records the column, the model and the quality. Rows keep their order and row groups their sizes:
the file is read and written one row group at a time, so memory holds one row group.

Compressing adds ``fae_height``, ``fae_width`` (int32), ``fae_quality`` (int16), ``fae_model``
and ``fae_error`` (strings). A cell whose image fails keeps its row with a null image and the
reason in ``fae_error``; a null cell stays null. Decompressing turns the .fae cells into PNG (or
.npy) bytes, the struct's path into ``NAME.png``, and drops the ``fae_*`` columns and the
``fastae`` metadata entry, giving the input's schema back.
"""

import io
import json
import os

from fastae.codec.folder import FAE_SUFFIX, decoded_file

SUFFIX = ".parquet"
META_KEY = b"fastae"
_NAMES = ("image", "img", "images", "picture", "photo", "jpg", "jpeg", "png", "webp")
FAE_COLUMNS = ("fae_height", "fae_width", "fae_quality", "fae_model", "fae_error")


def _pa():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _kind(field):
    """"binary", "struct" ({bytes, path}) or None for a column that cannot hold image bytes."""
    pa, _ = _pa()
    t = field.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_struct(t):
        names = {t.field(i).name: t.field(i).type for i in range(t.num_fields)}
        if "bytes" in names and (pa.types.is_binary(names["bytes"]) or pa.types.is_large_binary(names["bytes"])):
            return "struct"
    return None


def _describe(schema):
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


def find_image_column(schema, column=None, where=""):
    """``(name, kind)`` of the image column of ``schema`` (see the module docstring); ValueError
    naming the columns found when there is none, or more than one candidate and no ``column``."""
    where = f"{where}: " if where else ""
    if column is not None:
        if column not in schema.names:
            raise ValueError(f"{where}no column {column!r}; columns: {_describe(schema)}")
        kind = _kind(schema.field(column))
        if kind is None:
            raise ValueError(f"{where}column {column!r} is {schema.field(column).type}; expected binary image bytes "
                             f"or a struct {{bytes, path}} (Hugging Face Image)")
        return column, kind
    candidates = [f.name for f in schema if _kind(f)]
    named = [n for n in candidates if n.lower() in _NAMES]
    chosen = named if named else candidates
    if len(chosen) != 1:
        what = "no column of image bytes" if not chosen else f"several image columns ({', '.join(chosen)})"
        raise ValueError(f"{where}{what}: expected one binary or {{bytes, path}} column, or --column NAME; "
                         f"columns: {_describe(schema)}")
    return chosen[0], _kind(schema.field(chosen[0]))


def read_meta(schema):
    """What fastae recorded in a Parquet schema's metadata (``{}`` if nothing)."""
    raw = (schema.metadata or {}).get(META_KEY)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _open(path):
    _, pq = _pa()
    import pyarrow as pa

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"not a readable Parquet file ({e})") from None


def _with_suffix(path, suffix):
    if path is None:
        return None
    stem, _ = os.path.splitext(path)
    return stem + suffix


def compress_file(codec, in_path, out_path, column=None):
    """Compress the image column of the Parquet file ``in_path`` into ``out_path`` (written under
    a temporary name, renamed when complete). Returns a dict of counts and the failed cells."""
    pa, pq = _pa()
    from fastae._io import atomic_path

    source = _open(in_path)
    schema = source.schema_arrow
    name, kind = find_image_column(schema, column, in_path)
    present = [c for c in FAE_COLUMNS if c in schema.names]
    if present:
        raise ValueError(f"{in_path}: already has {', '.join(present)} columns: it was compressed by fastae")
    index = schema.get_field_index(name)
    metadata = dict(schema.metadata or {})
    metadata[META_KEY] = json.dumps({"column": name, "model": codec.model_id, "hash": codec.hash.hex(),
                                     "quality": codec.quality}).encode()
    out_schema = pa.schema(list(schema) + _fae_fields(), metadata=metadata)
    stats = _stats()
    row = 0
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, out_schema) as writer:
            for g in range(source.num_row_groups):
                table = source.read_row_group(g)
                images, extra = _compress_cells(codec, table.column(name).to_pylist(), kind, row, stats)
                row += len(table)
                columns = list(table.columns)
                columns[index] = pa.array(images, type=schema.field(index).type)
                writer.write_table(pa.Table.from_arrays(columns + extra, schema=out_schema),
                                   row_group_size=max(len(table), 1))
    return stats


def _stats():
    return {"images": 0, "pixels": 0, "bytes_in": 0, "bytes_out": 0, "errors": []}


def _fae_fields():
    pa, _ = _pa()
    return [pa.field("fae_height", pa.int32()), pa.field("fae_width", pa.int32()), pa.field("fae_quality", pa.int16()),
            pa.field("fae_model", pa.string()), pa.field("fae_error", pa.string())]


def _compress_cells(codec, cells, kind, first_row, stats):
    """The compressed cells of ``cells`` (binary or {bytes, path} structs) and the arrays of the
    ``fae_*`` columns; failures go to ``stats["errors"]`` with their row number."""
    pa, _ = _pa()
    fields = _fae_fields()
    images, extra = [], [[] for _ in fields]
    for row, cell in enumerate(cells, first_row):
        data = cell if kind == "binary" or cell is None else cell.get("bytes")
        out, info = None, (None, None, None, None, None)
        if cell is not None and data is None:
            info = (None, None, None, None, "the cell has a path but no image bytes")
        elif data is not None:
            try:
                out, (width, height) = compress_image(codec, data, stats)
                info = (height, width, codec.quality, codec.model_id, None)
            except Exception as e:  # noqa: BLE001 - the row keeps its place, the reason is kept
                info = (None, None, None, None, f"{type(e).__name__}: {e}")
        if info[4] is not None:
            stats["errors"].append({"row": row, "reason": info[4]})
        if kind == "struct" and cell is not None:
            out = dict(cell, bytes=out, path=_with_suffix(cell.get("path"), FAE_SUFFIX))
        images.append(out)
        for values, v in zip(extra, info):
            values.append(v)
    return images, [pa.array(values, type=f.type) for values, f in zip(extra, fields)]


def compress_image(codec, data, stats):
    """``(.fae bytes, (width, height))`` of the image file bytes ``data``, read as files are
    (fastae.data.open_image), counted in ``stats``."""
    from fastae.data.images import open_image

    image = open_image(data)
    out = codec.compress(image)
    width, height = image.size
    stats["images"] += 1
    stats["pixels"] += width * height
    stats["bytes_in"] += len(data)
    stats["bytes_out"] += len(out)
    return out, image.size


def pack_files(codec, files, out_path, rows_per_group=64):
    """Compress the image files ``files`` (``[(relative name, path)]``) into one Parquet file in the
    Hugging Face layout: an ``image`` column {bytes, path} (path: the relative name with ``.fae``)
    and the ``fae_*`` columns, one row per file in order."""
    pa, pq = _pa()
    from fastae._io import atomic_path

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    metadata = {b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}).encode(),
                META_KEY: json.dumps({"column": "image", "model": codec.model_id, "hash": codec.hash.hex(),
                                      "quality": codec.quality}).encode()}
    schema = pa.schema([pa.field("image", struct)] + _fae_fields(), metadata=metadata)
    stats = _stats()
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for start in range(0, len(files), rows_per_group):
                part = files[start:start + rows_per_group]
                cells = []
                for rel, path in part:
                    with open(path, "rb") as f:
                        cells.append({"bytes": f.read(), "path": rel})
                images, extra = _compress_cells(codec, cells, "struct", start, stats)
                writer.write_table(pa.Table.from_arrays([pa.array(images, type=struct)] + extra, schema=schema))
    return stats


def decompress_file(codec, in_path, out_path, column=None, to="png"):
    """Decode the .fae column of ``in_path`` (written by :func:`compress_file`) into ``out_path``:
    PNG (or .npy) bytes, the ``fae_*`` columns dropped. Returns counts and the failed cells."""
    pa, pq = _pa()
    from fastae._io import atomic_path

    source = _open(in_path)
    schema = source.schema_arrow
    column = column or read_meta(schema).get("column")
    name, kind = find_image_column(schema, column, in_path)
    index = schema.get_field_index(name)
    keep = [i for i, f in enumerate(schema) if f.name not in FAE_COLUMNS]
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k != META_KEY}
    out_schema = pa.schema([schema.field(i) for i in keep], metadata=metadata or None)
    stats = _stats()
    row = 0
    with atomic_path(out_path) as tmp:
        with pq.ParquetWriter(tmp, out_schema) as writer:
            for g in range(source.num_row_groups):
                table = source.read_row_group(g)
                images = []
                for cell in table.column(name).to_pylist():
                    data = cell if kind == "binary" or cell is None else cell.get("bytes")
                    out = None
                    if data is not None:
                        try:
                            out, pixels = decoded_file(codec, data, to)
                            stats["images"] += 1
                            stats["pixels"] += pixels
                            stats["bytes_in"] += len(data)
                            stats["bytes_out"] += len(out)
                        except Exception as e:  # noqa: BLE001
                            stats["errors"].append({"row": row, "reason": f"{type(e).__name__}: {e}"})
                    if kind == "struct" and cell is not None:
                        out = dict(cell, bytes=out, path=_with_suffix(cell.get("path"), "." + to))
                    images.append(out)
                    row += 1
                columns = [table.column(i) for i in keep]
                columns[keep.index(index)] = pa.array(images, type=schema.field(index).type)
                writer.write_table(pa.Table.from_arrays(columns, schema=out_schema), row_group_size=max(len(table), 1))
    return stats


def check_existing(path, codec):
    """Why the Parquet file at ``path`` is not this run's output (None: it is, skip it)."""
    try:
        meta = read_meta(_open(path).schema_arrow)
    except ValueError as e:
        return f"{path} exists but is not a readable Parquet file ({e}); --force replaces it"
    if (meta.get("model"), meta.get("hash"), meta.get("quality")) != (codec.model_id, codec.hash.hex(), codec.quality):
        return (f"{path} exists from another run (model {meta.get('model')}, quality {meta.get('quality')}; this run: "
                f"model {codec.model_id}, quality {codec.quality}); --force replaces it")
    return None


def write_images(path, images, column="image", struct=True, names=None, row_group_size=None, **columns):
    """Write a small Parquet file of ``images`` (bytes of image files) in the Hugging Face layout
    (``struct``: ``{bytes, path}`` with ``names``, plus the ``datasets`` Image feature in the
    metadata) or as plain binary, with other ``columns`` (lists of the same length) beside it.
    Handy for examples and tests."""
    pa, pq = _pa()

    if struct:
        names = names or [f"{i}.png" for i in range(len(images))]
        cells = pa.array([{"bytes": b, "path": n} for b, n in zip(images, names)],
                         type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        cells = pa.array(images, type=pa.binary())
    table = pa.table({column: cells, **columns})
    if struct:
        features = {column: {"_type": "Image"}}
        features.update({k: {"dtype": str(table.schema.field(k).type), "_type": "Value"} for k in columns})
        table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def image_bytes(array, format="PNG"):
    """The bytes of an image file of the uint8 array ``array`` (H x W x 3 or H x W)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()
