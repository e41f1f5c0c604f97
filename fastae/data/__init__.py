"""Data: the one image reader (which files of a folder are images, their pixels as viewers show
them), MNIST in IDX files, and datasets for the autoencoders.

    paths = list_images("../shared/data/kodak")                # sorted image files
    rgb = read_rgb(paths[0])                                   # uint8 [H, W, 3], EXIF-upright, sRGB
    x, labels = load_dataset("../shared/data/mnist")          # float32 [10000, 1, 28, 28] in [0, 1], int64 [10000]
    x, _ = load_dataset("../shared/data/kodak", size=256)      # float32 [24, 3, 256, 256], labels None
    train_idx, val_idx = train_val_split(len(x))
"""

import os
from pathlib import Path
from typing import Optional, Union

from torch import Tensor

from fastae.data.images import (IMAGE_EXTENSIONS, NoImagesError, list_images, load_image_folder, open_image, read_rgb,
                                walk)
from fastae.data.mnist import has_mnist_files, load_mnist, read_idx, train_val_split

__all__ = ["FaeDataset", "IMAGE_EXTENSIONS", "NoImagesError", "list_images", "load_dataset", "load_image_folder",
           "load_mnist", "open_image", "read_idx", "read_rgb", "train_val_split"]


def __getattr__(name):  # FaeDataset reads Parquet and tar indexes: imported when first used
    if name == "FaeDataset":
        from fastae.data.fae import FaeDataset

        return FaeDataset
    raise AttributeError(f"module 'fastae.data' has no attribute {name!r}")


_EXPECTED = "expected MNIST IDX files (train-images-idx3-ubyte[.gz] or t10k-…) or a folder of images"


def load_dataset(path: Union[str, os.PathLike, tuple], size=None,
                 channels: Optional[int] = None) -> tuple[Tensor, Optional[Tensor]]:
    """Load MNIST or a folder of images as float pixels in [0, 1].

    Args:
        path: a folder holding MNIST IDX files (see ``load_mnist``; the train split when present,
            else t10k), a pair ``(images_path, labels_path)`` of IDX files, or a folder of images
            (see ``load_image_folder``).
        size, channels: for image folders, as ``load_image_folder``. MNIST is returned as it is
            (28x28 grey), so these must be left None for it.

    Returns:
        ``(x, labels)``: x float32 ``[N, C, H, W]`` in [0, 1] (``[N, 1, 28, 28]`` for MNIST);
        labels int64 ``[N]`` for MNIST, None for an image folder.

    Raises:
        FileNotFoundError: path does not exist, or an MNIST folder lacks one file of its pair.
        ValueError: path is neither MNIST nor a folder of images; damaged files (see
            ``read_idx`` and ``load_image_folder``).
    """
    if isinstance(path, (tuple, list)) or (Path(path).is_dir() and has_mnist_files(path)):
        if size is not None or channels not in (None, 1):
            raise ValueError(f"load_dataset: {path} is MNIST, 28x28 grey; expected size=None and channels None or 1, "
                             f"got size={size!r}, channels={channels!r}")
        images, labels = load_mnist(path)
        return images.unsqueeze(1).float().div_(255), labels
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; {_EXPECTED}")
    if not path.is_dir():
        raise ValueError(f"{_EXPECTED}, found the file {path} "
                         f"(pass its folder, or an (images, labels) pair of IDX files)")
    try:
        images = load_image_folder(path, size=size, channels=channels)
    except NoImagesError:
        files = [(rel / name).as_posix() for rel, names, _ in walk(path) for name in names]
        found = "an empty folder"
        if files:
            found = f"{len(files)} files, none an image: {', '.join(files[:10])}{', …' if len(files) > 10 else ''}"
        raise ValueError(f"{_EXPECTED}, found {found} in {path}") from None
    return images.float().div_(255), None
