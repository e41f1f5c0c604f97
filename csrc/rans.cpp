// rANS entropy coder of the .fae format (coder id 1): byte-wise renormalization, 32-bit state,
// frequency tables of `precision` bits (ryg_rans, F. Giesen 2014). The Python reference
// implementation is fastae/codec/rans.py; both must produce the same bytes.
//
// symbols: int32 [R, L], row r coded with table index[r] of cdfs [T, K+1] (cdf[t][0] = 0,
// cdf[t][k] = 1 << precision for k >= the table's size, non-decreasing). Symbols are coded in
// row-major order; the encoder runs backwards so the decoder reads forwards.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr uint32_t kRansL = 1u << 23;

void check_tables(const at::Tensor& cdfs, const at::Tensor& index, int64_t rows, int64_t precision) {
  TORCH_CHECK(precision >= 1 && precision <= 16, "rans: precision must be in 1..16, got ", precision);
  TORCH_CHECK(cdfs.dim() == 2 && cdfs.scalar_type() == at::kInt && cdfs.is_contiguous() && cdfs.size(1) >= 2,
              "rans: cdfs must be a contiguous int32 [T, K+1] tensor with K >= 1");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kInt && index.is_contiguous() && index.size(0) == rows,
              "rans: index must be a contiguous int32 tensor with one table index per row (", rows, "), got ",
              index.sizes());
  const int64_t T = cdfs.size(0), K1 = cdfs.size(1);
  const int32_t* c = cdfs.data_ptr<int32_t>();
  const int32_t total = 1 << precision;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(c[t * K1] == 0 && c[t * K1 + K1 - 1] == total, "rans: table ", t, " must start at 0 and end at ",
                total);
    for (int64_t k = 1; k < K1; ++k)
      TORCH_CHECK(c[t * K1 + k] >= c[t * K1 + k - 1], "rans: table ", t, " is not non-decreasing at ", k);
  }
  const int32_t* ix = index.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(ix[r] >= 0 && ix[r] < T, "rans: index[", r, "] = ", ix[r], " is not a table (0..", T - 1, ")");
}

at::Tensor rans_encode(const at::Tensor& symbols, const at::Tensor& cdfs, const at::Tensor& index,
                       int64_t precision) {
  TORCH_CHECK(symbols.device().is_cpu() && cdfs.device().is_cpu() && index.device().is_cpu(),
              "rans_encode: tensors must be on the CPU");
  TORCH_CHECK(symbols.dim() == 2 && symbols.scalar_type() == at::kInt && symbols.is_contiguous(),
              "rans_encode: symbols must be a contiguous int32 [rows, length] tensor");
  const int64_t R = symbols.size(0), L = symbols.size(1), K1 = cdfs.size(1);
  check_tables(cdfs, index, R, precision);
  const int32_t* sym = symbols.data_ptr<int32_t>();
  const int32_t* c = cdfs.data_ptr<int32_t>();
  const int32_t* ix = index.data_ptr<int32_t>();
  const int64_t n = R * L;
  // Per-symbol encoder constants (ryg_rans RansEncSymbol): x / freq as a multiply and shift.
  struct Sym { uint32_t x_max, rcp_freq, bias, cmpl_freq, rcp_shift; };
  const int64_t T = cdfs.size(0), K = K1 - 1;
  std::vector<Sym> table(static_cast<size_t>(T * K));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      const uint32_t start = static_cast<uint32_t>(c[t * K1 + k]);
      const uint32_t freq = static_cast<uint32_t>(c[t * K1 + k + 1]) - start;
      Sym& e = table[t * K + k];
      e.x_max = ((kRansL >> precision) << 8) * freq;
      e.cmpl_freq = (1u << precision) - freq;
      if (freq < 2) {  // freq 0 is rejected when met; freq 1: x / 1 = x
        e.rcp_freq = ~0u; e.rcp_shift = 0; e.bias = start + (1u << precision) - 1;
      } else {
        uint32_t shift = 0;
        while (freq > (1u << shift)) shift++;
        e.rcp_freq = static_cast<uint32_t>(((1ull << (shift + 31)) + freq - 1) / freq);
        e.rcp_shift = shift - 1;
        e.bias = start;
      }
    }
  // Each symbol emits at most `precision` bits; plus the 4 bytes of the final state.
  std::vector<uint8_t> buf(static_cast<size_t>(n) * 2 + 8);
  uint8_t* end = buf.data() + buf.size();
  uint8_t* ptr = end;
  uint32_t x = kRansL;
  for (int64_t r = R - 1; r >= 0; --r) {
    const int32_t* cdf = c + static_cast<int64_t>(ix[r]) * K1;
    const Sym* syms = table.data() + static_cast<int64_t>(ix[r]) * K;
    const int32_t* row = sym + r * L;
    for (int64_t l = L - 1; l >= 0; --l) {
      const int32_t s = row[l];
      TORCH_CHECK(s >= 0 && s < K && cdf[s + 1] > cdf[s], "rans_encode: symbol ", s, " at (", r, ", ", l,
                  ") is outside its table or has probability 0");
      const Sym& e = syms[s];
      while (x >= e.x_max) {
        *--ptr = static_cast<uint8_t>(x & 0xff);
        x >>= 8;
      }
      const uint32_t q = static_cast<uint32_t>((static_cast<uint64_t>(x) * e.rcp_freq) >> 32) >> e.rcp_shift;
      x = x + e.bias + q * e.cmpl_freq;
    }
  }
  ptr -= 4;
  ptr[0] = static_cast<uint8_t>(x);
  ptr[1] = static_cast<uint8_t>(x >> 8);
  ptr[2] = static_cast<uint8_t>(x >> 16);
  ptr[3] = static_cast<uint8_t>(x >> 24);
  const int64_t size = end - ptr;
  at::Tensor out = at::empty({size}, at::kByte);
  std::memcpy(out.data_ptr<uint8_t>(), ptr, static_cast<size_t>(size));
  return out;
}

