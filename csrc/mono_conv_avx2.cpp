// mono_conv_kernels.h compiled for AVX2+FMA; mono_conv.cpp calls it only where the CPU has both.
#if defined(__GNUC__) && defined(__x86_64__)
// Headers that are not per-capability come first, compiled for the baseline, so that no inline
// function shared with other files is emitted with AVX2 instructions.
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// The pragma lets the code below use AVX2 and FMA but does not define the macros by which
// sleef.h and ATen's vec headers declare their AVX2 variants.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1  // every CPU with AVX2 has F16C (the half conversions)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FASTAE_CAP_NS avx2
#include "mono_conv_kernels.h"
#pragma GCC pop_options
#endif
