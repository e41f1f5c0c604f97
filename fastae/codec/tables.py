"""Integer frequency tables of an entropy model, derived once (when a model is exported) and stored
with its weights, so that every encoder and decoder, on any device, codes with the same integers.

A table covers the integers ``offset .. offset + size - 2`` of one latent channel, and its last
symbol (``size - 1``) is the escape: a value outside that range is coded as the escape symbol
and its value follows in the escape stream (zigzag varints). Frequencies add up to
``2**precision``; every symbol, escape included, has a frequency of at least 1.
"""

import numpy as np
import torch

from fastae.codec.format import CodecError
from fastae.codec.rans import PRECISION

TAIL = 1e-6  # probability mass left to the escape symbol on each side
MAX_RANGE = 1 << 12  # widest range of values a table covers


def quantize_pmf(pmf: np.ndarray, escape: float, precision: int = PRECISION) -> np.ndarray:
    """Frequencies (int64, sum ``2**precision``, each >= 1) of ``pmf`` followed by the escape mass."""
    p = np.append(np.asarray(pmf, dtype=np.float64), max(float(escape), 0.0))
    p = np.clip(p, 0, None)
    p = p / p.sum()
    total = 1 << precision
    if len(p) > total:
        raise ValueError(f"a table of {len(p)} symbols does not fit {precision}-bit frequencies")
    # Every symbol gets 1, the rest of the total in proportion to p; the counts that flooring leaves
    # over (fewer than one per symbol) go to the largest fractional parts, so that no symbol of a
    # wide table is inflated by the remainder of all the others.
    share = p * (total - len(p))
    freq = np.floor(share).astype(np.int64) + 1
    left = total - int(freq.sum())
    if left:
        freq[np.argsort(freq - 1 - share, kind="stable")[:left]] += 1
    return freq


