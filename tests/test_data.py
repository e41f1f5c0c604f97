"""fastae.data: MNIST IDX reading on real t10k digits (tests/data/mnist), damaged files, image folders,
load_dataset."""

import gzip
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastae.data import NoImagesError, load_dataset, load_image_folder, load_mnist, read_idx, train_val_split
from tests._util import MNIST

IMAGES_GZ, LABELS_GZ = MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz"
N = 300  # digits in the fixture: the first 300 of t10k


@pytest.fixture(scope="module")
def t10k():
    return load_mnist(MNIST)


def _idx(magic: int, shape, payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape) + payload


# ---------------------------------------------------------------------------------------------
# MNIST


def test_t10k(t10k):
    images, labels = t10k
    assert images.shape == (N, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (N,) and labels.dtype == torch.int64
    assert labels[0] == 7 and labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert images.min() == 0 and images.max() == 255
    assert sorted(labels.unique().tolist()) == list(range(10))
    assert load_mnist(MNIST, which="test")[1].equal(labels)


def test_pair_and_unzipped_copy_read_the_same(t10k, tmp_path):
    for gz, name in ((IMAGES_GZ, "t10k-images-idx3-ubyte"), (LABELS_GZ, "t10k-labels-idx1-ubyte")):
        (tmp_path / name).write_bytes(gzip.decompress(gz.read_bytes()))
    images, labels = load_mnist(tmp_path)
    assert images.equal(t10k[0]) and labels.equal(t10k[1])
    pair = load_mnist((IMAGES_GZ, LABELS_GZ))
    assert pair[0].equal(t10k[0]) and pair[1].equal(t10k[1])


def test_gzip_told_by_magic_not_suffix(tmp_path):
    disguised, plain_gz = tmp_path / "labels.bin", tmp_path / "labels.gz"
    shutil.copy(LABELS_GZ, disguised)
    plain_gz.write_bytes(gzip.decompress(LABELS_GZ.read_bytes()))
    expected = read_idx(LABELS_GZ)
    assert np.array_equal(read_idx(disguised), expected) and np.array_equal(read_idx(plain_gz), expected)


def test_split():
    train, val = train_val_split(10000, 0.1, seed=0)
    assert len(train) == 9000 and len(val) == 1000 and train.dtype == val.dtype == torch.int64
    assert torch.cat([train, val]).sort().values.equal(torch.arange(10000))  # disjoint and complete
    again = train_val_split(10000, 0.1, seed=0)
    assert again[0].equal(train) and again[1].equal(val)
    assert not train_val_split(10000, 0.1, seed=1)[1].equal(val)
    assert [len(t) for t in train_val_split(5, 0.0)] == [5, 0]
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(10, bad)
    with pytest.raises(ValueError, match="non-negative int"):
        train_val_split(-1)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_damaged_files_raise_naming_the_file(tmp_path, compress):
    images = gzip.decompress(IMAGES_GZ.read_bytes())
    n, body = 100, images[16:16 + 100 * 784]
    cases = {
        "truncated": (_idx(0x803, (n, 28, 28), body[:-10]), "truncated"),
        "forged": (_idx(0x803, (2**31 - 1, 28, 28), body), "truncated"),  # must not allocate 1.6 TB
        "long": (_idx(0x803, (n, 28, 28), body + b"\0"), "longer than its header"),
        "bad_magic": (b"\x89PNG\r\n\x1a\n" + body, "not an IDX file"),
        "int_type": (_idx(0xC03, (n, 28, 28), body), "not supported"),
        "short_header": (b"\0\0\x08\x03\0\0", "truncated IDX header"),
        "empty": (b"", "not an IDX file"),
    }
    for name, (data, what) in cases.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if compress else data)
        with pytest.raises(ValueError, match=f"{name}.*{what}"):
            read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(IMAGES_GZ.read_bytes()[:2000])
    with pytest.raises(ValueError, match="cut.gz.*gzip"):
        read_idx(path)


def test_mismatched_pair_and_swapped_files(tmp_path):
    labels = tmp_path / "labels-100"
    labels.write_bytes(_idx(0x801, (100,), read_idx(LABELS_GZ)[:100].tobytes()))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz holds 300 images but .*labels-100 holds 100"):
        load_mnist((IMAGES_GZ, labels))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: expected images of shape \[n, rows, cols\]"):
        load_mnist((LABELS_GZ, IMAGES_GZ))


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[.gz\].*t10k-labels-idx1-ubyte\[.gz\]"):
        load_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")  # half a pair is not enough
    with pytest.raises(FileNotFoundError, match="no MNIST train files; looked for train-images"):
        load_mnist(tmp_path, which="train")
    with pytest.raises(ValueError, match="unknown which 'val'"):
        load_mnist(tmp_path, which="val")


# ---------------------------------------------------------------------------------------------
# image folders

