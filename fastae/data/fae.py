"""``FaeDataset``: a torch Dataset of compressed images, decoded where they are read.

    from torch.utils.data import DataLoader
    from fastae.data import FaeDataset
    ds = FaeDataset("train_fae")                     # a folder of .fae, .fae Parquet files or shards
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    image = ds[0]                                    # uint8 tensor [3, H, W] (grey: [1, H, W])

The source is what ``fastae compress`` writes: a folder of ``.fae`` files (sorted, recursive), a
Parquet file or folder of them (the .fae column that fastae recorded, or ``column``), or
WebDataset shards (a file, a folder or a brace pattern; every ``.fae`` member, in order). Only the
index is built in ``__init__`` (file paths, Parquet row counts, tar member offsets); items are
read and decoded in ``__getitem__``, so DataLoader workers each decode their own share, each
making its codec once (the shipped model the files name, or ``make_codec()``). Images of several
sizes are not collated: use ``batch_size=None``, a ``transform`` that crops, or a collate_fn.

With ``decode=False`` items are the .fae bytes, for decoding batches where the model runs fastest
(a GPU): the workers only read, and one codec decodes each collated batch at once.

    ds = FaeDataset("train_fae", decode=False)
    loader = DataLoader(ds, batch_size=64, collate_fn=list, num_workers=2)
    codec = fastae.load_codec(device="cuda")
    for files in loader:
        images = codec.decompress_many(files, output="tensor")  # batched syntheses, any sizes
"""

import tarfile
from pathlib import Path

import numpy as np
import torch

FAE_SUFFIX = ".fae"


class FaeDataset(torch.utils.data.Dataset):
    """Decoded images of a folder of .fae files, .fae Parquet files or WebDataset shards.

    Args:
        source: a folder, a .parquet or .tar file, or a brace pattern ``shards-{000..009}.tar``.
        column: the Parquet column of .fae bytes (default: the one fastae recorded).
        make_codec: a picklable zero-argument callable returning the codec to decode with (default:
            the shipped model each file names, ``fastae.pillow.codec_for``).
        transform: applied to each uint8 tensor [C, H, W].
        decode: False: items are the .fae bytes, undecoded (decode batches with
            ``Codec.decompress_many``); ``make_codec`` and ``transform`` then do not apply.
    """

    def __init__(self, source, column=None, make_codec=None, transform=None, decode: bool = True):
        from fastae.datasets import detect

        if not isinstance(decode, bool):
            raise TypeError(f"FaeDataset: decode must be True or False, got {decode!r}")
        if not decode and (make_codec is not None or transform is not None):
            raise ValueError("FaeDataset: decode=False yields the .fae bytes; make_codec and transform apply to "
                             "decoded images (decode the batches yourself, e.g. Codec.decompress_many)")
        kind, base, units = detect(source, decompress=True)
        self.kind, self.make_codec, self.transform, self.decode = kind, make_codec, transform, decode
        self._codec = None
        self._cache = (None, None)  # (Parquet file, row group) -> its .fae cells, in this process
        if kind == "folder":
            from fastae.data.images import walk

            self.items = [base / rel / name for rel, names, _ in walk(base) for name in names
                          if name.lower().endswith(FAE_SUFFIX)]
        elif kind == "parquet":
            self.items, self.columns = [], {}
            for rel in units:
                self._index_parquet(base / rel, column)
        else:
            self.items = []
            for rel in units:
                with tarfile.open(base / rel) as shard:
                    self.items += [(str(base / rel), m.offset_data, m.size) for m in shard
                                   if m.isfile() and m.name.lower().endswith(FAE_SUFFIX)]

    def _index_parquet(self, path, column):
        import pyarrow.parquet as pq

        from fastae.datasets.parquet import find_image_column, read_meta

        source = pq.ParquetFile(path)
        schema = source.schema_arrow
        name, kind = find_image_column(schema, column or read_meta(schema).get("column"), str(path))
        self.columns[str(path)] = (name, kind)
        for g in range(source.num_row_groups):
            self.items += [(str(path), g, i) for i in range(source.metadata.row_group(g).num_rows)]

    def __len__(self):
        return len(self.items)

    def __getstate__(self):  # a worker makes its own codec and cache
        return {**self.__dict__, "_codec": None, "_cache": (None, None)}

    def data(self, index) -> bytes:
        """The .fae bytes of item ``index`` (None for a null Parquet cell)."""
        item = self.items[index]
        if self.kind == "folder":
            return Path(item).read_bytes()
        if self.kind == "webdataset":
            path, offset, size = item
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(size)
        path, group, row = item
        if self._cache[0] != (path, group):
            import pyarrow.parquet as pq

            name, kind = self.columns[path]
            cells = pq.ParquetFile(path).read_row_group(group, columns=[name]).column(0).to_pylist()
            self._cache = ((path, group), [c if kind == "binary" or c is None else c.get("bytes") for c in cells])
        return self._cache[1][row]

    def __getitem__(self, index):
        data = self.data(index)
        if data is None:
            raise ValueError(f"item {index} ({self.items[index]}) holds no image (its compression failed)")
        if not self.decode:
            return data
        if self.make_codec is not None:
            if self._codec is None:
                self._codec = self.make_codec()
            array = self._codec.decompress(data)
        else:
            from fastae.pillow import decode

            array = decode(data)
        image = torch.from_numpy(np.ascontiguousarray(np.atleast_3d(array).transpose(2, 0, 1)))
        return self.transform(image) if self.transform is not None else image

    def __repr__(self):
        return f"FaeDataset({self.kind}, {len(self)} images{'' if self.decode else ', undecoded'})"


__all__ = ["FaeDataset"]
