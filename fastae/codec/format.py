"""The .fae file format, version 1: a self-describing header, the coded streams, a CRC32.

All integers little endian::

    offset  size  field
    0       4     magic b"FAE\\x1a"
    4       1     format version (1)
    5       1     flags (0; reserved)
    6       1     n = length of the model id, 1..64
    7       n     model id, ASCII (e.g. "fastae-factorized-v1")
            8     model hash: first 8 bytes of SHA-256 over the model's weights and CDF tables
            1     quality, 1..255
            1     coder id (1: rANS, byte-wise, 32-bit state, fastae/codec/rans.py)
            1     coder precision in bits (16)
            4     original height, 1..2**20
            4     original width, 1..2**20
            1     original channels (1 grey, 3 RGB)
            1     original bit depth (8 or 16)
            1     number of latent tensors, 0..8
                  per latent: 1 byte ndim (1..4), then ndim x 4 bytes of dims
            1     number of streams, 1..16
                  per stream: 4 bytes length
            ...   the streams, back to back
            4     CRC32 of every byte before it

What the streams hold is the model's business (fastae/codec/layouts.py): a factorized model writes
its latents [M, h, w] (one table per channel) and their escape values; a hyperprior model writes
the latents [M, h, w] (one table per latent, chosen by its predicted scale) and their escapes,
then the hyper-latents [N, h/4, w/4] and theirs, the latent shapes in the same order. A
checkerboard model (a hyperprior with a context) writes the same latent shapes and six streams:
the anchor latents (those at (i, j) with i + j even, in [M, h, w] order) and their escapes, the
other latents and theirs, then the hyper-latents and theirs.

A reader checks, in this order, that the file is long enough, the magic, the version, every
field's range, that the stream lengths add up to the file's size and the CRC; any failure raises
``CodecError`` saying which. Nothing is allocated from a header field before it is checked
against the file's actual size, so a forged header cannot make a reader allocate much.
"""

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"FAE\x1a"
VERSION = 1
CODER_RANS = 1
CODERS = {CODER_RANS: "rans"}
MAX_SIDE = 1 << 20
MAX_LATENTS, MAX_NDIM, MAX_STREAMS, MAX_MODEL_ID = 8, 4, 16, 64


class CodecError(ValueError):
    """A .fae file that cannot be decoded: not a .fae file, an unknown version, another model,
    a CRC mismatch, truncated or corrupt data. The message says which."""


@dataclass(frozen=True)
class Header:
    model_id: str
    model_hash: bytes
    quality: int
    coder: int
    precision: int
    height: int
    width: int
    channels: int
    bit_depth: int
    latent_shapes: tuple
    stream_lengths: tuple
    version: int = VERSION
    flags: int = 0

    @property
    def coder_name(self) -> str:
        return CODERS.get(self.coder, f"unknown ({self.coder})")


def check_model_id(model_id) -> str:
    """``model_id`` if a .fae header can hold it (1..MAX_MODEL_ID ASCII characters), else ValueError."""
    if not isinstance(model_id, str) or not model_id.isascii() or not 1 <= len(model_id) <= MAX_MODEL_ID:
        raise ValueError(f"model id must be 1..{MAX_MODEL_ID} ASCII characters (it is written into every .fae "
                         f"file), got {model_id!r}")
    return model_id


def pack(header: Header, streams) -> bytes:
    """The bytes of a .fae file: ``header`` (its stream_lengths are taken from ``streams``), the streams, CRC32."""
    streams = [bytes(s) for s in streams]
    model_id = check_model_id(header.model_id).encode("ascii")
    _require(len(header.model_hash) == 8, "model hash must be 8 bytes", header.model_hash, error=ValueError)
    _require(1 <= header.height <= MAX_SIDE and 1 <= header.width <= MAX_SIDE,
             f"height and width must be in 1..{MAX_SIDE}", (header.height, header.width), error=ValueError)
    _require(len(header.latent_shapes) <= MAX_LATENTS and 1 <= len(streams) <= MAX_STREAMS,
             f"at most {MAX_LATENTS} latents and 1..{MAX_STREAMS} streams",
             (len(header.latent_shapes), len(streams)), error=ValueError)
    parts = [MAGIC, struct.pack("<BBB", header.version, header.flags, len(model_id)), model_id,
             bytes(header.model_hash),
             struct.pack("<BBBIIBBB", header.quality, header.coder, header.precision, header.height, header.width,
                         header.channels, header.bit_depth, len(header.latent_shapes))]
    for shape in header.latent_shapes:
        _require(1 <= len(shape) <= MAX_NDIM, f"latent shapes must have 1..{MAX_NDIM} dims", shape, error=ValueError)
        parts.append(struct.pack(f"<B{len(shape)}I", len(shape), *shape))
    parts.append(struct.pack(f"<B{len(streams)}I", len(streams), *(len(s) for s in streams)))
    parts.extend(streams)
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def _require(ok, what, got, error=CodecError):
    if not ok:
        raise error(f"{what}, got {got!r}")


