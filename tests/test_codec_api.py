"""Codec, the bytes <-> images layer: round trips of every input, headers, sizes, batches, latents,
the channel policy through the codec; on tiny untrained models of each kind and real photo crops."""

import numpy as np
import pytest
import torch
from PIL import Image

import fastae
from fastae.codec.api import Latents, load_codec
from fastae.codec.format import CODER_RANS, CodecError, read_header
from fastae.codec.model_file import export_codec
from fastae.models.codec import CODEC_MODELS, HyperpriorCodec
from tests._codec import photo, tiny_model


def test_codec_round_trip_inputs(tiny_codec, tmp_path):
    rgb = photo()
    data = tiny_codec.compress(rgb)
    out = tiny_codec.decompress(data)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(out, tiny_codec.reconstruct(rgb))
    Image.fromarray(rgb).save(tmp_path / "a.png")
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    for same in (Image.fromarray(rgb), tmp_path / "a.png", str(tmp_path / "a.png"), tensor, tensor.float() / 255):
        assert tiny_codec.compress(same) == data
    assert torch.equal(tiny_codec.decompress(data, output="tensor"), torch.from_numpy(out).permute(2, 0, 1))
    assert tiny_codec.compress(rgb) == data  # deterministic


def test_codec_header_fields(tiny_codec):
    rgb = photo((37, 21))
    header = read_header(tiny_codec.compress(rgb))
    assert (header.height, header.width, header.channels, header.bit_depth) == (37, 21, 3, 8)
    assert header.model_id == "tiny" and header.model_hash == tiny_codec.hash and header.quality == 2
    assert header.version == 2 and header.latent_shapes == ()  # they follow from the model and the size
    if isinstance(tiny_codec.model, HyperpriorCodec):  # padded to 64 x 64: y at 1/16, z at 1/64
        assert tiny_codec.latent_shapes(37, 21) == ((8, 4, 4), (8, 1, 1))
    else:
        assert tiny_codec.latent_shapes(37, 21) == ((8, 3, 2),)
    assert header.coder == CODER_RANS and header.precision == 16


def test_small_images_pay_at_most_32_bytes_of_header(tiny_codec):
    """Version 2: header and CRC of a 64 x 64 image's file in at most 32 bytes, all the rest streams."""
    data = tiny_codec.compress(photo((64, 64)))
    header = read_header(data)
    assert len(data) - sum(header.stream_lengths) <= 32


def test_version_1_files_still_decode(tiny_codec):
    """A file in the earlier format (model id and latent shapes in the header) decodes to the same
    image; one whose stored shapes disagree with the model is refused."""
    import dataclasses

    from fastae.codec.format import pack, unpack

    rgb = photo((37, 21))
    data = tiny_codec.compress(rgb)
    header, streams = unpack(data)
    v1 = dataclasses.replace(header, version=1, model_id=tiny_codec.model_id,
                             latent_shapes=tiny_codec.latent_shapes(37, 21))
    old = pack(v1, streams)
    assert old[4] == 1 and len(old) > len(data)
    assert np.array_equal(tiny_codec.decompress(old), tiny_codec.decompress(data))
    wrong = [(d + 1,) + tuple(s[1:]) for d, *_ in v1.latent_shapes[:1] for s in v1.latent_shapes[:1]]
    bad = pack(dataclasses.replace(v1, latent_shapes=tuple(wrong) + v1.latent_shapes[1:]), streams)
    with pytest.raises(CodecError, match="latent shapes"):
        tiny_codec.decompress(bad)
    renamed = pack(dataclasses.replace(v1, model_id="another-name"), streams)
    with pytest.raises(CodecError, match="model hash mismatch"):
        tiny_codec.decompress(renamed)


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (16, 16), (33, 15)])
def test_codec_any_size(tiny_codec, shape):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = tiny_codec.decompress(tiny_codec.compress(rgb))
    assert out.shape == (*shape, 3)


