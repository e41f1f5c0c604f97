"""The .fae file format: a self-describing header, the coded streams, a CRC32. fastae writes
version 2 and reads versions 1 and 2.

Version 2 (written by default; about 30 bytes of header and CRC for a small image). Integers little
endian; varint = unsigned LEB128, canonical (no trailing zero groups), at most 5 bytes::

    offset  size  field
    0       4     magic b"FAE\x1a"
    4       1     format version (2)
    5       1     bits 0-3: coder id (1: rANS, byte-wise, 32-bit state, 16-bit tables);
                  bit 4: grey source (1 channel, else 3); bit 5: 16-bit source (else 8); bits 6-7: 0
    6       8     model hash: first 8 bytes of SHA-256 over the model's weights and CDF tables
    14      1     quality, 1..255
            var   original height, 1..2**20
            var   original width, 1..2**20
            1     number of streams, 1..16
                  per stream: varint length
            ...   the streams, back to back
            4     CRC32 of every byte before it

The model is named by its hash alone: ``model_name`` looks it up in the table of known models
(every model fastae has shipped, and any model file loaded in this process), for messages. The
latent shapes follow from the model and the image size, so they are not stored.

Version 1 (written by fastae before version 2; still read)::

    offset  size  field
    0       4     magic b"FAE\x1a"
    4       1     format version (1)
    5       1     flags (0; reserved)
    6       1     n = length of the model id, 1..64
    7       n     model id, ASCII (e.g. "fastae-factorized-v1")
            8     model hash
            1     quality, 1..255
            1     coder id (1: rANS)
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
VERSION = 2  # what pack() writes unless the header says 1
VERSIONS = (1, 2)  # what unpack() reads
CODER_RANS = 1
CODERS = {CODER_RANS: "rans"}
MAX_SIDE = 1 << 20
MAX_LATENTS, MAX_NDIM, MAX_STREAMS, MAX_MODEL_ID = 8, 4, 16, 64
_PRECISION = 16  # the coder precision version 2 implies (rANS tables of 16-bit frequencies)

#: Models fastae has shipped, by the hash a .fae file names them with (their provenance:
#: bench/results/*-provenance.json and fastae/codec/weights/*.json).
KNOWN_MODELS = {
    "2f535f01a35469b5": "fastae-factorized-v1",
    "e9811b08b9bf7d55": "fastae-hyperprior-v1",
    "0cc7f0db86c04492": "fastae-hyperprior-v2",
    "d084a08d1d160f76": "fastae-hyperprior-v3",
    "8af7fe6791a1819c": "fastae-hyperprior-v4",
    "6387b6ddcb8b4ee7": "fastae-checkerboard-v1",
    "408ed5ef48a163c2": "fastae-checkerboard-v2",
    "02dafa8730d05425": "fastae-checkerboard-v4",
    "66489995867c7e52": "fastae-checkerboard-v8",
}
_LOADED = {}  # hash hex -> model id of model files loaded in this process


def remember_model(model_hash: bytes, model_id: str) -> None:
    """Name ``model_hash`` ``model_id`` in this process's messages (a model file was loaded)."""
    _LOADED[bytes(model_hash).hex()] = model_id


def model_name(model_hash: bytes):
    """The id of the model with this hash, if fastae knows it (shipped or loaded here), else None."""
    key = bytes(model_hash).hex()
    return _LOADED.get(key) or KNOWN_MODELS.get(key)


class CodecError(ValueError):
    """A .fae file that cannot be decoded: not a .fae file, an unknown version, another model,
    a CRC mismatch, truncated or corrupt data. The message says which."""


