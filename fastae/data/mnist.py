"""MNIST in its original IDX format, read with numpy (no torchvision).

    images, labels = load_mnist("../shared/data/mnist")   # uint8 [10000, 28, 28], int64 [10000]
    train_idx, val_idx = train_val_split(len(images), val_fraction=0.1)
"""

import gzip
import math
import numbers
import os
import zlib
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor

PathLike = Union[str, os.PathLike]

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08  # IDX element type of MNIST's images and labels
# Standard file names per split; each may also carry a .gz suffix.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or not (told by its magic bytes, not its suffix).

    Args:
        path: an IDX file: magic ``0x00000803`` for images, ``0x00000801`` for labels (in general
            ``0x000008nn``: unsigned bytes in ``nn`` dimensions), big-endian uint32 sizes, then the data.

    Returns:
        A writable uint8 array of the header's shape: ``[n, rows, cols]`` for images, ``[n]`` for labels.

    Raises:
        ValueError: naming the file, when it is not IDX, holds another element type, is truncated
            or corrupt, or its size disagrees with its header.
    """
    data = Path(path).read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: truncated or corrupt gzip stream ({e})") from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(f"{path}: not an IDX file: starts with {data[:4].hex() or 'nothing'}, expected "
                         f"00000803 (images) or 00000801 (labels)")
    dtype, ndim = data[2], data[3]
    if dtype != _UBYTE or ndim == 0:
        raise ValueError(f"{path}: IDX magic {data[:4].hex()} not supported; expected unsigned bytes (type 08) "
                         f"in at least one dimension, e.g. 00000803 (images) or 00000801 (labels)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header: {len(data)} bytes, expected {header} for {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    # Checked before anything is allocated from the header, so a forged size cannot ask for more than the file holds.
    expected = math.prod(shape)
    if len(data) - header != expected:
        state = "truncated" if len(data) - header < expected else "longer than its header says"
        raise ValueError(f"{path}: {state}: header shape {list(shape)} needs {expected} data bytes, "
                         f"found {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()


def _find(folder: Path, name: str):
    """folder/name or folder/name.gz, whichever is a file, else None."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _mnist_files(folder: Path, which: str):
    """The (images, labels) paths of the chosen split in folder; FileNotFoundError listing the names looked for."""
    splits = ("train", "test") if which == "auto" else (which,)
    for split in splits:
        pair = [_find(folder, name) for name in FILES[split]]
        if all(pair):
            return tuple(pair)
    names = ", ".join(f"{name}[.gz]" for split in splits for name in FILES[split])
    raise FileNotFoundError(f"{folder}: no MNIST {'files' if which == 'auto' else which + ' files'}; "
                            f"looked for {names}")


def has_mnist_files(folder: PathLike) -> bool:
    """Whether folder holds any of the standard MNIST file names (with or without .gz)."""
    folder = Path(folder)
    return any(_find(folder, name) for names in FILES.values() for name in names)


def load_mnist(path: Union[PathLike, tuple], which: str = "auto") -> tuple[Tensor, Tensor]:
    """Load MNIST (or any dataset in its IDX layout, e.g. Fashion-MNIST).

    Args:
        path: a folder holding the standard names (``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``,
            each optionally ``.gz``), or a pair ``(images_path, labels_path)``.
        which: for a folder, ``"train"``, ``"test"`` (the t10k files) or ``"auto"``: the train files
            when both are present, else the t10k files.

    Returns:
        ``(images, labels)``: uint8 ``[N, rows, cols]`` (``[N, 28, 28]`` for MNIST) and int64 ``[N]``.

    Raises:
        FileNotFoundError: a folder without the chosen files (the message lists the names looked for).
        ValueError: a bad ``which``, a file that is not IDX or is damaged (see ``read_idx``), images
            that are not 3-D, labels that are not 1-D, or image and label counts that differ.
    """
    if isinstance(path, (tuple, list)):
        if len(path) != 2:
            raise ValueError(f"load_mnist: expected a folder or a pair (images_path, labels_path), got {path!r}")
        images_path, labels_path = map(Path, path)
    else:
        if which not in ("auto", *FILES):
            raise ValueError(f"load_mnist: unknown which {which!r}; expected one of ('auto', 'train', 'test')")
        images_path, labels_path = _mnist_files(Path(path), which)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise ValueError(f"{images_path}: expected images of shape [n, rows, cols] (magic 00000803), "
                         f"got shape {list(images.shape)}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected labels of shape [n] (magic 00000801), "
                         f"got shape {list(labels.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def train_val_split(n: int, val_fraction: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` by a seeded random permutation: the same n, fraction and seed give the same split.

    Returns:
        ``(train_idx, val_idx)``: int64 ``[n - k]`` and ``[k]`` with ``k = round(n * val_fraction)``,
        disjoint, together ``range(n)``, in permuted order.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"train_val_split: expected n a non-negative int, got {n!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"train_val_split: expected val_fraction in [0, 1), got {val_fraction!r}")
    perm = torch.randperm(int(n), generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:], perm[:n_val]
