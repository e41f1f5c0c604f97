"""The .fae file format: round trip, and every malformed file refused with a CodecError saying why."""

import struct
import zlib

import pytest

import fastae
from fastae.codec.format import CODER_RANS, MAGIC, CodecError, Header, pack, read_header, unpack


def _header(**kw):
    fields = dict(model_id="test-model", model_hash=bytes(range(8)), quality=3, coder=CODER_RANS, precision=16,
                  height=512, width=768, channels=3, bit_depth=8, latent_shapes=((8, 32, 48),), stream_lengths=())
    return Header(**(fields | kw))


def test_format_round_trip():
    streams = [b"abc", b"", b"\x00" * 300]
    data = pack(_header(version=1), streams)
    header, back = unpack(data)
    assert back == streams
    assert header == _header(stream_lengths=(3, 0, 300), version=1)
    assert data[:4] == MAGIC and data[4] == 1
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


@pytest.mark.parametrize("height, width, channels, bit_depth, lengths", [
    (512, 768, 3, 8, (3, 0, 300)), (1, 1, 1, 16, (0,)), (1 << 20, 127, 3, 16, (128, 16383, 16384, 1 << 21)),
    (64, 64, 1, 8, tuple(range(16)))])
def test_format_version_2_round_trip(height, width, channels, bit_depth, lengths):
    """Version 2 (the default): the model by its hash, sizes and lengths as varints, no latent shapes."""
    streams = [bytes([i % 251]) * n for i, n in enumerate(lengths)]
    header = _header(height=height, width=width, channels=channels, bit_depth=bit_depth)
    data = pack(header, streams)
    back, out = unpack(data)
    assert out == streams and data[4] == 2
    assert back == _header(model_id=None, height=height, width=width, channels=channels, bit_depth=bit_depth,
                           latent_shapes=(), stream_lengths=lengths)
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])
    # the header's size, field by field: 4 magic, version, coder/source, 8 hash, quality, the varints, count
    varint = lambda n: max(1, (n.bit_length() + 6) // 7)  # noqa: E731
    size = 4 + 1 + 1 + 8 + 1 + varint(height) + varint(width) + 1 + sum(map(varint, lengths)) + 4
    assert len(data) == size + sum(lengths)


def test_format_version_2_names_known_and_loaded_models():
    from fastae.codec.format import KNOWN_MODELS, model_name, remember_model

    v4 = bytes.fromhex("02dafa8730d05425")
    assert model_name(v4) == "fastae-checkerboard-v4" == KNOWN_MODELS[v4.hex()]
    header, _ = unpack(pack(_header(model_hash=v4), [b"x"]))
    assert header.model_id == "fastae-checkerboard-v4"
    mine = bytes(range(100, 108))
    assert unpack(pack(_header(model_hash=mine), [b"x"]))[0].model_id is None
    remember_model(mine, "my-model")
    assert unpack(pack(_header(model_hash=mine), [b"x"]))[0].model_id == "my-model"


def test_format_version_2_errors():
    data = pack(_header(), [b"payload", b"more"])
    hash_end = 4 + 2 + 8 + 1
    with pytest.raises(CodecError, match="unknown coder id"):
        unpack(_recrc(data[:5] + b"\x07" + data[6:]))
    with pytest.raises(CodecError, match="reserved bits"):
        unpack(_recrc(data[:5] + bytes([data[5] | 0x40]) + data[6:]))
    with pytest.raises(CodecError, match="quality must be >= 1"):
        unpack(_recrc(data[:hash_end - 1] + b"\x00" + data[hash_end:]))
    # height 0, a non-canonical varint, a 6-byte varint, a height above the limit
    for varint, match in ((b"\x00", "height and width"), (b"\x80\x84\x00", "canonical"),
                          (b"\x80\x80\x80\x80\x80\x01", "more than 5 bytes"), (b"\x81\x80\x40", "at most")):
        forged = data[:hash_end] + varint + data[hash_end + 2:]
        with pytest.raises(CodecError, match=match):
            unpack(_recrc(forged))
    with pytest.raises(CodecError, match="truncated"):
        unpack(data[:hash_end + 1])
    # a stream length far beyond the file: refused from the file size
    count = data.index(bytes([2, 7, 4]), hash_end)  # stream count 2, lengths 7 and 4
    with pytest.raises(CodecError, match="truncated"):
        unpack(_recrc(data[:count + 1] + b"\xff\xff\xff\xff\x0f" + data[count + 2:]))
    with pytest.raises(ValueError, match="format version"):
        pack(_header(version=3), [b""])


def _recrc(data):
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_format_errors_say_what_is_wrong(tmp_path):
    data = pack(_header(version=1), [b"payload"])
    with pytest.raises(CodecError, match="bad magic"):
        unpack(b"PNG!" + data[4:])
    with pytest.raises(CodecError, match="version 3"):
        unpack(data[:4] + b"\x03" + data[5:])
    with pytest.raises(CodecError, match="CRC mismatch"):
        unpack(data[:-6] + bytes([data[-6] ^ 0x10]) + data[-5:])
    with pytest.raises(CodecError, match="truncated"):
        unpack(data[:-1])
    with pytest.raises(CodecError, match="truncated"):
        unpack(data[:12])
    with pytest.raises(CodecError, match="unexpected bytes"):
        unpack(data + b"x")
    # A forged header announcing a 4 GB stream: rejected from the file size, nothing allocated.
    pos = data.index(struct.pack("<I", 7))
    forged = data[:pos] + struct.pack("<I", 0xFFFFFFFF) + data[pos + 4:]
    with pytest.raises(CodecError, match="truncated"):
        unpack(forged)
    path = tmp_path / "x.fae"
    path.write_bytes(data)
    assert read_header(path).width == 768
    with pytest.raises(TypeError):
        unpack("not bytes")
    with pytest.raises(ValueError, match="model id"):
        pack(_header(model_id="", version=1), [b""])


def test_codec_error_is_exported():
    assert fastae.CodecError is CodecError
    assert issubclass(CodecError, ValueError)
