"""fastae.pillow (.fae as a Pillow format) and fastae.data.FaeDataset in a DataLoader.

Oracle: ``codec.decompress`` of the same bytes, ``codec.compress`` of the same image."""

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image

import fastae  # noqa: F401 - registers the format
from fastae import pillow
from fastae.data import FaeDataset
from tests._codec import photo


def test_open_and_save(tiny_codec, tmp_path):
    pillow.add_codec(tiny_codec)
    rgb = photo((40, 56))
    data = tiny_codec.compress(rgb)
    (tmp_path / "x.fae").write_bytes(data)
    with Image.open(tmp_path / "x.fae") as im:
        assert (im.format, im.size, im.mode) == ("FAE", (56, 40), "RGB")
        assert im.get_format_mimetype() == "image/x-fae"
        assert im.info["fae_quality"] == tiny_codec.quality
        assert im._im is None  # the header only, until load()
        assert np.array_equal(np.asarray(im), tiny_codec.decompress(data))
    assert Image.registered_extensions()[".fae"] == "FAE"

    grey = Image.fromarray(rgb).convert("L")
    grey.save(tmp_path / "g.fae", codec=tiny_codec)
    assert (tmp_path / "g.fae").read_bytes() == tiny_codec.compress(grey)
    with Image.open(tmp_path / "g.fae") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im)[:, :, None], tiny_codec.decompress(
            (tmp_path / "g.fae").read_bytes()))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="FAE", codec=tiny_codec, quality=1)
    assert buffer.getvalue() == tiny_codec.with_quality(1).compress(rgb)


def test_damaged_file_and_unknown_model(tiny_codec):
    from fastae.codec import CodecError
    from fastae.codec.format import Header

    pillow.add_codec(tiny_codec)
    data = tiny_codec.compress(photo((16, 16)))
    with Image.open(io.BytesIO(data[:-4] + b"\0\0\0\0")) as im:  # the header reads, the CRC fails on load
        assert im.size == (16, 16)
        with pytest.raises(CodecError, match="CRC mismatch"):
            im.load()
    with pytest.raises(Image.UnidentifiedImageError):  # a header cut short is not a .fae image
        Image.open(io.BytesIO(data[:10]))
    with pytest.raises(CodecError, match="'nobody'.*not shipped"):
        pillow.codec_for(Header("nobody", b"\x01" * 8, 1, 1, 16, 8, 8, 3, 8, (), (1,)))


def _same(codec):
    return codec


@pytest.mark.parametrize("tiny_codec", ["factorized"], indirect=True)  # the loader is the subject, not the model
@pytest.mark.parametrize("kind", ["folder", "parquet", "webdataset"])
def test_fae_dataset_in_a_dataloader(tiny_codec, tmp_path, kind):
    pytest.importorskip("pyarrow")
    from fastae.datasets import compress_dataset
    from fastae.datasets.parquet import image_bytes, write_images
    from fastae.datasets.webdataset import write_shard

    images = [image_bytes(photo((24, 32 + 8 * i))) for i in range(5)]
    src = tmp_path / "src"
    src.mkdir()
    if kind == "folder":
        for i, b in enumerate(images):
            (src / f"{i}.png").write_bytes(b)
    elif kind == "parquet":
        write_images(src / "a.parquet", images[:3], row_group_size=2)
        write_images(src / "b.parquet", images[3:])
    else:
        write_shard(src / "a.tar", [{"__key__": str(i), "png": b, "cls": b"1"} for i, b in enumerate(images[:2])])
        write_shard(src / "b.tar", [{"__key__": str(i), "png": b} for i, b in enumerate(images[2:], 2)])
    make = functools.partial(_same, tiny_codec)
    assert compress_dataset(src, tmp_path / "fae", make_codec=make, progress=False).images == 5
    ds = FaeDataset(tmp_path / "fae", make_codec=make)
    assert len(ds) == 5
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = list(loader)
    for i, image in enumerate(got):
        expected = tiny_codec.decompress(tiny_codec.compress(Image.open(io.BytesIO(images[i]))))
        assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))
    # decode=False: the workers read the bytes, one codec decodes each collated batch (a GPU's way)
    raw = FaeDataset(tmp_path / "fae", decode=False)
    assert raw[0] == ds.data(0) and "undecoded" in repr(raw)
    batches = list(torch.utils.data.DataLoader(raw, batch_size=3, collate_fn=list, num_workers=2))
    assert [len(files) for files in batches] == [3, 2] and all(isinstance(f, bytes) for f in batches[0])
    decoded = [x for files in batches for x in tiny_codec.decompress_many(files, output="tensor")]
    assert len(decoded) == 5 and all(torch.equal(a, b) for a, b in zip(decoded, got))


def test_fae_dataset_refuses_decode_options_without_decoding(tmp_path):
    (tmp_path / "a.fae").write_bytes(b"")
    with pytest.raises(ValueError, match="decode=False yields the .fae bytes"):
        FaeDataset(tmp_path, decode=False, transform=lambda x: x)
    with pytest.raises(TypeError, match="decode must be True or False, got 'no'"):
        FaeDataset(tmp_path, decode="no")


@pytest.mark.parametrize("tiny_codec", ["factorized"], indirect=True)
def test_webdataset_decoder(tiny_codec, tmp_path):
    from fastae.datasets.webdataset import write_shard

    pillow.add_codec(tiny_codec)
    data = tiny_codec.compress(photo((24, 40)))
    expected = torch.from_numpy(tiny_codec.decompress(data)).permute(2, 0, 1)
    assert torch.equal(pillow.webdataset_decoder("fae", data), expected)
    assert pillow.webdataset_decoder("cls", b"1") is None
    wds = pytest.importorskip("webdataset")
    write_shard(tmp_path / "s.tar", [{"__key__": "k0", "fae": data, "cls": b"3"}])
    (sample,) = list(wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False)
                     .decode(pillow.webdataset_decoder, "torch"))
    assert torch.equal(sample["fae"], expected) and sample["cls"] == 3
