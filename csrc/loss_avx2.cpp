// loss_kernels.h compiled for AVX2+FMA; loss.cpp calls it only where the CPU has both.
#if defined(__GNUC__) && defined(__x86_64__)
#define FASTAE_ISA_AVX2
#include "isa_begin.h"
#include "loss_kernels.h"
#pragma GCC pop_options
#endif
