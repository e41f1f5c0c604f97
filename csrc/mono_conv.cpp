// CPU kernels of fastae_C::mono_conv_{fwd,tfwd,wgrad}: the 3x3, stride-2, padding-1 convolution
// from one channel to C (a conv autoencoder's first layer on grey images) and its transpose from C
// channels to one (the last layer), forward and backward, on channels-last activations.
//
// Index relation of both: output/input pixel (i, j) of the C-channel side meets pixel
// (2i - 1 + ky, 2j - 1 + kx) of the one-channel side through tap (ky, kx). oneDNN runs these shapes
// as general convolutions, a C-wide dot product per one-channel pixel and tap spread over its
// blocked layouts: the transposed one took 2.5 ms (bf16) to 4.7 ms (fp32) at batch 256, 28x28, C 32
// on the 2-core AMD EPYC, for 14.5 M multiply-adds. Here each C-channel pixel is one contiguous
// vector of C values (fp32 accumulation, bf16/fp16 converted a row at a time) against the 9 x C
// weights; the row kernels (mono_conv_kernels.h) are built per CPU capability.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#define FASTAE_CAP_NS baseline
#include "mono_conv_kernels.h"
#undef FASTAE_CAP_NS

#include "convert.h"
#include "vec_dispatch.h"

namespace fastae {

#if defined(__GNUC__) && defined(__x86_64__)
#define FASTAE_MONO_DECLARE                                                                                    \
  void mono_conv_row(const float*, int64_t, const float*, const float*, float*, int64_t, int64_t);          \
  void mono_tconv_row(const float*, int64_t, const float*, float*, int64_t, int64_t);                        \
  void mono_wgrad_row(const float*, int64_t, const float*, int64_t, float*, int64_t);
namespace avx2 {  // mono_conv_avx2.cpp
FASTAE_MONO_DECLARE
}
namespace avx512 {  // mono_conv_avx512.cpp
FASTAE_MONO_DECLARE
}
#undef FASTAE_MONO_DECLARE
#endif

namespace {

// weight [C, 1, 3, 3] (either conv's layout for one channel) -> float [9][C]
std::vector<float> taps_by_channel(const at::Tensor& weight) {
  const int64_t C = weight.size(0);
  TORCH_CHECK(weight.numel() == 9 * C, "fastae_C::mono_conv: expected weight [C, 1, 3, 3], got ", weight.sizes());
  at::Tensor w = weight.reshape({C, 9}).t().contiguous().to(at::kFloat);
  const float* p = w.const_data_ptr<float>();
  return std::vector<float>(p, p + 9 * C);
}

std::vector<float> bias_values(const std::optional<at::Tensor>& bias, int64_t n) {
  if (!bias.has_value()) return std::vector<float>(n, 0.0f);
  TORCH_CHECK(bias->numel() == n, "fastae_C::mono_conv: expected bias of ", n, " values, got ", bias->sizes());
  at::Tensor b = bias->contiguous().to(at::kFloat);
  return std::vector<float>(b.const_data_ptr<float>(), b.const_data_ptr<float>() + n);
}

// One image row (three rows 2i-1..2i+1, zero outside the image) as float, W + 2 wide with a zero
// column either side.
template <typename T>
void padded_rows(const T* img, int64_t b, int64_t i, int64_t H, int64_t W, float* rows) {
  for (int ky = 0; ky < 3; ++ky) {
    const int64_t y = 2 * i - 1 + ky;
    float* dst = rows + ky * (W + 2);
    dst[0] = dst[W + 1] = 0.0f;
    if (y >= 0 && y < H) to_float(img + (b * H + y) * W, dst + 1, W);
    else std::fill(dst + 1, dst + W + 1, 0.0f);
  }
}

// img [B, 1, H, W] -> [B, C, oh, ow] channels-last: out = bias + sum over taps of img * weight.
template <typename T>
void conv_kernel(const T* img, const float* w, const float* bias, T* out, int64_t B, int64_t H, int64_t W,
                 int64_t oh, int64_t ow, int64_t C) {
  const auto row_kernel = FASTAE_SEGMENT(mono_conv_row);
  at::parallel_for(0, B * oh, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> acc(std::is_same_v<T, float> ? 0 : ow * C), rows(3 * (W + 2));
    for (int64_t r = r0; r < r1; ++r) {
      padded_rows(img, r / oh, r % oh, H, W, rows.data());
      if constexpr (std::is_same_v<T, float>) {  // straight into the output
        row_kernel(rows.data(), W, w, bias, out + r * ow * C, ow, C);
      } else {
        row_kernel(rows.data(), W, w, bias, acc.data(), ow, C);
        from_float(acc.data(), out + r * ow * C, ow * C);
      }
    }
  });
}

// x [B, C, h, w] channels-last -> [B, 1, H, W]: each input pixel's 9 dot products with the taps
// added into the output pixels they reach, plus bias.
template <typename T>
void tconv_kernel(const T* x, const float* w16, float bias, T* out, int64_t B, int64_t h, int64_t wd, int64_t H,
                  int64_t W, int64_t C) {
  const auto row_kernel = FASTAE_SEGMENT(mono_tconv_row);
  const int64_t PW = 2 * wd + 2;  // padded output row: x = 2j - 1 + kx lands at 2j + kx
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> px(wd * C), img((2 * h + 2) * PW), crop(H * W);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(img.begin(), img.end(), 0.0f);
      for (int64_t i = 0; i < h; ++i) {
        to_float(x + (b * h + i) * wd * C, px.data(), wd * C);
        row_kernel(px.data(), wd, w16, img.data() + 2 * i * PW, PW, C);
      }
      for (int64_t y = 0; y < H; ++y)  // padded row/column 0 is output -1
        for (int64_t xx = 0; xx < W; ++xx) crop[y * W + xx] = img[(y + 1) * PW + xx + 1] + bias;
      from_float(crop.data(), out + b * H * W, H * W);
    }
  });
}