def tables_from_pmf(pmf: np.ndarray, support: np.ndarray, tail: float = TAIL, precision: int = PRECISION):
    """Tables of C channels from their probabilities ``pmf`` [C, K] of the integers ``support`` [K].

    Returns ``(cdfs int32 [C, Kmax+1], offsets int32 [C], sizes int32 [C])``; padded entries of a
    shorter table equal ``2**precision``.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    support = np.asarray(support, dtype=np.int64)
    freqs, offsets = [], []
    for row in pmf:
        row = row / max(row.sum(), 1e-300)
        cum = np.cumsum(row)
        lo = int(np.searchsorted(cum, tail, side="left"))
        hi = int(np.searchsorted(cum, 1 - tail, side="left"))
        hi = min(max(hi, lo), len(row) - 1, lo + MAX_RANGE - 1)
        inside = row[lo:hi + 1]
        freqs.append(quantize_pmf(inside, 1 - inside.sum(), precision))
        offsets.append(int(support[lo]))
    width = max(len(f) for f in freqs)
    cdfs = np.full((len(freqs), width + 1), 1 << precision, dtype=np.int64)
    for c, f in enumerate(freqs):
        cdfs[c, 0] = 0
        cdfs[c, 1:len(f) + 1] = np.cumsum(f)
    sizes = np.array([len(f) for f in freqs], dtype=np.int32)
    return cdfs.astype(np.int32), np.array(offsets, dtype=np.int32), sizes


def code_lengths(cdfs: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, support: np.ndarray,
                 precision: int = PRECISION) -> np.ndarray:
    """Bits [T, K] that coding each integer of ``support`` [K] with each table costs: its symbol's
    ``-log2(frequency / 2**precision)``, and for a value outside the table the escape symbol's plus
    the 8 bits of each byte of its varint in the escape stream."""
    cdfs, offsets, sizes = (np.asarray(a, dtype=np.int64) for a in (cdfs, offsets, sizes))
    support = np.asarray(support, dtype=np.int64)
    idx = support[None, :] - offsets[:, None]
    escape = sizes[:, None] - 1
    outside = (idx < 0) | (idx >= escape)
    sym = np.where(outside, escape, idx)
    rows = np.arange(len(cdfs))[:, None]
    freq = cdfs[rows, sym + 1] - cdfs[rows, sym]
    bits = precision - np.log2(np.maximum(freq, 1))
    zigzag = np.where(support >= 0, 2 * support, -2 * support - 1)  # as pack_varints writes them
    bit_length = np.ceil(np.log2(zigzag + 1.0))  # exact for these magnitudes (powers of two are exact)
    varint_bytes = np.maximum(1, np.ceil(bit_length / 7))
    return bits + np.where(outside, 8 * varint_bytes[None, :], 0)


def check_tables(cdfs: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor, precision: int = PRECISION):
    """ValueError unless the tables are well formed (they come from a weights file)."""
    total = 1 << precision
    if cdfs.dtype != torch.int32 or cdfs.dim() != 2 or offsets.shape != (cdfs.shape[0],) or \
            sizes.shape != (cdfs.shape[0],):
        raise ValueError(f"entropy tables: expected int32 cdfs [C, K+1], offsets [C], sizes [C]; got "
                         f"{tuple(cdfs.shape)}, {tuple(offsets.shape)}, {tuple(sizes.shape)}")
    diffs = cdfs[:, 1:] - cdfs[:, :-1]
    if (cdfs[:, 0] != 0).any() or (cdfs[:, -1] != total).any() or (diffs < 0).any() or (sizes < 1).any() or \
            (sizes > cdfs.shape[1] - 1).any():
        raise ValueError("entropy tables: malformed (cdf must run from 0 to 2**precision without decreasing)")


def to_symbols(values: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor):
    """Integer latents [C, L] -> (symbols int32 [C, L], escaped values int64 in coding order)."""
    offsets = offsets.to(values.device, torch.int64)[:, None]
    escape = sizes.to(values.device, torch.int64)[:, None] - 1
    idx = values.to(torch.int64) - offsets
    outside = (idx < 0) | (idx >= escape)
    symbols = torch.where(outside, escape.expand_as(idx), idx).to(torch.int32)
    return symbols, values[outside].to(torch.int64).cpu()


def from_symbols(symbols: torch.Tensor, escaped: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor):
    """Inverse of to_symbols: int64 latents [C, L]."""
    escape = sizes.to(torch.int64)[:, None] - 1
    outside = symbols.to(torch.int64) == escape
    n = int(outside.sum())
    if n != len(escaped):
        raise CodecError(f"corrupt .fae file: {n} escaped values announced, {len(escaped)} stored")
    values = symbols.to(torch.int64) + offsets.to(torch.int64)[:, None]
    values[outside] = escaped
    return values


def pack_varints(values: torch.Tensor) -> bytes:
    """Zigzag LEB128 varints of int64 values."""
    out = bytearray()
    for v in values.tolist():
        z = (v << 1) ^ (v >> 63)
        while True:
            byte = z & 0x7F
            z >>= 7
            if z:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
    return bytes(out)


def unpack_varints(data: bytes, limit: int) -> torch.Tensor:
    """Inverse of pack_varints; CodecError for a malformed stream or more than ``limit`` values."""
    values, z, shift = [], 0, 0
    for byte in data:
        z |= (byte & 0x7F) << shift
        shift += 7
        if shift > 70:
            raise CodecError("corrupt .fae file: an escaped value is longer than 10 bytes")
        if not byte & 0x80:
            values.append((z >> 1) ^ -(z & 1))
            if len(values) > limit:
                raise CodecError(f"corrupt .fae file: more than {limit} escaped values")
            z, shift = 0, 0
    if shift:
        raise CodecError("corrupt .fae file: the escape stream ends inside a value")
    if any(not -(1 << 62) <= v < (1 << 62) for v in values):
        raise CodecError("corrupt .fae file: an escaped value is out of range")
    return torch.tensor(values, dtype=torch.int64)
