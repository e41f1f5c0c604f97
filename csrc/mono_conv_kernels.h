// The fp32 row kernels of mono_conv (mono_conv.cpp), compiled once per CPU capability like
// gdn_kernels.h: mono_conv.cpp includes this file for the baseline build, mono_conv_avx2.cpp and
// mono_conv_avx512.cpp for those (picked at run time). The channel count is a template argument
// where it is a common one (16, 32, 64), so that the C-wide loops unroll into whole registers.
//
// Include with FASTAE_CAP_NS defined: the namespace these functions are compiled into.
#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fastae {
namespace FASTAE_CAP_NS {

// One output row of the 1 -> C convolution: rows = the three input rows 2i-1..2i+1, each W + 2
// wide with a zero column either side; w [9][C]; out [ow][C] = bias + sum over taps.
template <int KC>
inline void mono_conv_row_t(const float* rows, int64_t W, const float* __restrict__ w, const float* __restrict__ bias,
                            float* __restrict__ out, int64_t ow, int64_t Crt) {
  const int64_t C = KC > 0 ? KC : Crt;
  for (int64_t j = 0; j < ow; ++j) {
    const float* r = rows + 2 * j;  // x = 2j - 1 + kx, shifted by the pad
    float* __restrict__ a = out + j * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      float s = bias[c];
      for (int t = 0; t < 9; ++t) s += r[(t / 3) * (W + 2) + t % 3] * w[t * C + c];
      a[c] = s;
    }
  }
}

// One input row of the C -> 1 transposed convolution: px [wd][C]; w16 [C][16] (taps 9..15 zero);
// adds each pixel's 9 dot products into out, three output rows 2i..2i+2 of width PW (padded: output
// row/column -1 is index 0).
template <int KC>
inline void mono_tconv_row_t(const float* px, int64_t wd, const float* w16, float* out, int64_t PW, int64_t Crt) {
  const int64_t C = KC > 0 ? KC : Crt;
  for (int64_t j = 0; j < wd; ++j) {
    const float* p = px + j * C;
    float d4[4][16] = {};  // four independent FMA chains, summed at the end
    int64_t c = 0;
    for (; c + 4 <= C; c += 4)
      for (int u = 0; u < 4; ++u) {
        const float v = p[c + u];
        const float* __restrict__ wc = w16 + (c + u) * 16;
#pragma omp simd
        for (int t = 0; t < 16; ++t) d4[u][t] += v * wc[t];
      }
    for (; c < C; ++c)
#pragma omp simd
      for (int t = 0; t < 16; ++t) d4[0][t] += p[c] * w16[c * 16 + t];
    for (int t = 0; t < 9; ++t) out[(t / 3) * PW + 2 * j + t % 3] += (d4[0][t] + d4[1][t]) + (d4[2][t] + d4[3][t]);
  }
}

// One C-channel row's contribution to the weight gradient: acc [10][C] += (per tap) img value * px,
// and (row 9) px itself; rows as for mono_conv_row_t.
template <int KC>
inline void mono_wgrad_row_t(const float* rows, int64_t W, const float* px, int64_t wd, float* acc, int64_t Crt) {
  const int64_t C = KC > 0 ? KC : Crt;
  for (int64_t j = 0; j < wd; ++j) {
    const float* __restrict__ p = px + j * C;
    for (int t = 0; t < 10; ++t) {
      const float v = t < 9 ? rows[(t / 3) * (W + 2) + 2 * j + t % 3] : 1.0f;
      float* __restrict__ a = acc + t * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) a[c] += v * p[c];
    }
  }
}

// f(std::integral_constant<int, KC>) with KC = C for the channel counts unrolled at compile time, else 0.
template <typename F>
inline void with_channels(int64_t C, F&& f) {
  switch (C) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

void mono_conv_row(const float* rows, int64_t W, const float* w, const float* bias, float* out, int64_t ow,
                   int64_t C) {
  with_channels(C, [&](auto kc) { mono_conv_row_t<decltype(kc)::value>(rows, W, w, bias, out, ow, C); });
}

void mono_tconv_row(const float* px, int64_t wd, const float* w16, float* out, int64_t PW, int64_t C) {
  with_channels(C, [&](auto kc) { mono_tconv_row_t<decltype(kc)::value>(px, wd, w16, out, PW, C); });
}

void mono_wgrad_row(const float* rows, int64_t W, const float* px, int64_t wd, float* acc, int64_t C) {
  with_channels(C, [&](auto kc) { mono_wgrad_row_t<decltype(kc)::value>(rows, W, px, wd, acc, C); });
}

}  // namespace FASTAE_CAP_NS
}  // namespace fastae