// gw[c][tap] = sum over b, i, j of x[b, i, j, c] * img[b, 2i - 1 + ky, 2j - 1 + kx]; gb[c] = sum of x[..., c].
// Partial sums per block of kWgradImages images, added in block order: the same result for any
// thread count.
constexpr int64_t kWgradImages = 8;

template <typename T>
void wgrad_kernel(const T* x, const T* img, float* gw, float* gb, int64_t B, int64_t h, int64_t wd, int64_t H,
                  int64_t W, int64_t C) {
  const auto row_kernel = FASTAE_SEGMENT(mono_wgrad_row);
  const int64_t blocks = (B + kWgradImages - 1) / kWgradImages;
  std::vector<float> partial(blocks * 10 * C, 0.0f);
  at::parallel_for(0, blocks, 1, [&](int64_t k0, int64_t k1) {
    std::vector<float> px(wd * C), rows(3 * (W + 2));
    for (int64_t k = k0; k < k1; ++k) {
      float* acc = partial.data() + k * 10 * C;  // 9 taps, then the plain sum
      for (int64_t b = k * kWgradImages; b < std::min(B, (k + 1) * kWgradImages); ++b)
        for (int64_t i = 0; i < h; ++i) {
          padded_rows(img, b, i, H, W, rows.data());
          to_float(x + (b * h + i) * wd * C, px.data(), wd * C);
          row_kernel(rows.data(), W, px.data(), wd, acc, C);
        }
    }
  });
  std::vector<float> total(10 * C, 0.0f);
  for (int64_t k = 0; k < blocks; ++k)
    for (int64_t v = 0; v < 10 * C; ++v) total[v] += partial[k * 10 * C + v];
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < 9; ++t) gw[c * 9 + t] = total[t * C + c];
    gb[c] = total[9 * C + c];
  }
}

void check_image(const at::Tensor& img, const char* name) {
  TORCH_CHECK(img.dim() == 4 && img.size(1) == 1, "fastae_C::mono_conv: expected ", name, " [B, 1, H, W], got ",
              img.sizes());
}

void check_wide(const at::Tensor& x, int64_t C, const char* name) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == C, "fastae_C::mono_conv: expected ", name, " [B, ", C, ", h, w], got ",
              x.sizes());
}

