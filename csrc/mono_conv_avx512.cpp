// mono_conv_kernels.h compiled for AVX-512 (F, DQ, BW, VL); mono_conv.cpp calls it only where the CPU has them.
#if defined(__GNUC__) && defined(__x86_64__)
#define FASTAE_ISA_AVX512
#include "isa_begin.h"
#include "mono_conv_kernels.h"
#pragma GCC pop_options
#endif
