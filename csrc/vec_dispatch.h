// Which build of the vectorized CPU kernels (loss_kernels.h) to call: baseline (compiled in
// loss.cpp), AVX2+FMA (loss_avx2.cpp) or AVX-512 (loss_avx512.cpp), picked once from the CPU.
#pragma once

#include <cstdint>

#define FASTAE_DECLARE_SEGMENTS                                                                        \
  double recon_loss_segment(int, const float*, const float*, const float*, int64_t, float, float*, float*, \
                            int64_t*);                                                                   \
  double gaussian_kl_segment(const float*, const float*, int64_t, float, float*, float*, float*);         \
  void act_forward_segment(int, const float*, float*, int64_t);                                          \
  void act_grad_segment(int, const float*, const float*, float*, float*, int64_t);

namespace fastae {

namespace baseline {  // loss.cpp
FASTAE_DECLARE_SEGMENTS
}

#if defined(__GNUC__) && defined(__x86_64__)
namespace avx2 {  // loss_avx2.cpp
FASTAE_DECLARE_SEGMENTS
}
namespace avx512 {  // loss_avx512.cpp
FASTAE_DECLARE_SEGMENTS
}

enum class Capability { kBaseline, kAvx2, kAvx512 };

inline Capability capability() {
  static const Capability cap = [] {
    __builtin_cpu_init();  // the CPU model may not be read yet during static initialisation
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
      return Capability::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Capability::kAvx2;
    return Capability::kBaseline;
  }();
  return cap;
}
#define FASTAE_SEGMENT(name)                                                  \
  (capability() == Capability::kAvx512 ? avx512::name                        \
   : capability() == Capability::kAvx2 ? avx2::name                           \
                                       : baseline::name)
#else
#define FASTAE_SEGMENT(name) baseline::name
#endif

}  // namespace fastae
