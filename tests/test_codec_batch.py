"""Batched compression and decompression of images of mixed sizes (bucketed by padded size): the
same files and the same pixels as one image at a time."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastae.codec.format import CodecError
from tests._codec import photo


def _images():
    """Sizes in three buckets of the hyperprior's stride 64 (40x56 and 64x64 share one; 33x70 and
    30x100 share another), a grey image and a PIL image among them."""
    grey = Image.fromarray(photo((40, 60))[:, :, 0])
    return [photo((40, 56)), photo((64, 64))[::-1].copy(), photo((33, 70)), Image.fromarray(photo((30, 100))),
            grey, photo((100, 20))]


@pytest.mark.parametrize("batch_size", [None, 2])
def test_mixed_sizes_give_the_files_and_pixels_of_one_at_a_time(tiny_codec, batch_size):
    images = _images()
    files = tiny_codec.compress_batch(images, batch_size=batch_size)
    assert files == [tiny_codec.compress(image) for image in images]
    decoded = tiny_codec.decompress_many(files, batch_size=batch_size)
    for data, got in zip(files, decoded):
        assert np.array_equal(got, tiny_codec.decompress(data))
    assert decoded[4].shape == (40, 60, 1)  # grey comes back grey, as from decompress
    tensors = tiny_codec.decompress_many(files[:2], output="tensor")
    assert torch.equal(tensors[1], tiny_codec.decompress(files[1], output="tensor"))


def test_a_tensor_batch_in_chunks(tiny_codec):
    batch = torch.stack([torch.from_numpy(photo((32, 48))).permute(2, 0, 1)] * 3)
    batch[1] = batch[1].flip(1)
    assert tiny_codec.compress_batch(batch, batch_size=2) == tiny_codec.compress_batch(batch)


def test_mixed_qualities_decode_in_one_call(tiny_codec):
    files = [tiny_codec.compress(photo((40, 56))), tiny_codec.with_quality(1).compress(photo((40, 56)))]
    for data, got in zip(files, tiny_codec.decompress_many(files)):
        assert np.array_equal(got, tiny_codec.decompress(data))


def test_bad_batches_are_named(tiny_codec):
    with pytest.raises(ValueError, match="batch_size must be a positive integer or None, got 0"):
        tiny_codec.compress_batch([photo((8, 8))], batch_size=0)
    with pytest.raises(ValueError, match="got True"):
        tiny_codec.decompress_many([], batch_size=True)
    with pytest.raises(TypeError, match="compress takes one image"):
        tiny_codec.compress_batch(photo((8, 8)))
    with pytest.raises(TypeError, match="decompress reads one file"):
        tiny_codec.decompress_many(b"FAE")
    with pytest.raises(CodecError):
        tiny_codec.decompress_many([tiny_codec.compress(photo((8, 8)))[:-1]])
    assert tiny_codec.compress_batch([]) == [] and tiny_codec.decompress_many([]) == []


def test_the_side_search_does_not_depend_on_the_batch():
    """The shipped model searches the hyper-latents of the flat image (its padding predicts badly):
    batched with others, it finds what it finds alone (each image draws its own noise)."""
    from fastae.codec.api import load_codec

    codec = load_codec(quality=4)
    images = [np.full((40, 60, 3), 128, np.uint8), np.zeros((64, 64, 3), np.uint8), photo((64, 64))]
    with_search = codec.compress_batch(images)
    assert with_search == [codec.compress(image) for image in images]
    assert with_search[0] != load_codec(quality=4, side_search=False).compress(images[0])  # the search ran