GREY = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
RGB = np.stack([GREY, 255 - GREY, np.full_like(GREY, 7)], axis=-1)
DEEP = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365  # spans 0..64155 in 16 bits


@pytest.fixture
def image_folder(tmp_path):
    Image.fromarray(GREY).save(tmp_path / "a-grey.png")
    Image.fromarray(RGB).save(tmp_path / "b-rgb.png")
    (tmp_path / "c-notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    Image.fromarray(DEEP).save(tmp_path / "sub" / "deep16.png")
    assert Image.open(tmp_path / "sub" / "deep16.png").mode == "I;16"
    return tmp_path


def test_image_folder(image_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # c-notes.txt is no image file: left out without a word
        x = load_image_folder(image_folder)
    assert x.shape == (3, 3, 6, 8) and x.dtype == torch.uint8  # colour present: 3 channels
    assert all(x[0, c].numpy().tolist() == GREY.tolist() for c in range(3))
    assert np.array_equal(x[1].permute(1, 2, 0).numpy(), RGB)
    deep = np.round(DEEP / 257).astype(np.uint8)  # the nearest 8-bit value, as the codec codes it
    assert deep.max() == 250 and all(np.array_equal(x[2, c].numpy(), deep) for c in range(3))  # scaled, not clipped

    (image_folder / "d-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.warns(UserWarning, match=r"skipped 1 image files Pillow cannot read: .*d-broken.png"):
        grey = load_image_folder(image_folder, channels=1)
    assert grey.shape == (3, 1, 6, 8) and np.array_equal(grey[0, 0].numpy(), GREY)
    assert np.array_equal(grey[2, 0].numpy(), deep)
    assert np.array_equal(grey[1, 0].numpy(), np.asarray(Image.fromarray(RGB).convert("L")))


def test_grey_only_folder_defaults_to_one_channel(tmp_path):
    Image.fromarray(GREY).save(tmp_path / "g.png")
    Image.fromarray(DEEP).save(tmp_path / "d.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image_folder(tmp_path).shape == (2, 1, 6, 8)


def test_image_folder_size_and_crop(tmp_path):
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, :10, 0] = wide[:, 10:70, 1] = wide[:, 70:, 2] = 255  # red | green | blue: a square crop sees green only
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((30, 10), np.uint8)).save(tmp_path / "tall.png")
    with pytest.raises(ValueError, match=r"tall.png is 30x10, .*wide.png is 40x80"):
        load_image_folder(tmp_path)
    centre = load_image_folder(tmp_path, size=16).float()
    assert centre.shape == (2, 3, 16, 16)
    assert centre[1, 1].min() == 255 and centre[1, 0].max() == centre[1, 2].max() == 0
    stretched = load_image_folder(tmp_path, size=(8, 16), crop="resize").float()
    assert stretched.shape == (2, 3, 8, 16) and stretched[1, 0, :, 0].min() > 250  # red kept at the left
    for bad in (dict(size=0), dict(size=(4, 4, 4)), dict(size="big"), dict(channels=2), dict(crop="pad")):
        with pytest.raises(ValueError):
            load_image_folder(tmp_path, **bad)


def test_image_folder_without_images(tmp_path):
    with pytest.raises(NoImagesError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(NoImagesError, match="no images"):
        load_image_folder(tmp_path)
    (tmp_path / "x.jpg").write_text("hi")
    with pytest.warns(UserWarning, match="x.jpg"), pytest.raises(NoImagesError, match="no images"):
        load_image_folder(tmp_path)
    with pytest.raises(NotADirectoryError):
        load_image_folder(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# load_dataset


def test_load_dataset_mnist(t10k):
    x, labels = load_dataset(MNIST)
    assert x.shape == (N, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1 and labels.equal(t10k[1])
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), t10k[0])
    assert load_dataset((IMAGES_GZ, LABELS_GZ))[1].equal(labels)
    with pytest.raises(ValueError, match="28x28 grey"):
        load_dataset(MNIST, size=32)


def test_load_dataset_images(image_folder):
    x, labels = load_dataset(image_folder, channels=1)
    assert labels is None and x.shape == (3, 1, 6, 8) and x.dtype == torch.float32
    assert x.max() <= 1 and torch.equal(x[0, 0], torch.from_numpy(GREY).float() / 255)


def test_load_dataset_bad_paths(tmp_path):
    expected = r"expected MNIST IDX files \(train-images-idx3-ubyte\[.gz\] or t10k-…\) or a folder of images, found"
    with pytest.raises(ValueError, match=f"{expected} an empty folder"):
        load_dataset(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / ".hidden.png").write_text("left out")
    with pytest.raises(ValueError, match=f"{expected} 1 files, none an image: readme.txt in"):
        load_dataset(tmp_path)
    with pytest.raises(ValueError, match=f"{expected} the file .*readme.txt"):
        load_dataset(tmp_path / "readme.txt")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset(tmp_path / "missing")
