// int_conv_kernels.h compiled for AVX-512 (F, BW) and VNNI; int_conv.cpp calls it only where the CPU has them.
#if defined(__GNUC__) && defined(__x86_64__)
// Headers that are not per-capability come first, compiled for the baseline, so that no inline
// function shared with other files is emitted with AVX-512 instructions.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "int_conv.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512vnni,avx2,fma")
#define __AVX2__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VNNI__ 1
#define FASTAE_CAP_NS avx512vnni
#include "int_conv_kernels.h"
#pragma GCC pop_options
#endif
