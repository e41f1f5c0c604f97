"""The integer coder: rANS (Python and fastae._C write the same bytes), integer tables, escapes."""

import numpy as np
import pytest
import torch

from fastae.codec import rans
from fastae.codec.format import CodecError
from fastae.codec.tables import from_symbols, pack_varints, quantize_pmf, tables_from_pmf, to_symbols, unpack_varints

native = pytest.mark.skipif(not rans.native_available(), reason="fastae._C is not loaded")


def _tables(scales=(0.3, 1.0, 3.0, 8.0), span=60):
    support = np.arange(-span, span + 1)
    pmf = np.stack([np.exp(-0.5 * (support / s) ** 2) for s in scales])
    return tables_from_pmf(pmf, support)


def _symbols(sizes, length, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, s, length) for s in sizes]).astype(np.int32)


# ------------------------------------------------------------------------------------------- rANS


@pytest.mark.parametrize("length", [0, 1, 7, 3000])
def test_rans_round_trip_python(length):
    cdfs, _, sizes = _tables()
    symbols = _symbols(sizes, length)
    index = np.arange(len(sizes), dtype=np.int32)
    data = rans.encode(symbols, cdfs, index, native=False)
    assert np.array_equal(rans.decode(data, cdfs, index, length, native=False).numpy(), symbols)


@native
@pytest.mark.parametrize("length", [0, 1, 7, 3000])
def test_rans_native_writes_the_reference_bytes(length):
    cdfs, _, sizes = _tables()
    symbols = _symbols(sizes, length, seed=length)
    index = np.array([3, 0, 2, 1], dtype=np.int32)[:len(sizes)]
    symbols = np.stack([np.random.default_rng(r).integers(0, sizes[index[r]], length) for r in range(4)]).astype(np.int32)
    ref = rans.encode(symbols, cdfs, index, native=False)
    assert rans.encode(symbols, cdfs, index, native=True) == ref
    assert np.array_equal(rans.decode(ref, cdfs, index, length, native=True).numpy(), symbols)


def test_rans_rate_close_to_entropy():
    """The coded size is within 1% (+ 4 bytes of state) of the entropy under the table."""
    cdfs, _, sizes = _tables(scales=(2.0,))
    freq = np.diff(cdfs[0])[:sizes[0]] / 65536
    rng = np.random.default_rng(1)
    symbols = rng.choice(sizes[0], size=(1, 20000), p=freq).astype(np.int32)
    bits = -np.log2(freq[symbols]).sum()
    data = rans.encode(symbols, cdfs[:1], np.zeros(1, np.int32))
    assert len(data) * 8 <= bits * 1.01 + 32


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=native)])
def test_rans_rejects_damaged_streams(use_native):
    cdfs, _, sizes = _tables()
    symbols = _symbols(sizes, 500)
    index = np.arange(4, dtype=np.int32)
    data = rans.encode(symbols, cdfs, index)
    for bad in (data[:-1], data[:3], b"", data + b"\0"):
        with pytest.raises(ValueError, match="rans_decode"):
            rans.decode(bad, cdfs, index, 500, native=use_native)
    with pytest.raises(ValueError, match="outside its table"):
        rans.encode(np.full((4, 2), 10_000, np.int32), cdfs, index, native=use_native)


@pytest.mark.parametrize("use_native", [False, pytest.param(True, marks=native)])
def test_rans_flipped_bits_never_crash(use_native):
    """Any single flipped bit either raises ValueError or decodes to some symbols (the CRC of the
    file format catches the rest): never a crash or a hang."""
    cdfs, _, sizes = _tables()
    symbols = _symbols(sizes, 200)
    index = np.arange(4, dtype=np.int32)
    data = bytearray(rans.encode(symbols, cdfs, index))
    caught = 0
    for bit in range(0, len(data) * 8, 7):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            out = rans.decode(bytes(bad), cdfs, index, 200, native=use_native)
            assert out.shape == (4, 200)
        except ValueError:
            caught += 1
    assert caught > 0


# ------------------------------------------------------------------------------------------- tables


def test_quantize_pmf_sums_to_precision_and_keeps_every_symbol():
    freq = quantize_pmf(np.array([0.5, 0.25, 1e-12, 0.25]), escape=1e-9)
    assert freq.sum() == 65536 and (freq >= 1).all() and len(freq) == 5
    assert abs(freq[0] / 65536 - 0.5) < 1e-3


def test_tables_cover_the_distribution():
    cdfs, offsets, sizes = _tables(scales=(1.0, 5.0))
    for c, scale in enumerate((1.0, 5.0)):
        # values within ~4.9 sigma (tail 1e-6) are in the table; the escape is last.
        assert offsets[c] <= -int(4.5 * scale) and offsets[c] + sizes[c] - 2 >= int(4.5 * scale)
        assert cdfs[c, 0] == 0 and cdfs[c, sizes[c]] == 65536


def test_symbols_and_escapes_round_trip():
    _, offsets, sizes = _tables()
    values = torch.tensor([[0, 1, -1, 500, -700], [3, -3, 0, 0, 1 << 40], [0] * 5, [7, 8, 9, -9, 2]])
    symbols, escaped = to_symbols(values, torch.from_numpy(offsets), torch.from_numpy(sizes))
    assert escaped.tolist() == [500, -700, 1 << 40]
    stream = pack_varints(escaped)
    back = from_symbols(symbols, unpack_varints(stream, 100), torch.from_numpy(offsets), torch.from_numpy(sizes))
    assert torch.equal(back, values)


def test_varints_reject_malformed_streams():
    with pytest.raises(CodecError, match="ends inside"):
        unpack_varints(b"\x80", 10)
    with pytest.raises(CodecError, match="longer than"):
        unpack_varints(b"\xff" * 11 + b"\x01", 10)
    with pytest.raises(CodecError, match="more than 2"):
        unpack_varints(b"\x02\x02\x02", 2)
