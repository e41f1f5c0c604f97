// loss_kernels.h compiled for AVX-512 (F, DQ, BW, VL); loss.cpp calls it only where the CPU has them.
#if defined(__GNUC__) && defined(__x86_64__)
#define FASTAE_ISA_AVX512
#include "isa_begin.h"
#include "loss_kernels.h"
#pragma GCC pop_options
#endif
