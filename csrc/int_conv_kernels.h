// int_conv_row (int_conv.h) for one CPU capability: int_conv.cpp includes this file for the
// baseline build (portable C++), int_conv_avx2.cpp and int_conv_avx512.cpp for those, with the
// macros of the target defined. The inner product multiplies pairs of int16 activations by pairs
// of int8 weights (widened to int16) and adds both products to an int32 lane (pmaddwd), exact
// because the caller bounds every partial sum below 2^31; then a scalar, shared rescaling.
//
// Include with FASTAE_CAP_NS defined: the namespace these functions are compiled into.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "int_conv.h"

#if defined(__AVX512BW__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fastae {
namespace FASTAE_CAP_NS {

namespace {

#if defined(__AVX512BW__)
using IVec = __m512i;
constexpr int kLanes = 16, kRows = 6, kVecs = 4;  // 24 accumulators of 32 registers
inline IVec izero() { return _mm512_setzero_si512(); }
inline IVec iload(const int8_t* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline IVec ipair(const int16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}
#if defined(__AVX512VNNI__)
// vpdpwssd: both products and the add to the lane in one instruction, the same int32 (no saturation).
inline IVec imadd(IVec acc, IVec a, IVec w) { return _mm512_dpwssd_epi32(acc, a, w); }
#else
inline IVec imadd(IVec acc, IVec a, IVec w) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, w)); }
#endif
inline void istore(int32_t* p, IVec v) { _mm512_storeu_si512(p, v); }
#elif defined(__AVX2__)
using IVec = __m256i;
constexpr int kLanes = 8, kRows = 6, kVecs = 2;  // 12 accumulators of 16 registers
inline IVec izero() { return _mm256_setzero_si256(); }
inline IVec iload(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline IVec ipair(const int16_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
inline IVec imadd(IVec acc, IVec a, IVec w) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w)); }
inline void istore(int32_t* p, IVec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
#else
constexpr int kLanes = 16, kRows = 1, kVecs = 4;  // the portable build's block: one output by 64 channels
#endif

#if defined(__AVX512BW__) || defined(__AVX2__)
// R outputs x0.. of the row by NV vectors of output channels from co0. Named accumulators, not
// an array: GCC keeps an array of vectors in memory and writes it back on every step.
#define FASTAE_IC_ROWS(X, v) X(0, v) X(1, v) X(2, v) X(3, v) X(4, v) X(5, v)
#define FASTAE_IC_ALL(X) FASTAE_IC_ROWS(X, 0) FASTAE_IC_ROWS(X, 1) FASTAE_IC_ROWS(X, 2) FASTAE_IC_ROWS(X, 3)
template <int R, int NV>
void block(const IntConvRow& a, int64_t x0, int64_t co0, int32_t* acc_out) {
#define FASTAE_IC_ZERO(r, v) IVec acc_##r##_##v = izero();
  FASTAE_IC_ALL(FASTAE_IC_ZERO)
#undef FASTAE_IC_ZERO
  const int64_t cin2 = a.cin / 2, step = a.si * a.cin;
  for (int64_t t = a.t0; t < a.t1; ++t) {
    const int16_t* in = a.x + ((a.si * a.y + a.taps[2 * t]) * a.wp + a.si * x0 + a.taps[2 * t + 1]) * a.cin;
    const int8_t* wt = a.w + (t * cin2 * a.coutp + co0) * 2;
    for (int64_t k = 0; k < cin2; ++k, in += 2, wt += 2 * a.coutp) {
      const IVec w0 = iload(wt);
      const IVec w1 = NV > 1 ? iload(wt + 2 * kLanes) : izero();
      const IVec w2 = NV > 2 ? iload(wt + 4 * kLanes) : izero();
      const IVec w3 = NV > 3 ? iload(wt + 6 * kLanes) : izero();
#define FASTAE_IC_MADD(r, v) \
  if constexpr (R > r && NV > v) acc_##r##_##v = imadd(acc_##r##_##v, a##r, w##v);
#define FASTAE_IC_ROW(r)                                    \
  if constexpr (R > r) {                                    \
    const IVec a##r = ipair(in + r * step);                 \
    FASTAE_IC_MADD(r, 0) FASTAE_IC_MADD(r, 1) FASTAE_IC_MADD(r, 2) FASTAE_IC_MADD(r, 3) \
  }
      FASTAE_IC_ROW(0) FASTAE_IC_ROW(1) FASTAE_IC_ROW(2) FASTAE_IC_ROW(3) FASTAE_IC_ROW(4) FASTAE_IC_ROW(5)
#undef FASTAE_IC_ROW
#undef FASTAE_IC_MADD
    }
  }
#define FASTAE_IC_STORE(r, v) \
  if constexpr (R > r && NV > v) istore(acc_out + r * kVecs * kLanes + v * kLanes, acc_##r##_##v);
  FASTAE_IC_ALL(FASTAE_IC_STORE)
#undef FASTAE_IC_STORE
}
#undef FASTAE_IC_ALL
#undef FASTAE_IC_ROWS

template <int R>
void block_rows(int nv, const IntConvRow& a, int64_t x0, int64_t co0, int32_t* acc) {
  static_assert(kVecs <= 4, "block names four vectors of accumulators per row");
  switch (nv) {
    case 1: return block<R, 1>(a, x0, co0, acc);
    case 2: return block<R, (kVecs >= 2 ? 2 : 1)>(a, x0, co0, acc);
    case 3: return block<R, (kVecs >= 3 ? 3 : 1)>(a, x0, co0, acc);
    default: return block<R, kVecs>(a, x0, co0, acc);
  }
}
#else
// One output x by n <= 64 output channels from co0: plain loops over contiguous channels, which
// the compiler vectorizes for the target.
void block_portable(const IntConvRow& a, int64_t x, int64_t co0, int64_t n, int32_t* acc) {
  for (int64_t j = 0; j < n; ++j) acc[j] = 0;
  const int64_t cin2 = a.cin / 2;
  for (int64_t t = a.t0; t < a.t1; ++t) {
    const int16_t* in = a.x + ((a.si * a.y + a.taps[2 * t]) * a.wp + a.si * x + a.taps[2 * t + 1]) * a.cin;
    const int8_t* wt = a.w + (t * cin2 * a.coutp + co0) * 2;
    for (int64_t k = 0; k < cin2; ++k, wt += 2 * a.coutp) {
      const int32_t a0 = in[2 * k], a1 = in[2 * k + 1];
      for (int64_t j = 0; j < n; ++j) acc[j] += a0 * wt[2 * j] + a1 * wt[2 * j + 1];
    }
  }
}
#endif

// The rescaling of every build, floor((v * m + 2^(s-1)) / 2^s) for v = acc + bias, computed in
// double so that it vectorizes: |v| < 2^31 and m < 2^21 make every intermediate an integer (or an
// integer times 2^-s) below 2^53, which double represents exactly, so no operation rounds and the
// result is the integer one on every build and every lane width.
inline double rescale_one(double v, double mp, double mn, double half, double inv, double lo, double hi) {
  const double q = std::floor((v * (v >= 0.0 ? mp : mn) + half) * inv);
  return q < lo ? lo : q > hi ? hi : q;
}

template <typename T>
void rescale(const IntConvRow& a, const int32_t* acc, int64_t x0, int rows, int64_t co0, int64_t width) {
  T* out = static_cast<T*>(a.out);
  const int64_t n = std::min(a.cout - co0, width);
  const double lo = double(a.lo), hi = double(a.hi);
  const double *bias = a.scale + co0, *mp = bias + a.cout, *mn = mp + a.cout, *half = mn + a.cout,
               *inv = half + a.cout;
  for (int r = 0; r < rows; ++r) {
    const int32_t* ac = acc + r * kVecs * kLanes;
    T* o = out + (x0 + r) * a.out_step + co0;
    int64_t j = 0;
#if defined(__AVX512BW__)
    const __m512d vlo = _mm512_set1_pd(lo), vhi = _mm512_set1_pd(hi), zero = _mm512_setzero_pd();
    for (; j + 8 <= n; j += 8) {
      const __m512d v = _mm512_add_pd(_mm512_cvtepi32_pd(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ac + j))),
                                      _mm512_loadu_pd(bias + j));
      const __m512d m = _mm512_mask_blend_pd(_mm512_cmp_pd_mask(v, zero, _CMP_GE_OQ), _mm512_loadu_pd(mn + j),
                                             _mm512_loadu_pd(mp + j));
      __m512d q = _mm512_mul_pd(_mm512_add_pd(_mm512_mul_pd(v, m), _mm512_loadu_pd(half + j)), _mm512_loadu_pd(inv + j));
      q = _mm512_min_pd(_mm512_max_pd(_mm512_roundscale_pd(q, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), vlo), vhi);
      const __m256i i = _mm512_cvtpd_epi32(q);
      if constexpr (sizeof(T) == 4) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j), i);
      else _mm_storeu_si128(reinterpret_cast<__m128i*>(o + j), _mm256_cvtepi32_epi16(i));
    }
