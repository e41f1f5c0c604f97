// Opens a per-capability section of a kernel header built on ATen's Vectorized (gdn_kernels.h,
// loss_kernels.h, mono_conv_kernels.h), for the *_avx2.cpp / *_avx512.cpp files that include it
// after defining FASTAE_ISA_AVX2 or FASTAE_ISA_AVX512; they close it with
// `#pragma GCC pop_options`. (The int_conv shims keep their own, narrower, preambles: the integer
// kernels must compile exactly as they do.)
//
// Headers that are not per-capability come first, compiled for the baseline, so that no inline
// function shared with other files is emitted with AVX2 / AVX-512 instructions. The target pragma
// lets the code after it use those instructions but does not define the macros by which sleef.h
// and ATen's vec headers declare their AVX2 / AVX-512 variants, so they are defined here. Every CPU
// with AVX2 has F16C (the half conversions).
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "activation.h"  // its inline functions, too, must be compiled for the baseline

#pragma GCC push_options
#if defined(FASTAE_ISA_AVX512)
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,f16c")
#define __AVX512F__ 1
#define __AVX512DQ__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define FASTAE_CAP_NS avx512
#elif defined(FASTAE_ISA_AVX2)
#pragma GCC target("avx2,fma,f16c")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define FASTAE_CAP_NS avx2
#else
#error "define FASTAE_ISA_AVX2 or FASTAE_ISA_AVX512 before including isa_begin.h"
#endif
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
