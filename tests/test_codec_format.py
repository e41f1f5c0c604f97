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
    data = pack(_header(), streams)
    header, back = unpack(data)
    assert back == streams
    assert header == _header(stream_lengths=(3, 0, 300))
    assert data[:4] == MAGIC and data[4] == 1
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_format_errors_say_what_is_wrong(tmp_path):
    data = pack(_header(), [b"payload"])
    with pytest.raises(CodecError, match="bad magic"):
        unpack(b"PNG!" + data[4:])
    with pytest.raises(CodecError, match="version 2"):
        unpack(data[:4] + b"\x02" + data[5:])
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
        pack(_header(model_id=""), [b""])


def test_codec_error_is_exported():
    assert fastae.CodecError is CodecError
    assert issubclass(CodecError, ValueError)
