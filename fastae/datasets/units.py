"""The work on one input file of a dataset run, as the engines call it: ``task(codec, in_path,
out_path, ...) -> (stats,)`` (module-level functions, so they pickle to worker processes and Ray actors)."""

from fastae.datasets import convert, parquet, webdataset


def parquet_compress(codec, in_path, out_path, column=None):
    return (parquet.compress_file(codec, in_path, out_path, column),)


def parquet_decompress(codec, in_path, out_path, column=None, to="png"):
    return (parquet.decompress_file(codec, in_path, out_path, column, to),)


def shard_compress(codec, in_path, out_path):
    return (webdataset.compress_shard(codec, in_path, out_path),)


def shard_decompress(codec, in_path, out_path, to="png"):
    return (webdataset.decompress_shard(codec, in_path, out_path, to),)


def pack(codec, in_path, out_path, format):
    """``in_path``: the JSON list of ``[relative name, path]`` of the images going into one file."""
    import json

    files = [tuple(f) for f in json.loads(in_path)]
    module = parquet if format == "parquet" else webdataset
    return (module.pack_files(codec, files, out_path),)


def convert_unit(codec, in_path, out_path, kind, out_kind, column=None):
    """Compress one Parquet file or shard into another kind of output (fastae.datasets.convert)."""
    if kind == "parquet":
        function = convert.parquet_to_shard if out_kind == "webdataset" else convert.parquet_to_folder
        return (function(codec, in_path, out_path, column),)
    function = convert.shard_to_parquet if out_kind == "parquet" else convert.shard_to_folder
    return (function(codec, in_path, out_path),)
