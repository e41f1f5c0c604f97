"""WebDataset tar shards: each image member becomes ``key.fae``, every other member is copied.

A shard is a tar file whose members are grouped into samples by key (``000123.jpg``,
``000123.cls``, ``000123.json``). Compressing a shard writes one shard of the same members in
the same order: an image member (a suffix of ``fastae.data.IMAGE_EXTENSIONS``) is replaced by the
.fae file of its image under the same name with the suffix ``.fae`` (``000123.fae``); every
other member is copied byte for byte with its tar header (name, mode, time, owner). An image
member that fails is left out and reported (member and reason), the sample's other members kept.
Decompressing does the reverse for ``.fae`` members (``key.png``, or ``key.npy``).
"""

import contextlib
import copy
import io
import os
import tarfile

from fastae.codec.folder import FAE_SUFFIX, decoded_file, other_run
from fastae.data.images import IMAGE_EXTENSIONS

SUFFIX = ".tar"


def _open(path):
    try:
        return tarfile.open(path, "r:*")
    except tarfile.TarError as e:
        raise ValueError(f"not a tar file ({e})") from None


def _rename(name, suffix):
    stem, _ = os.path.splitext(name)
    return stem + suffix


def member_path(folder, name):
    """Where the tar member ``name`` goes under ``folder``; ValueError for a name that would leave it."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts or not name.strip("/"):
        raise ValueError(f"member {name!r}: a path outside the output folder")
    return os.path.join(folder, *[p for p in parts if p not in ("", ".")])


class _FolderSink:
    """Writes the members of a shard as files under a folder (``key.fae``, ``key.cls``, ...)."""

    def __init__(self, folder):
        self.folder = folder

    def addfile(self, info, data=None):
        if info.isdir():
            os.makedirs(member_path(self.folder, info.name), exist_ok=True)
        elif info.isfile():
            path = member_path(self.folder, info.name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data.read())
            os.utime(path, (info.mtime, info.mtime))


@contextlib.contextmanager
def _sink(out_path, tar_format, to_folder):
    from fastae._io import atomic_dir, atomic_path

    if to_folder:
        with atomic_dir(out_path) as tmp:
            yield _FolderSink(tmp)
    else:
        with atomic_path(out_path) as tmp, tarfile.open(tmp, "w", format=tar_format) as out:
            yield out


def _run(in_path, out_path, is_input, convert, suffix, to_folder=False):
    stats = {"images": 0, "pixels": 0, "bytes_in": 0, "bytes_out": 0, "errors": []}
    with _open(in_path) as source, _sink(out_path, source.format, to_folder) as out:
        try:
            for member in source:
                if not member.isfile():
                    out.addfile(member)
                    continue
                data = source.extractfile(member).read()
                if not is_input(member.name):
                    out.addfile(member, io.BytesIO(data))
                    continue
                try:
                    converted, pixels = convert(data, member.name)
                except Exception as e:  # noqa: BLE001 - the member is left out and reported
                    stats["errors"].append({"member": member.name, "reason": f"{type(e).__name__}: {e}"})
                    continue
                info = copy.copy(member)
                info.name, info.size = _rename(member.name, suffix), len(converted)
                out.addfile(info, io.BytesIO(converted))
                stats["images"] += 1
                stats["pixels"] += pixels
                stats["bytes_in"] += len(data)
                stats["bytes_out"] += len(converted)
        except tarfile.TarError as e:
            raise ValueError(f"damaged tar file ({e})") from None
    return stats


def is_image(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def compress_shard(codec, in_path, out_path, to_folder=False):
    """Compress the image members of the shard ``in_path`` into the shard ``out_path`` (written
    under a temporary name, renamed when complete). Returns counts and the failed members.
    ``to_folder``: write the members as files of the new folder ``out_path`` instead."""
    from fastae.data.images import open_image

    def convert(data, name):
        image = open_image(data)
        return codec.compress(image), image.size[0] * image.size[1]

    return _run(in_path, out_path, is_image, convert, FAE_SUFFIX, to_folder)


def decompress_shard(codec, in_path, out_path, to="png"):
    """Decode the ``.fae`` members of the shard ``in_path`` into ``out_path`` (``key.png`` or ``key.npy``)."""
    return _run(in_path, out_path, lambda n: os.path.splitext(n)[1].lower() == FAE_SUFFIX,
                lambda data, name: decoded_file(codec, data, to), "." + to)


def pack_files(codec, files, out_path):
    """Compress the image files ``files`` (``[(relative name, path)]``) into one shard whose members
    are ``NAME.fae`` in order (the sample key is the relative name without its suffix)."""
    from fastae._io import atomic_path
    from fastae.data.images import open_image

    stats = {"images": 0, "pixels": 0, "bytes_in": 0, "bytes_out": 0, "errors": []}
    with atomic_path(out_path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        for rel, path in files:
            try:
                with open(path, "rb") as f:
                    data = f.read()
                image = open_image(data)
                converted = codec.compress(image)
            except Exception as e:  # noqa: BLE001 - the member is left out and reported
                stats["errors"].append({"member": rel, "reason": f"{type(e).__name__}: {e}"})
                continue
            info = tarfile.TarInfo(_rename(rel, FAE_SUFFIX))
            info.size, info.mtime, info.mode = len(converted), int(os.path.getmtime(path)), 0o644
            out.addfile(info, io.BytesIO(converted))
            stats["images"] += 1
            stats["pixels"] += image.size[0] * image.size[1]
            stats["bytes_in"] += len(data)
            stats["bytes_out"] += len(converted)
    return stats


def check_existing(path, codec):
    """Why the shard at ``path`` is not this run's output (None: it is, skip it): its first .fae
    member must come from this run's model and quality."""
    from fastae.codec.format import CodecError, read_header

    try:
        with _open(path) as shard:
            for member in shard:
                if member.isfile() and member.name.endswith(FAE_SUFFIX):
                    return other_run(path, read_header(shard.extractfile(member).read()), codec)
    except (ValueError, CodecError, tarfile.TarError, OSError) as e:
        return f"{path} exists but is not a readable shard of .fae files ({e}); --force replaces it"
    return None


def write_shard(path, samples):
    """Write a tar shard of ``samples``: a list of ``{"__key__": key, "ext": bytes, ...}`` (the
    WebDataset layout), members ``key.ext`` in order. Handy for examples and tests."""
    with tarfile.open(path, "w") as out:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                out.addfile(info, io.BytesIO(data))
    return path