class _Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n, what):
        if self.pos + n > len(self.data) - 4:  # the last 4 bytes are the CRC
            raise CodecError(f"truncated .fae file: it ends inside the header ({what}; {len(self.data)} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt, what):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def _parse_header(data: bytes):
    if len(data) < 4 or data[:4] != MAGIC:
        raise CodecError(f"not a .fae file: bad magic {bytes(data[:4])!r} (expected {MAGIC!r})")
    r = _Reader(data)
    r.take(4, "magic")
    version, flags, id_len = r.unpack("BBB", "version")
    if version != VERSION:
        raise CodecError(f"unknown .fae format version {version}: this fastae reads version {VERSION}; "
                         f"upgrade fastae to read newer files")
    _require(flags == 0, "bad header: flags must be 0", flags)
    _require(1 <= id_len <= MAX_MODEL_ID, f"bad header: model id length must be 1..{MAX_MODEL_ID}", id_len)
    raw_id = r.take(id_len, "model id")
    try:
        model_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        raise CodecError(f"bad header: model id is not ASCII: {raw_id!r}") from None
    model_hash = bytes(r.take(8, "model hash"))
    quality, coder, precision, height, width, channels, bit_depth, n_latents = r.unpack("BBBIIBBB", "image fields")
    _require(quality >= 1, "bad header: quality must be >= 1", quality)
    _require(coder in CODERS, f"bad header: unknown coder id (known: {sorted(CODERS)})", coder)
    _require(1 <= precision <= 16, "bad header: coder precision must be 1..16 bits", precision)
    _require(1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE,
             f"bad header: height and width must be in 1..{MAX_SIDE}", (height, width))
    _require(channels in (1, 3), "bad header: channels must be 1 or 3", channels)
    _require(bit_depth in (8, 16), "bad header: bit depth must be 8 or 16", bit_depth)
    _require(n_latents <= MAX_LATENTS, f"bad header: at most {MAX_LATENTS} latents", n_latents)
    shapes = []
    for _ in range(n_latents):
        (ndim,) = r.unpack("B", "latent ndim")
        _require(1 <= ndim <= MAX_NDIM, f"bad header: latent ndim must be 1..{MAX_NDIM}", ndim)
        shape = r.unpack(f"{ndim}I", "latent shape")
        _require(all(1 <= d <= MAX_SIDE for d in shape), f"bad header: latent dims must be in 1..{MAX_SIDE}", shape)
        shapes.append(tuple(shape))
    (n_streams,) = r.unpack("B", "stream count")
    _require(1 <= n_streams <= MAX_STREAMS, f"bad header: stream count must be 1..{MAX_STREAMS}", n_streams)
    lengths = r.unpack(f"{n_streams}I", "stream lengths")
    header = Header(model_id, model_hash, quality, coder, precision, height, width, channels, bit_depth,
                    tuple(shapes), tuple(lengths), version, flags)
    return header, r.pos


def unpack(data) -> tuple:
    """Parse and verify a .fae file: ``(Header, [stream bytes, ...])``; CodecError if anything is wrong."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected the bytes of a .fae file, got {type(data).__name__}")
    data = bytes(data)
    header, pos = _parse_header(data)
    expected = pos + sum(header.stream_lengths) + 4
    if len(data) < expected:
        raise CodecError(f"truncated .fae file: {len(data)} bytes, the header announces {expected}")
    if len(data) > expected:
        raise CodecError(f"corrupt .fae file: {len(data) - expected} unexpected bytes after the announced {expected}")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise CodecError(f"CRC mismatch: the file is corrupt (stored {crc:08x}, computed {zlib.crc32(data[:-4]):08x})")
    streams = []
    for n in header.stream_lengths:
        streams.append(data[pos:pos + n])
        pos += n
    return header, streams


def read_header(source) -> Header:
    """The header of a .fae file given as bytes or a path; checks the CRC too (CodecError if wrong)."""
    if isinstance(source, (str, Path)):
        source = Path(source).read_bytes()
    return unpack(source)[0]