at::Tensor rans_decode(const at::Tensor& data, const at::Tensor& cdfs, const at::Tensor& index, int64_t length,
                       int64_t precision) {
  TORCH_CHECK(data.device().is_cpu() && cdfs.device().is_cpu() && index.device().is_cpu(),
              "rans_decode: tensors must be on the CPU");
  TORCH_CHECK(data.dim() == 1 && data.scalar_type() == at::kByte && data.is_contiguous(),
              "rans_decode: data must be a contiguous uint8 vector");
  TORCH_CHECK(length >= 0, "rans_decode: length must be >= 0, got ", length);
  const int64_t R = index.size(0), K1 = cdfs.size(1), K = K1 - 1;
  check_tables(cdfs, index, R, precision);
  at::Tensor out = at::empty({R, length}, at::kInt);
  int32_t* sym = out.data_ptr<int32_t>();
  const int32_t* c = cdfs.data_ptr<int32_t>();
  const int32_t* ix = index.data_ptr<int32_t>();
  const uint8_t* ptr = data.data_ptr<uint8_t>();
  const uint8_t* end = ptr + data.numel();
  TORCH_CHECK(end - ptr >= 4, "rans_decode: stream is truncated (", end - ptr, " bytes, fewer than the 4 of the state)");
  uint32_t x = static_cast<uint32_t>(ptr[0]) | (static_cast<uint32_t>(ptr[1]) << 8) |
               (static_cast<uint32_t>(ptr[2]) << 16) | (static_cast<uint32_t>(ptr[3]) << 24);
  ptr += 4;
  const uint32_t mask = (1u << precision) - 1;
  // Per table, the symbol holding the first slot of each of 2^kBucketBits buckets; decoding starts
  // there and steps forward (rarely more than once) to the symbol holding the slot.
  constexpr int kBucketBits = 10;
  const int bucket_bits = precision < kBucketBits ? static_cast<int>(precision) : kBucketBits;
  const int bucket_shift = static_cast<int>(precision) - bucket_bits;
  const int64_t T = cdfs.size(0), B = int64_t{1} << bucket_bits;
  std::vector<int32_t> first(static_cast<size_t>(T * B));
  for (int64_t t = 0; t < T; ++t) {
    const int32_t* cdf = c + t * K1;
    int64_t s = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int32_t slot = static_cast<int32_t>(b << bucket_shift);
      while (s < K - 1 && cdf[s + 1] <= slot) ++s;
      first[t * B + b] = static_cast<int32_t>(s);
    }
  }
  bool overrun = false;
  for (int64_t r = 0; r < R && !overrun; ++r) {
    const int32_t* cdf = c + static_cast<int64_t>(ix[r]) * K1;
    const int32_t* start_of = first.data() + static_cast<int64_t>(ix[r]) * B;
    int32_t* row = sym + r * length;
    for (int64_t l = 0; l < length; ++l) {
      const int32_t slot = static_cast<int32_t>(x & mask);
      int64_t s = start_of[slot >> bucket_shift];
      while (cdf[s + 1] <= slot) ++s;  // cdf[K] = 2^precision > slot ends the walk
      const uint32_t start = static_cast<uint32_t>(cdf[s]);
      const uint32_t freq = static_cast<uint32_t>(cdf[s + 1]) - start;
      row[l] = static_cast<int32_t>(s);
      x = freq * (x >> precision) + (x & mask) - start;
      while (x < kRansL) {
        if (ptr == end) { overrun = true; break; }
        x = (x << 8) | *ptr++;
      }
      if (overrun) break;
    }
  }
  TORCH_CHECK(!overrun, "rans_decode: stream ended before all symbols were decoded (truncated or corrupt)");
  TORCH_CHECK(ptr == end && x == kRansL, "rans_decode: stream is corrupt (",
              end - ptr, " bytes left over, final state ", x, ")");
  return out;
}