def test_codec_grey_alpha_and_16_bit(tiny_codec, tmp_path):
    rgb = photo()
    grey = Image.fromarray(rgb).convert("L")
    out = tiny_codec.decompress(tiny_codec.compress(grey))
    assert out.shape == (*rgb.shape[:2], 1)
    assert np.array_equal(out, tiny_codec.reconstruct(grey))
    assert read_header(tiny_codec.compress(grey)).channels == 1
    opaque = Image.fromarray(rgb).convert("RGBA")
    assert tiny_codec.compress(opaque) == tiny_codec.compress(rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    with pytest.raises(ValueError, match="transparency"):
        tiny_codec.compress(rgba)
    deep = (np.asarray(grey).astype(np.uint16) * 257)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
    header = read_header(tiny_codec.compress(tmp_path / "deep.png"))
    assert (header.channels, header.bit_depth) == (1, 16)
    assert tiny_codec.compress(tmp_path / "deep.png") == tiny_codec.compress(deep)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        tiny_codec.compress(tmp_path / "notes.txt")
    with pytest.raises(TypeError, match="dtype"):
        tiny_codec.compress(rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny_codec.compress(torch.full((3, 4, 4), 2.0))


@pytest.mark.parametrize("kind", sorted(CODEC_MODELS))
def test_a_one_channel_model_codes_grey_images(kind, tmp_path):
    weights = export_codec(tiny_model(kind, channels=1), tmp_path / "grey.safetensors", model_id="grey")
    codec = load_codec(quality=1, weights=weights)
    grey = np.array(Image.fromarray(photo()).convert("L"))
    data = codec.compress(grey)
    assert read_header(data).channels == 1
    out = codec.decompress(data)
    assert out.shape == (*grey.shape, 1) and np.array_equal(out, codec.reconstruct(grey))
    assert codec.compress_batch(torch.from_numpy(grey)[None, None]) == [data]
    with pytest.raises(ValueError, match="codes grey images"):
        codec.compress(photo())


def test_codec_batched_encode_decode_match_single_images(tiny_codec):
    rgb = photo((32, 48))
    batch = torch.stack([torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(rgb[::-1].copy()).permute(2, 0, 1)])
    latents = tiny_codec.encode(batch)
    assert latents.values.shape == ((2, 8, 4, 4) if isinstance(tiny_codec.model, HyperpriorCodec) else (2, 8, 2, 3))
    assert latents.values.dtype == torch.int32
    single = tiny_codec.encode(batch[1:])
    assert torch.equal(latents.values[1:], single.values)
    if isinstance(tiny_codec.model, HyperpriorCodec):
        assert latents.side.shape == (2, 8, 1, 1) and torch.equal(latents.side[1:], single.side)
        with pytest.raises(ValueError, match="side"):
            tiny_codec.decode(type(latents)(latents.values, 2, 32, 48))
    images = tiny_codec.decode(latents)
    assert images.shape == (2, 3, 32, 48) and images.dtype == torch.uint8
    assert np.array_equal(images[0].permute(1, 2, 0).numpy(), tiny_codec.reconstruct(rgb))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_codec.encode(batch[0])


def test_codec_batched_calls_check_their_input(tiny_codec):
    rgb = torch.from_numpy(photo((32, 48))).permute(2, 0, 1)[None]
    for bad in (rgb.float(), torch.full((1, 3, 8, 8), float("nan")), torch.full((1, 3, 8, 8), -0.1)):
        with pytest.raises(ValueError, match=r"finite values in \[0, 1\]"):
            tiny_codec.compress_batch(bad)
    for bad in (rgb.long(), rgb.bool()):
        with pytest.raises(TypeError, match="dtype"):
            tiny_codec.encode(bad)
    with pytest.raises(ValueError, match="at least one image"):
        tiny_codec.encode(rgb[:0])
    assert tiny_codec.encode(rgb.float() / 255).values.shape == tiny_codec.encode(rgb).values.shape
    latents = tiny_codec.encode(rgb)
    hyper = latents.side is not None
    bad_latents = [Latents(latents.values, latents.quality, 1000, 48, latents.side),   # size of other latents
                   Latents(latents.values, latents.quality, -5, 48, latents.side),
                   Latents(latents.values.float(), latents.quality, 32, 48, latents.side)]
    if hyper:
        bad_latents.append(Latents(latents.values, latents.quality, 32, 48, latents.side.repeat(2, 1, 1, 1)))
    for bad in bad_latents:
        with pytest.raises(ValueError, match="decode: latents"):
            tiny_codec.decode(bad)
    with pytest.raises(ValueError, match="quality"):
        tiny_codec.decode(Latents(latents.values, 9, 32, 48, latents.side))
    with pytest.raises(TypeError, match="dtype"):
        tiny_codec.decode(latents, dtype=torch.int16)
    with pytest.raises(TypeError, match="Latents"):
        tiny_codec.decode(latents.values)
    assert tiny_codec.decode(latents, dtype=torch.float32).dtype == torch.float32
    assert tiny_codec.with_quality(np.int64(2)).quality == 2 and type(tiny_codec.with_quality(np.int64(2)).quality) is int


def test_codec_compress_batch_writes_the_files_of_compress(tiny_codec):
    a, b = photo((32, 48)), photo((32, 48))[::-1].copy()
    batch = torch.stack([torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(b).permute(2, 0, 1)])
    files = tiny_codec.compress_batch(batch)
    assert files == [tiny_codec.compress(a), tiny_codec.compress(b)]
    images = tiny_codec.decompress_batch(files)
    assert images.shape == (2, 3, 32, 48) and images.dtype == torch.uint8
    assert np.array_equal(images[1].permute(1, 2, 0).numpy(), tiny_codec.decompress(files[1]))
    with pytest.raises(ValueError, match="one size and quality"):
        tiny_codec.decompress_batch([files[0], tiny_codec.compress(photo((16, 48)))])
    with pytest.raises(ValueError, match="no files"):
        tiny_codec.decompress_batch([])
    with pytest.raises(CodecError):
        tiny_codec.decompress_batch([files[0], files[1][:-1]])


def test_codec_arbitrary_latents_round_trip_through_a_file(tiny_codec):
    """Latents no encoder would produce (wide, random, hyper-latents up to +-3000): the file
    written for them decodes to exactly what ``decode`` gives for them, a uint8 image of the
    header's size, whatever tables and escapes they need."""
    h, w = 70, 90
    m, lh, lw = tiny_codec.latent_shapes(h, w)[0]
    gen = torch.Generator().manual_seed(0)
    values = (torch.randn(1, m, lh, lw, generator=gen) * 200).round().to(torch.int32)
    side = None
    if isinstance(tiny_codec.model, HyperpriorCodec):
        side = torch.randint(-3000, 3001, (1, *tiny_codec.latent_shapes(h, w)[1]), generator=gen, dtype=torch.int32)
    latents = Latents(values, 2, h, w, side)
    index = None  # a factorized model's tables are its channels'; a hyperprior's are chosen by the predicted scales
    if side is not None:
        index = tiny_codec.model.gaussian.index(tiny_codec.layout.parameters(side, lambda m, s: values)[1])
    data = tiny_codec._pack(latents, index, 0, 3, 8)
    assert read_header(data).latent_shapes == ()  # version 2: derived from the model and the size
    out = tiny_codec.decompress(data, output="tensor")
    assert out.shape == (3, h, w) and out.dtype == torch.uint8
    assert torch.equal(out, tiny_codec.decode(latents)[0])


def test_fastae_load_codec_is_the_one_entry_point():
    """fastae.load_codec, fastae.codec.load_codec and the function itself are one object."""
    assert fastae.load_codec is fastae.codec.load_codec is load_codec is fastae.codec.api.load_codec
    assert fastae.codec.Codec is fastae.codec.api.Codec and fastae.codec.Latents is Latents


def test_codec_factory_checks_at_once_and_makes_one_codec_per_process(tmp_path):
    import pickle

    from fastae.codec.api import CodecFactory

    weights = export_codec(tiny_model("factorized"), tmp_path / "tiny.safetensors", model_id="tiny")
    with pytest.raises(ValueError, match="quality"):
        CodecFactory(quality=99, weights=weights)
    factory = CodecFactory(quality=2, weights=weights)
    codec = factory()
    assert factory() is codec and codec.quality == 2  # the checked codec serves this process
    copy = pickle.loads(pickle.dumps(factory))  # a worker's copy makes its own
    assert copy() is not codec and copy().quality == 2 and copy() is copy()
    assert copy().compress(photo((24, 40))) == codec.compress(photo((24, 40)))
