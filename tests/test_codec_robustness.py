"""Damaged, foreign and forged .fae files: a CodecError that says why, never a crash or a wrong image."""

import zlib

import numpy as np
import pytest
import torch

from fastae.codec.api import load_codec
from fastae.codec.format import MAGIC, CodecError, pack, read_header, unpack
from fastae.codec.model_file import export_codec
from fastae.models.codec import FactorizedCodec
from tests._codec import photo


def test_codec_rejects_other_models_and_damaged_files(tiny_codec, tmp_path):
    data = tiny_codec.compress(photo())
    torch.manual_seed(1)
    other = load_codec(quality=1, weights=export_codec(FactorizedCodec(N=8, M=8, lambdas=(0.01, 0.1)),
                                                       tmp_path / "other.safetensors", model_id="tiny"))
    with pytest.raises(CodecError, match="model hash mismatch.*same name with other weights"):
        other.decompress(data)
    renamed = load_codec(quality=1, weights=export_codec(FactorizedCodec(N=8, M=8, lambdas=(0.01, 0.1)),
                                                         tmp_path / "renamed.safetensors", model_id="custom-x"))
    with pytest.raises(CodecError, match="'tiny' is not shipped in this package: .*weights=FILE"):
        renamed.decompress(data)
    assert other.with_quality(2).quality == 2
    rng = np.random.default_rng(0)
    for trial in range(300):
        bad = bytearray(data)
        kind = trial % 3
        if kind == 0:
            pos = int(rng.integers(len(bad)))
            bad[pos] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            bad = bad[:int(rng.integers(len(bad)))]
        else:
            bad = bytearray(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
            if trial % 2:
                bad[:4] = MAGIC
        with pytest.raises(CodecError):
            tiny_codec.decompress(bytes(bad))


@pytest.mark.slow
def test_forged_files_with_valid_checksums_decode_or_raise_codec_error(tiny_codec):
    """The CRC catches damage, not forgery: files rebuilt with a valid CRC around changed header
    fields (sizes, quality, latent shapes) or altered streams must decode to an image of the size
    they claim or raise CodecError, never anything else."""
    import dataclasses
    import random

    header, streams = unpack(tiny_codec.compress(photo((40, 56))))
    rng = random.Random(0)
    outcomes = {"decoded": 0, "CodecError": 0}
    for _ in range(500):
        h, ss = header, [bytearray(s) for s in streams]
        for _ in range(rng.randint(1, 3)):
            r, i = rng.random(), rng.randrange(len(ss))
            if r < 0.2:
                h = dataclasses.replace(h, height=rng.choice([1, h.height + rng.randint(-40, 40), rng.randint(1, 3000)]))
            elif r < 0.4:
                h = dataclasses.replace(h, width=rng.choice([1, h.width + rng.randint(-56, 56), rng.randint(1, 3000)]))
            elif r < 0.5:
                h = dataclasses.replace(h, quality=rng.randint(0, 255), channels=rng.choice([1, 3, 0, 7]))
            elif r < 0.6:
                if not h.latent_shapes:  # a version 2 file does not store them: forge a version 1 file instead
                    h = dataclasses.replace(h, version=1, model_id=tiny_codec.model_id,
                                            latent_shapes=tiny_codec.latent_shapes(h.height, h.width))
                shapes = [list(shape) for shape in h.latent_shapes]
                k = rng.randrange(len(shapes))
                shapes[k][rng.randrange(3)] += rng.choice([-1, 1, 2])
                h = dataclasses.replace(h, latent_shapes=tuple(tuple(shape) for shape in shapes))
            elif r < 0.75 and ss[i]:
                ss[i][rng.randrange(len(ss[i]))] ^= 1 << rng.randrange(8)
            elif r < 0.85:
                ss[i] = ss[i][:rng.randint(0, len(ss[i]))]
            elif r < 0.95:
                ss[i] += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            else:
                j = rng.randrange(len(ss))
                ss[i], ss[j] = ss[j], ss[i]
        try:
            data = pack(h, [bytes(s) for s in ss])
        except ValueError:  # a header pack() itself refuses to write
            continue
        try:
            out = tiny_codec.decompress(data, max_pixels=1 << 22)
        except CodecError:
            outcomes["CodecError"] += 1
        else:
            assert out.dtype == np.uint8 and out.shape[:2] == (h.height, h.width)
            outcomes["decoded"] += 1
    assert outcomes["CodecError"] > 300 and outcomes["decoded"] > 0  # both paths were exercised


def test_codec_forged_streams_with_a_valid_crc_never_crash(tiny_codec):
    """Damaged streams behind a recomputed CRC (what the CRC cannot catch): decoding raises
    CodecError or returns an image of the header's size, never another exception."""
    rgb = photo()
    data = tiny_codec.compress(rgb)
    body = len(data) - 4
    header_len = body - sum(read_header(data).stream_lengths)
    rng = np.random.default_rng(0)
    for _ in range(100):
        bad = bytearray(data[:body])
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(header_len, body))
            bad[pos] = int(rng.integers(256))
        bad += zlib.crc32(bad).to_bytes(4, "little")
        try:
            out = tiny_codec.decompress(bytes(bad))
        except CodecError:
            continue
        assert out.shape == rgb.shape and out.dtype == np.uint8