// Table index of each float64 scale: the number of thresholds below it, as
// torch.searchsorted(thresholds, scales) counts (NaN: all of them), in one pass. below[k] holds the
// count of thresholds below the grid point k / 2^bits (k clamped to [0, below.size - 1], where every
// threshold is below); the thresholds are more than a grid step apart, so at most the one at
// below[k] can lie between k / 2^bits and the scale. fastae.codec.entropy.GaussianConditional.index.
at::Tensor grid_index(const at::Tensor& scales, const at::Tensor& below, const at::Tensor& thresholds, int64_t bits) {
  TORCH_CHECK(scales.scalar_type() == at::kDouble && thresholds.scalar_type() == at::kDouble &&
                  below.scalar_type() == at::kInt && below.dim() == 1 && below.numel() > 0 && thresholds.dim() == 1,
              "grid_index: expected float64 scales and thresholds [T] and int32 below [K + 1], got ",
              scales.scalar_type(), ", ", thresholds.scalar_type(), " ", thresholds.sizes(), " and ",
              below.scalar_type(), " ", below.sizes());
  TORCH_CHECK(bits >= 0 && bits <= 52, "grid_index: bits must be in 0..52, got ", bits);
  const at::Tensor s = scales.contiguous(), b = below.contiguous(), t = thresholds.contiguous();
  at::Tensor out = at::empty(s.sizes(), s.options().dtype(at::kInt));
  const double* sp = s.const_data_ptr<double>();
  const int32_t* bp = b.const_data_ptr<int32_t>();
  const double* tp = t.const_data_ptr<double>();
  int32_t* op = out.mutable_data_ptr<int32_t>();
  const int64_t last = b.numel() - 1, count = t.numel();
  const double unit = std::ldexp(1.0, static_cast<int>(bits));
  at::parallel_for(0, s.numel(), 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double v = sp[i];
      const double f = std::floor(v * unit);
      const int64_t k = v != v ? last : !(f >= 0.0) ? 0 : f >= static_cast<double>(last) ? last : static_cast<int64_t>(f);
      int32_t idx = bp[k];
      if (idx < count && tp[idx] < v) ++idx;
      op[i] = idx;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastae_C, m) {
  // rANS coder of the .fae format; see the top of csrc/rans.cpp.
  m.def("rans_encode(Tensor symbols, Tensor cdfs, Tensor index, int precision) -> Tensor");
  m.def("rans_decode(Tensor data, Tensor cdfs, Tensor index, int length, int precision) -> Tensor");
  m.def("grid_index(Tensor scales, Tensor below, Tensor thresholds, int bits) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastae_C, CompositeExplicitAutograd, m) {
  m.impl("rans_encode", &rans_encode);
  m.impl("rans_decode", &rans_decode);
}

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) { m.impl("grid_index", &grid_index); }