int64_t half_size(int64_t n) { return (n - 1) / 2 + 1; }

// 1 -> C: img [B, 1, H, W] -> [B, C, (H-1)/2+1, (W-1)/2+1], channels-last.
at::Tensor mono_conv_fwd_cpu(const at::Tensor& img, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_image(img, "img");
  const int64_t B = img.size(0), H = img.size(2), W = img.size(3), C = weight.size(0);
  const int64_t oh = half_size(H), ow = half_size(W);
  const auto w = taps_by_channel(weight);
  const auto b = bias_values(bias, C);
  at::Tensor src = img.contiguous();
  at::Tensor out = at::empty({B, C, oh, ow}, img.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, img.scalar_type(), "mono_conv_fwd", [&] {
    conv_kernel<scalar_t>(src.const_data_ptr<scalar_t>(), w.data(), b.data(),
                           out.mutable_data_ptr<scalar_t>(), B, H, W, oh, ow, C);
  });
  return out;
}

// C -> 1, transposed: x [B, C, h, w] -> [B, 1, H, W] for an output size H x W whose halves are h x w.
at::Tensor mono_conv_tfwd_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                              int64_t H, int64_t W) {
  const int64_t C = weight.size(0);
  check_wide(x, C, "x");
  const int64_t B = x.size(0), h = x.size(2), wd = x.size(3);
  TORCH_CHECK(half_size(H) == h && half_size(W) == wd, "fastae_C::mono_conv: output size ", H, "x", W,
              " does not halve to the input's ", h, "x", wd);
  const auto w = taps_by_channel(weight);  // [9][C] -> [C][16], taps 9..15 zero
  std::vector<float> w16(C * 16, 0.0f);
  for (int64_t c = 0; c < C; ++c)
    for (int t = 0; t < 9; ++t) w16[c * 16 + t] = w[t * C + c];
  const float b = bias_values(bias, 1)[0];
  at::Tensor src = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty({B, 1, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mono_conv_tfwd", [&] {
    tconv_kernel<scalar_t>(src.const_data_ptr<scalar_t>(), w16.data(), b,
                           out.mutable_data_ptr<scalar_t>(), B, h, wd, H, W, C);
  });
  return out;
}

// Gradient of either convolution's weight [C, 1, 3, 3] from its C-channel side x [B, C, h, w] and
// one-channel side img [B, 1, H, W] (one of them the output's gradient), and the sums of x per
// channel [C] (the 1 -> C convolution's bias gradient when x is its output's gradient); float32.
std::tuple<at::Tensor, at::Tensor> mono_conv_wgrad_cpu(const at::Tensor& x, const at::Tensor& img) {
  check_image(img, "img");
  TORCH_CHECK(x.dim() == 4 && x.size(0) == img.size(0) && x.size(2) == half_size(img.size(2)) &&
                  x.size(3) == half_size(img.size(3)) && x.scalar_type() == img.scalar_type(),
              "fastae_C::mono_conv_wgrad: x ", x.sizes(), " ", x.scalar_type(), " does not match img ", img.sizes(),
              " ", img.scalar_type());
  const int64_t B = x.size(0), C = x.size(1), h = x.size(2), wd = x.size(3), H = img.size(2), W = img.size(3);
  at::Tensor xs = x.contiguous(at::MemoryFormat::ChannelsLast), is = img.contiguous();
  at::Tensor gw = at::empty({C, 1, 3, 3}, x.options().dtype(at::kFloat));
  at::Tensor gb = at::empty({C}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mono_conv_wgrad", [&] {
    wgrad_kernel<scalar_t>(xs.const_data_ptr<scalar_t>(), is.const_data_ptr<scalar_t>(),
                           gw.mutable_data_ptr<float>(), gb.mutable_data_ptr<float>(), B, h,
                           wd, H, W, C);
  });
  return {gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) {
  m.impl("mono_conv_fwd", &mono_conv_fwd_cpu);
  m.impl("mono_conv_tfwd", &mono_conv_tfwd_cpu);
  m.impl("mono_conv_wgrad", &mono_conv_wgrad_cpu);
}

}  // namespace fastae
