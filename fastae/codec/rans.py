"""rANS entropy coding from integer frequency tables (coder id 1 of the .fae format).

    data = encode(symbols, cdfs, index)            # symbols int32 [R, L]; row r uses table cdfs[index[r]]
    symbols = decode(data, cdfs, index, length=L)

``cdfs`` is int32 [T, K+1]: ``cdfs[t, 0] = 0``, non-decreasing, and equal to ``2**precision``
from the table's last symbol on (shorter tables are padded with that value); symbol ``s`` has
frequency ``cdfs[t, s+1] - cdfs[t, s]``. Byte-wise rANS with a 32-bit state (ryg_rans): the
encoder runs backwards over the symbols, so the decoder reads forwards; the stream is the final
state (4 bytes, little endian) followed by the renormalization bytes.

The coder runs in fastae._C (csrc/rans.cpp) when the extension is loaded, and otherwise in the
pure-Python implementation below, which writes the same bytes (it is also the tests' oracle).
Both raise ``ValueError`` for a stream that is truncated or corrupt.
"""

import bisect

import numpy as np
import torch

from fastae import _native

PRECISION = 16
RANS_L = 1 << 23


def native_available() -> bool:
    return _native.has_kernel("rans_encode", "CompositeExplicitAutograd")


def _as_int32(a, name):
    t = torch.as_tensor(a)
    if t.dtype != torch.int32:
        t = t.to(torch.int32)
    return t.contiguous().cpu()


def encode(symbols, cdfs, index, precision: int = PRECISION, native: bool = None) -> bytes:
    symbols, cdfs, index = _as_int32(symbols, "symbols"), _as_int32(cdfs, "cdfs"), _as_int32(index, "index")
    if symbols.dim() != 2:
        raise ValueError(f"rans.encode: symbols must be [rows, length], got shape {tuple(symbols.shape)}")
    if native if native is not None else native_available():
        try:
            return torch.ops.fastae_C.rans_encode(symbols, cdfs, index, precision).numpy().tobytes()
        except RuntimeError as e:
            raise ValueError(str(e).splitlines()[0]) from None
    return _encode_py(symbols.numpy(), cdfs.numpy(), index.numpy(), precision)


def decode(data: bytes, cdfs, index, length: int, precision: int = PRECISION, native: bool = None) -> torch.Tensor:
    cdfs, index = _as_int32(cdfs, "cdfs"), _as_int32(index, "index")
    if native if native is not None else native_available():
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8)
        try:
            return torch.ops.fastae_C.rans_decode(buf, cdfs, index, int(length), precision)
        except RuntimeError as e:
            raise ValueError(str(e).splitlines()[0]) from None
    return torch.from_numpy(_decode_py(bytes(data), cdfs.numpy(), index.numpy(), int(length), precision))


def _check_tables(cdfs, index, rows, precision):
    total = 1 << precision
    if cdfs.ndim != 2 or cdfs.shape[1] < 2:
        raise ValueError(f"rans: cdfs must be [T, K+1] with K >= 1, got shape {cdfs.shape}")
    if (cdfs[:, 0] != 0).any() or (cdfs[:, -1] != total).any() or (np.diff(cdfs, axis=1) < 0).any():
        raise ValueError(f"rans: every table must start at 0, end at {total} and not decrease")
    if index.shape != (rows,) or (index < 0).any() or (index >= cdfs.shape[0]).any():
        raise ValueError(f"rans: index must give a table (0..{cdfs.shape[0] - 1}) for each of the {rows} rows")


def _encode_py(symbols, cdfs, index, precision):
    rows, length = symbols.shape
    _check_tables(cdfs, index, rows, precision)
    k = cdfs.shape[1] - 1
    out = bytearray()
    x = RANS_L
    bound_base = (RANS_L >> precision) << 8
    for r in range(rows - 1, -1, -1):
        cdf = cdfs[index[r]].tolist()
        row = symbols[r].tolist()
        for l in range(length - 1, -1, -1):
            s = row[l]
            if not 0 <= s < k or cdf[s + 1] == cdf[s]:
                raise ValueError(f"rans_encode: symbol {s} at ({r}, {l}) is outside its table or has probability 0")
            start, freq = cdf[s], cdf[s + 1] - cdf[s]
            x_max = bound_base * freq
            while x >= x_max:
                out.append(x & 0xFF)
                x >>= 8
            x = ((x // freq) << precision) + (x % freq) + start
    out.reverse()
    return x.to_bytes(4, "little") + bytes(out)


def _decode_py(data, cdfs, index, length, precision):
    rows = len(index)
    _check_tables(cdfs, index, rows, precision)
    if length < 0:
        raise ValueError(f"rans_decode: length must be >= 0, got {length}")
    if len(data) < 4:
        raise ValueError(f"rans_decode: stream is truncated ({len(data)} bytes, fewer than the 4 of the state)")
    out = np.empty((rows, length), dtype=np.int32)
    x = int.from_bytes(data[:4], "little")
    pos, end = 4, len(data)
    mask = (1 << precision) - 1
    for r in range(rows):
        cdf = cdfs[index[r]].tolist()
        k = len(cdf) - 1
        row = out[r]
        decoded = [0] * length
        for l in range(length):
            slot = x & mask
            s = min(bisect.bisect_right(cdf, slot) - 1, k - 1)
            start = cdf[s]
            x = (cdf[s + 1] - start) * (x >> precision) + slot - start
            while x < RANS_L:
                if pos == end:
                    raise ValueError("rans_decode: stream ended before all symbols were decoded (truncated or corrupt)")
                x = (x << 8) | data[pos]
                pos += 1
            decoded[l] = s
        row[:] = decoded
    if pos != end or x != RANS_L:
        raise ValueError(f"rans_decode: stream is corrupt ({end - pos} bytes left over, final state {x})")
    return out
