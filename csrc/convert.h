// Rows of bfloat16 / half to fp32 and back (round to nearest even), with the build of this CPU:
// at::vec::convert compiled per capability in gdn_kernels.h (gdn.cpp, gdn_avx2.cpp,
// gdn_avx512.cpp). Shared by the GDN and linear_act kernels; other types convert element by
// element.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "vec_dispatch.h"

#define FASTAE_DECLARE_CONVERT                                   \
  void gdn_bf16_to_float(const c10::BFloat16*, float*, int64_t); \
  void gdn_half_to_float(const c10::Half*, float*, int64_t);     \
  void gdn_float_to_bf16(const float*, c10::BFloat16*, int64_t); \
  void gdn_float_to_half(const float*, c10::Half*, int64_t);

namespace fastae {
namespace baseline {
FASTAE_DECLARE_CONVERT
}
#if defined(__GNUC__) && defined(__x86_64__)
namespace avx2 {
FASTAE_DECLARE_CONVERT
}
namespace avx512 {
FASTAE_DECLARE_CONVERT
}
#endif

template <typename T>
void to_float(const T* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename T>
void from_float(const float* src, T* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

inline void to_float(const c10::BFloat16* src, float* dst, int64_t n) { FASTAE_SEGMENT(gdn_bf16_to_float)(src, dst, n); }
inline void to_float(const c10::Half* src, float* dst, int64_t n) { FASTAE_SEGMENT(gdn_half_to_float)(src, dst, n); }
inline void from_float(const float* src, c10::BFloat16* dst, int64_t n) {
  FASTAE_SEGMENT(gdn_float_to_bf16)(src, dst, n);
}
inline void from_float(const float* src, c10::Half* dst, int64_t n) { FASTAE_SEGMENT(gdn_float_to_half)(src, dst, n); }

}  // namespace fastae
