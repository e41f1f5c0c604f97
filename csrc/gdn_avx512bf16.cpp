// The bfloat16 GEMM of the fused GDN forward (gdn.cpp) on CPUs with AVX512_BF16: the squares
// rounded to bfloat16 (as an eager bfloat16 GDN rounds x * x) meet bfloat16 gamma in vdpbf16ps,
// two products per fp32 lane and instruction, accumulated in fp32: twice the fp32 FMA rate. gdn.cpp
// calls these only for bfloat16 inputs on a CPU that has the instructions.
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,avx2,fma")

namespace fastae {
namespace avx512bf16 {

namespace {

inline __mmask16 first(int64_t n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1); }

// 16 bfloat16 values (the first n) as fp32.
inline __m512 load_bf16(const uint16_t* p, int64_t n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first(n), p)), 16));
}

// 16 fp32 squares, rounded to nearest even bfloat16.
inline __m256i square_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(x, x)); }

}  // namespace

// out[r][k] = bf16(x[r * ld + k]^2) for k < cols, 0 up to kp (cols rounded up to even): bfloat16
// rows whose channel pairs are side by side, the A operand of gdn_gemm_bf16.
void gdn_square_rows(const uint16_t* x, int64_t ld, int64_t rows, int64_t cols, int64_t kp, uint16_t* out) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < cols; k += 16)
      _mm256_mask_storeu_epi16(out + r * kp + k, first(cols - k), square_bf16(load_bf16(x + r * ld + k, cols - k)));
    for (int64_t j = cols; j < kp; ++j) out[r * kp + j] = 0;
  }
}

// out[(p * len + t) * 2 + h] = bf16(x[(2p + h) * ld + t]^2) (0 for channel 2p + h >= channels): the
// squares of a channel-major bfloat16 tile packed with channel pairs side by side, the B operand.
void gdn_square_pairs(const uint16_t* x, int64_t ld, int64_t channels, int64_t len, uint16_t* out) {
  for (int64_t p = 0; 2 * p < channels; ++p) {
    const uint16_t* x0 = x + 2 * p * ld;
    const uint16_t* x1 = 2 * p + 1 < channels ? x0 + ld : nullptr;
    uint32_t* o = reinterpret_cast<uint32_t*>(out) + p * len;
    for (int64_t t = 0; t < len; t += 16) {
      const __m512i lo = _mm512_cvtepu16_epi32(square_bf16(load_bf16(x0 + t, len - t)));
      const __m512i hi = x1 ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(square_bf16(load_bf16(x1 + t, len - t))), 16)
                            : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(o + t, first(len - t), _mm512_or_si512(lo, hi));
    }
  }
}

// y = x * f(norm + beta) in bfloat16 (f = sqrt or 1/sqrt, in fp32), r = f(norm + beta) when r is not
// null; beta one value for the row (beta_step 0) or one per element (1). gdn_norm_row for bfloat16
// rows, without their fp32 copies.
void gdn_norm_row_bf16(const uint16_t* x, const float* norm, const float* beta, int beta_step, int64_t n,
                       bool inverse, uint16_t* y, uint16_t* r) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first(n - i);
    const __m512 b = beta_step ? _mm512_maskz_loadu_ps(m, beta + i) : _mm512_set1_ps(beta[0]);
    const __m512 s = _mm512_sqrt_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(m, norm + i), b));
    const __m512 f = inverse ? s : _mm512_div_ps(one, s);
    _mm256_mask_storeu_epi16(y + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(load_bf16(x + i, n - i), f)));
    if (r) _mm256_mask_storeu_epi16(r + i, m, (__m256i)_mm512_cvtneps_pbh(f));
  }
}

namespace {

// Rows R of C[.., j : j + 32] = A @ B: R rows of A (bfloat16 pairs broadcast) by two vectors of 16
// columns of B, 2R fp32 accumulators in named registers.
template <int R>
void gemm_block(int64_t K2, const uint32_t* a, int64_t la, const uint32_t* b, int64_t N, __mmask16 m0, __mmask16 m1,
                float* c, int64_t ldc) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00,
         c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  for (int64_t k = 0; k < K2; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, b + k * N);
    const __m512bh b1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, b + k * N + 16);
#define FASTAE_BF16_ROW(r)                                                \
  if constexpr (R > r) {                                                  \
    const __m512bh ar = (__m512bh)_mm512_set1_epi32(int(a[r * la + k])); \
    c##r##0 = _mm512_dpbf16_ps(c##r##0, ar, b0);                          \
    c##r##1 = _mm512_dpbf16_ps(c##r##1, ar, b1);                          \
  }
    FASTAE_BF16_ROW(0) FASTAE_BF16_ROW(1) FASTAE_BF16_ROW(2) FASTAE_BF16_ROW(3) FASTAE_BF16_ROW(4) FASTAE_BF16_ROW(5)
#undef FASTAE_BF16_ROW
  }
#define FASTAE_BF16_STORE(r)                                      \
  if constexpr (R > r) {                                          \
    _mm512_mask_storeu_ps(c + r * ldc, m0, c##r##0);              \
    if (m1) _mm512_mask_storeu_ps(c + r * ldc + 16, m1, c##r##1); \
  }
  FASTAE_BF16_STORE(0) FASTAE_BF16_STORE(1) FASTAE_BF16_STORE(2) FASTAE_BF16_STORE(3) FASTAE_BF16_STORE(4)
  FASTAE_BF16_STORE(5)
#undef FASTAE_BF16_STORE
}

}  // namespace

// C[M, N] = A[M, 2 * K2] @ B[2 * K2, N] in fp32: A bfloat16 rows with leading dim lda (even; pairs
// along k), B packed [K2][N][2]. Each output is a sum over k in increasing pairs whatever the tiling.
void gdn_gemm_bf16(int64_t M, int64_t N, int64_t K2, const uint16_t* A, int64_t lda, const uint16_t* B, float* C,
                   int64_t ldc) {
  const uint32_t* a32 = reinterpret_cast<const uint32_t*>(A);
  const uint32_t* b32 = reinterpret_cast<const uint32_t*>(B);
  const int64_t la = lda / 2;
  for (int64_t j = 0; j < N; j += 32) {
    const __mmask16 m0 = first(N - j), m1 = first(N - j - 16);
    int64_t i = 0;
    for (; i + 6 <= M; i += 6) gemm_block<6>(K2, a32 + i * la, la, b32 + j, N, m0, m1, C + i * ldc + j, ldc);
    const uint32_t* a = a32 + i * la;
    float* c = C + i * ldc + j;
    switch (M - i) {
      case 5: gemm_block<5>(K2, a, la, b32 + j, N, m0, m1, c, ldc); break;
      case 4: gemm_block<4>(K2, a, la, b32 + j, N, m0, m1, c, ldc); break;
      case 3: gemm_block<3>(K2, a, la, b32 + j, N, m0, m1, c, ldc); break;
      case 2: gemm_block<2>(K2, a, la, b32 + j, N, m0, m1, c, ldc); break;
      case 1: gemm_block<1>(K2, a, la, b32 + j, N, m0, m1, c, ldc); break;
      default: break;
    }
  }
}

}  // namespace avx512bf16
}  // namespace fastae

#pragma GCC pop_options
#endif
