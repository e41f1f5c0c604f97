// The fp32 pieces of the fused GDN (gdn.cpp): a GEMM for the 1x1 convolution over channels and
// the element-wise rows around it, written once on at::vec::Vectorized<float> and compiled once
// per CPU capability: gdn.cpp includes this file for the baseline build, gdn_avx2.cpp and
// gdn_avx512.cpp for those (picked at run time). Every GEMM output is a sum over k in increasing
// order whatever the tiling, so results do not depend on how the caller splits the work.
//
// Include with FASTAE_CAP_NS defined: the namespace these functions are compiled into.
#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace fastae {
namespace FASTAE_CAP_NS {

using GdnVec = at::vec::Vectorized<float>;

// C[0:R, 0:n] (=|+=) A[0:R, 0:K] @ B[0:K, 0:n] for R <= 6 and n <= 2 vectors: R rows of A broadcast
// against two vector columns of B, 2R accumulators in registers. Named variables, not arrays: GCC
// keeps an array of twelve vectors in memory and stores it back on every k.
#define FASTAE_GDN_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int R, bool FULL>
inline void gemm_block(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                       int64_t n, bool accumulate) {
  constexpr int64_t V = GdnVec::size();
  const int64_t n0 = FULL ? V : (n < V ? n : V), n1 = FULL ? V : (n > V ? n - V : 0);
#define FASTAE_GDN_ZERO(r) GdnVec c0_##r(0.0f), c1_##r(0.0f);
  FASTAE_GDN_ROWS(FASTAE_GDN_ZERO)
#undef FASTAE_GDN_ZERO
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    const GdnVec b0 = FULL ? GdnVec::loadu(b) : GdnVec::loadu(b, n0);
    const GdnVec b1 = FULL ? GdnVec::loadu(b + V) : (n1 > 0 ? GdnVec::loadu(b + V, n1) : GdnVec(0.0f));
#define FASTAE_GDN_FMA(r)                          \
  if constexpr (R > r) {                           \
    const GdnVec a(A[r * lda + k]);                \
    c0_##r = at::vec::fmadd(a, b0, c0_##r);        \
    c1_##r = at::vec::fmadd(a, b1, c1_##r);        \
  }
    FASTAE_GDN_ROWS(FASTAE_GDN_FMA)
#undef FASTAE_GDN_FMA
  }
#define FASTAE_GDN_STORE(r)                                            \
  if constexpr (R > r) {                                               \
    float* c = C + r * ldc;                                            \
    if (accumulate) {                                                  \
      c0_##r = c0_##r + GdnVec::loadu(c, n0);                          \
      if (n1 > 0) c1_##r = c1_##r + GdnVec::loadu(c + V, n1);          \
    }                                                                  \
    c0_##r.store(c, n0);                                               \
    if (n1 > 0) c1_##r.store(c + V, n1);                               \
  }
  FASTAE_GDN_ROWS(FASTAE_GDN_STORE)
#undef FASTAE_GDN_STORE
}
#undef FASTAE_GDN_ROWS

template <bool FULL>
inline void gemm_rows(int64_t rows, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                      int64_t ldc, int64_t n, bool accumulate) {
  constexpr int kRows = 6;
  int64_t i = 0;
  for (; i + kRows <= rows; i += kRows)
    gemm_block<kRows, FULL>(K, A + i * lda, lda, B, ldb, C + i * ldc, ldc, n, accumulate);
  const float* a = A + i * lda;
  float* c = C + i * ldc;
  switch (rows - i) {
    case 5: gemm_block<5, FULL>(K, a, lda, B, ldb, c, ldc, n, accumulate); break;
    case 4: gemm_block<4, FULL>(K, a, lda, B, ldb, c, ldc, n, accumulate); break;
    case 3: gemm_block<3, FULL>(K, a, lda, B, ldb, c, ldc, n, accumulate); break;
    case 2: gemm_block<2, FULL>(K, a, lda, B, ldb, c, ldc, n, accumulate); break;
    case 1: gemm_block<1, FULL>(K, a, lda, B, ldb, c, ldc, n, accumulate); break;
    default: break;
  }
}

// C[M, N] = A[M, K] @ B[K, N] (accumulate: C += ...), row-major with leading dims lda, ldb, ldc.
// Blocks of two vectors of columns: B's panel stays in L1 while the rows of A go by.
void gdn_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
              int64_t ldc, bool accumulate) {
  constexpr int64_t W = 2 * GdnVec::size();
  for (int64_t j = 0; j < N; j += W) {
    if (N - j >= W) gemm_rows<true>(M, K, A, lda, B + j, ldb, C + j, ldc, W, accumulate);
    else gemm_rows<false>(M, K, A, lda, B + j, ldb, C + j, ldc, N - j, accumulate);
  }
}

// y = x * f(norm + beta), f = sqrt (inverse) or 1/sqrt; r = f(norm + beta) when r is not null.
// beta: one value for the row (beta_step 0) or one per element (beta_step 1).
void gdn_norm_row(const float* x, const float* norm, const float* beta, int beta_step, int64_t n, bool inverse,
                  float* y, float* r) {
  constexpr int64_t V = GdnVec::size();
  for (int64_t i = 0; i < n; i += V) {
    const int64_t m = n - i < V ? n - i : V;
    const GdnVec b = beta_step ? GdnVec::loadu(beta + i, m) : GdnVec(beta[0]);
    const GdnVec v = GdnVec::loadu(norm + i, m) + b;
    const GdnVec f = inverse ? v.sqrt() : v.rsqrt();
    (GdnVec::loadu(x + i, m) * f).store(y + i, m);
    if (r) f.store(r + i, m);
  }
}

// q = g * x * f'(norm) from r = f(norm): f' = 1 / (2 r) (inverse) or -r^3 / 2.
void gdn_q_row(const float* g, const float* x, const float* r, int64_t n, bool inverse, float* q) {
  constexpr int64_t V = GdnVec::size();
  const GdnVec half(0.5f), minus_half(-0.5f);
  for (int64_t i = 0; i < n; i += V) {
    const int64_t m = n - i < V ? n - i : V;
    const GdnVec rv = GdnVec::loadu(r + i, m);
    const GdnVec fp = inverse ? half / rv : minus_half * rv * rv * rv;
    (GdnVec::loadu(g + i, m) * GdnVec::loadu(x + i, m) * fp).store(q + i, m);
  }
}

// dx = g * r + 2 * x * t.
void gdn_dx_row(const float* g, const float* x, const float* r, const float* t, int64_t n, float* dx) {
  constexpr int64_t V = GdnVec::size();
  const GdnVec two(2.0f);
  for (int64_t i = 0; i < n; i += V) {
    const int64_t m = n - i < V ? n - i : V;
    const GdnVec v = GdnVec::loadu(g + i, m) * GdnVec::loadu(r + i, m) +
                     two * GdnVec::loadu(x + i, m) * GdnVec::loadu(t + i, m);
    v.store(dx + i, m);
  }
}

// Rows of bfloat16 / half tiles to fp32 and back (round to nearest even), vectorized.
void gdn_bf16_to_float(const c10::BFloat16* src, float* dst, int64_t n) { at::vec::convert(src, dst, n); }
void gdn_half_to_float(const c10::Half* src, float* dst, int64_t n) { at::vec::convert(src, dst, n); }
void gdn_float_to_bf16(const float* src, c10::BFloat16* dst, int64_t n) { at::vec::convert(src, dst, n); }
void gdn_float_to_half(const float* src, c10::Half* dst, int64_t n) { at::vec::convert(src, dst, n); }

}  // namespace FASTAE_CAP_NS
}  // namespace fastae