#elif defined(__AVX2__)
    const __m256d vlo = _mm256_set1_pd(lo), vhi = _mm256_set1_pd(hi), zero = _mm256_setzero_pd();
    for (; j + 4 <= n; j += 4) {
      const __m256d v = _mm256_add_pd(_mm256_cvtepi32_pd(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ac + j))),
                                      _mm256_loadu_pd(bias + j));
      const __m256d m = _mm256_blendv_pd(_mm256_loadu_pd(mn + j), _mm256_loadu_pd(mp + j),
                                         _mm256_cmp_pd(v, zero, _CMP_GE_OQ));
      __m256d q = _mm256_mul_pd(_mm256_add_pd(_mm256_mul_pd(v, m), _mm256_loadu_pd(half + j)), _mm256_loadu_pd(inv + j));
      q = _mm256_min_pd(_mm256_max_pd(_mm256_floor_pd(q), vlo), vhi);
      const __m128i i = _mm256_cvtpd_epi32(q);
      if constexpr (sizeof(T) == 4) _mm_storeu_si128(reinterpret_cast<__m128i*>(o + j), i);
      else _mm_storel_epi64(reinterpret_cast<__m128i*>(o + j), _mm_packs_epi32(i, i));
    }
#endif
    for (; j < n; ++j)
      o[j] = static_cast<T>(rescale_one(double(ac[j]) + bias[j], mp[j], mn[j], half[j], inv[j], lo, hi));
  }
}

}  // namespace