@dataclass(frozen=True)
class Header:
    """A .fae header. Read from a version 2 file, ``model_id`` is ``model_name(model_hash)`` (None
    for a model unknown here) and ``latent_shapes`` is empty (they follow from the model)."""
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
    """The bytes of a .fae file: ``header`` (its stream_lengths are taken from ``streams``), the
    streams, CRC32; in the header's format version (version 2 stores neither the model id nor the
    latent shapes)."""
    streams = [bytes(s) for s in streams]
    _require(header.version in VERSIONS, f"format version must be one of {VERSIONS}", header.version, error=ValueError)
    _require(len(header.model_hash) == 8, "model hash must be 8 bytes", header.model_hash, error=ValueError)
    _require(1 <= header.height <= MAX_SIDE and 1 <= header.width <= MAX_SIDE,
             f"height and width must be in 1..{MAX_SIDE}", (header.height, header.width), error=ValueError)
    _require(len(header.latent_shapes) <= MAX_LATENTS and 1 <= len(streams) <= MAX_STREAMS,
             f"at most {MAX_LATENTS} latents and 1..{MAX_STREAMS} streams",
             (len(header.latent_shapes), len(streams)), error=ValueError)
    if header.version == 2:
        return _pack_v2(header, streams)
    model_id = check_model_id(header.model_id).encode("ascii")
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


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _pack_v2(header: Header, streams) -> bytes:
    _require(header.coder in CODERS and header.precision == _PRECISION,
             f"version 2 writes coder ids {sorted(CODERS)} with {_PRECISION}-bit tables",
             (header.coder, header.precision), error=ValueError)
    _require(header.channels in (1, 3) and header.bit_depth in (8, 16), "channels must be 1 or 3, bit depth 8 or 16",
             (header.channels, header.bit_depth), error=ValueError)
    _require(1 <= header.quality <= 255, "quality must be in 1..255", header.quality, error=ValueError)
    _require(header.flags == 0, "flags must be 0", header.flags, error=ValueError)
    _require(all(len(s) < 1 << 32 for s in streams), "streams must be shorter than 4 GiB",
             [len(s) for s in streams], error=ValueError)
    bits = header.coder | (0x10 if header.channels == 1 else 0) | (0x20 if header.bit_depth == 16 else 0)
    parts = [MAGIC, bytes([2, bits]), bytes(header.model_hash), bytes([header.quality]),
             _varint(header.height), _varint(header.width), bytes([len(streams)]),
             *(_varint(len(s)) for s in streams), *streams]
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

    def varint(self, what, limit):
        """A canonical LEB128 varint of at most 5 bytes, checked to be in 0..limit."""
        value = 0
        for i in range(5):
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                _require(byte or i == 0, f"bad header: {what} is not a canonical varint", value)
                _require(value <= limit, f"bad header: {what} must be at most {limit}", value)
                return value
        raise CodecError(f"bad header: {what} is a varint of more than 5 bytes")


def _parse_header(data: bytes):
    if len(data) < 4 or data[:4] != MAGIC:
        raise CodecError(f"not a .fae file: bad magic {bytes(data[:4])!r} (expected {MAGIC!r})")
    r = _Reader(data)
    r.take(4, "magic")
    (version,) = r.unpack("B", "version")
    if version not in VERSIONS:
        raise CodecError(f"unknown .fae format version {version}: this fastae reads versions "
                         f"{', '.join(map(str, VERSIONS))}; upgrade fastae to read newer files")
    if version == 2:
        return _parse_v2(r)
    flags, id_len = r.unpack("BB", "flags")
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


def _parse_v2(r):
    (bits,) = r.unpack("B", "coder and source")
    coder = bits & 0x0F
    _require(coder in CODERS, f"bad header: unknown coder id (known: {sorted(CODERS)})", coder)
    _require(bits & 0xC0 == 0, "bad header: reserved bits must be 0", bits)
    model_hash = bytes(r.take(8, "model hash"))
    (quality,) = r.unpack("B", "quality")
    _require(quality >= 1, "bad header: quality must be >= 1", quality)
    height = r.varint("height", MAX_SIDE)
    width = r.varint("width", MAX_SIDE)
    _require(height >= 1 and width >= 1, f"bad header: height and width must be in 1..{MAX_SIDE}", (height, width))
    (n_streams,) = r.unpack("B", "stream count")
    _require(1 <= n_streams <= MAX_STREAMS, f"bad header: stream count must be 1..{MAX_STREAMS}", n_streams)
    lengths = tuple(r.varint("stream length", (1 << 32) - 1) for _ in range(n_streams))
    header = Header(model_name(model_hash), model_hash, quality, coder, _PRECISION, height, width,
                    1 if bits & 0x10 else 3, 16 if bits & 0x20 else 8, (), lengths, 2, 0)
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
