// One output row of fastae_C::int_conv (int_conv.cpp), computed by int_conv_kernels.h, which is
// compiled once per CPU capability: the baseline in int_conv.cpp, AVX2 in int_conv_avx2.cpp,
// AVX-512 in int_conv_avx512.cpp. Integer arithmetic: every build gives the same integers.
#pragma once

#include <cstdint>

namespace fastae {

struct IntConvRow {
  const int16_t* x;     // the image's zero-padded input [Hp][wp][cin], channels last
  int64_t wp, cin;      // padded width; channels (even)
  const int8_t* w;      // weights packed [T][cin / 2][coutp][2]: input channel pairs next to each other
  int64_t coutp, cout;  // packed output channels (a multiple of 16) and real ones
  const int32_t* taps;  // (dy, dx) per tap, in padded coordinates
  int64_t t0, t1;       // the phase's taps
  int64_t si, y, nx;    // input stride, phase row, outputs in the row
  const double* scale;  // per output channel, 5 x cout: bias, mult_pos, mult_neg, 2^(shift-1), 2^-shift
  int64_t lo, hi;       // clip
  void* out;            // the row's first output (int16 or int32)
  bool out32;           // int32 outputs, else int16
  int64_t out_step;     // elements between consecutive outputs of the row
};

// Accumulates, rescales and stores one phase row: for x < nx and co < cout,
// out[x * out_step + co] = clamp((acc * m + 2^(s-1)) >> s, lo, hi), acc = bias[co] + the sum over
// taps t and channels c of x[si*y + dy_t][si*x + dx_t][c] * w[t][c][co].
#define FASTAE_DECLARE_INT_CONV void int_conv_row(const IntConvRow& a);

namespace baseline {
FASTAE_DECLARE_INT_CONV
}
#if defined(__GNUC__) && defined(__x86_64__)
namespace avx2 {
FASTAE_DECLARE_INT_CONV
}
namespace avx512 {
FASTAE_DECLARE_INT_CONV
}
namespace avx512vnni {
FASTAE_DECLARE_INT_CONV
}
#endif

}  // namespace fastae