void int_conv_row(const IntConvRow& a) {
  constexpr int64_t W = int64_t(kVecs) * kLanes;
  int32_t acc[kRows * kVecs * kLanes];
  for (int64_t co0 = 0; co0 < a.coutp; co0 += W) {
    const int nv = int(std::min<int64_t>(kVecs, (a.coutp - co0) / kLanes));
#if !defined(__AVX512BW__) && !defined(__AVX2__)
    for (int64_t x = 0; x < a.nx; ++x) {
      block_portable(a, x, co0, nv * int64_t(kLanes), acc);
      if (a.out32) rescale<int32_t>(a, acc, x, 1, co0, nv * int64_t(kLanes));
      else rescale<int16_t>(a, acc, x, 1, co0, nv * int64_t(kLanes));
    }
#else
    for (int64_t x0 = 0; x0 < a.nx; x0 += kRows) {
      const int rows = int(std::min<int64_t>(kRows, a.nx - x0));
      switch (rows) {
        case 1: block_rows<1>(nv, a, x0, co0, acc); break;
        case 2: block_rows<2>(nv, a, x0, co0, acc); break;
        case 3: block_rows<3>(nv, a, x0, co0, acc); break;
        case 4: block_rows<(kRows >= 4 ? 4 : 1)>(nv, a, x0, co0, acc); break;
        case 5: block_rows<(kRows >= 5 ? 5 : 1)>(nv, a, x0, co0, acc); break;
        default: block_rows<kRows>(nv, a, x0, co0, acc); break;
      }
      if (a.out32) rescale<int32_t>(a, acc, x0, rows, co0, nv * int64_t(kLanes));
      else rescale<int16_t>(a, acc, x0, rows, co0, nv * int64_t(kLanes));
    }
#endif
  }
}

}  // namespace FASTAE_CAP_NS
}  // namespace fastae
