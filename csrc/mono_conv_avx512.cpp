// mono_conv_kernels.h compiled for AVX-512 (F, DQ, BW, VL); mono_conv.cpp calls it only where the CPU has them.
#if defined(__GNUC__) && defined(__x86_64__)
// Headers that are not per-capability come first, compiled for the baseline, so that no inline
// function shared with other files is emitted with AVX-512 instructions.
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")
// The pragma lets the code below use these instructions but does not define the macros by
// which sleef.h and ATen's vec headers declare their AVX-512 variants.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __AVX512F__ 1
#define __AVX512DQ__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define FASTAE_CAP_NS avx512
#include "mono_conv_kernels.h"
#pragma GCC pop_options
#endif
