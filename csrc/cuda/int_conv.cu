// CUDA kernel of fastae_C::int_conv (fastae/ops/int_conv.py): the integer convolution of the
// entropy networks, one launch per phase of the plan. A thread computes one output (position,
// channel): for each tap and each pair of input channels one __dp2a_lo, which multiplies two int16
// activations by two int8 weights and adds both products to the int32 accumulator, exact because
// the caller bounds every partial sum below 2^31. Consecutive threads take consecutive output
// channels, so the packed weights [T][Cin / 2][Cout16][2] are read coalesced and the activation
// pair is one broadcast. The rescaling is int64 arithmetic, the same integers as the C++, Triton
// and torch paths.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace fastae {
namespace {

constexpr int kThreads = 256;

struct Phase {
  int64_t t0, t1, py, px, ny, nx;
};

template <typename T>
__global__ void int_conv_kernel(const int16_t* __restrict__ x, const int8_t* __restrict__ w,
                                const int32_t* __restrict__ bias, const int32_t* __restrict__ mult,
                                const int32_t* __restrict__ shift, const int32_t* __restrict__ taps,
                                T* __restrict__ out, Phase ph, int64_t positions, int64_t hp, int64_t wp, int64_t cin,
                                int64_t cout, int64_t coutp, int64_t si, int64_t so, int64_t out_h, int64_t out_w,
                                int64_t lo, int64_t hi) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= positions * cout) return;
  const int64_t m = idx / cout, co = idx % cout;
  const int64_t n = m / (ph.ny * ph.nx), y = (m / ph.nx) % ph.ny, xx = m % ph.nx;
  const int64_t cin2 = cin / 2;
  int32_t acc = 0;
  for (int64_t t = ph.t0; t < ph.t1; ++t) {
    // Cin is even, so every pixel starts on a 4-byte boundary: one int32 load is a channel pair.
    const int32_t* in = reinterpret_cast<const int32_t*>(
        x + ((n * hp + si * y + taps[2 * t]) * wp + si * xx + taps[2 * t + 1]) * cin);
    const int16_t* wt = reinterpret_cast<const int16_t*>(w + (t * cin2 * coutp + co) * 2);
    for (int64_t k = 0; k < cin2; ++k)
      acc = __dp2a_lo(__ldg(in + k), static_cast<int>(static_cast<uint16_t>(__ldg(wt + k * coutp))), acc);
  }
  const int64_t v = static_cast<int64_t>(acc) + bias[co];
  const int64_t s = shift[co];
  int64_t q = (v * static_cast<int64_t>(v >= 0 ? mult[co] : mult[cout + co]) + (int64_t(1) << (s - 1))) >> s;
  q = q < lo ? lo : (q > hi ? hi : q);
  out[((n * out_h + so * y + ph.py) * out_w + so * xx + ph.px) * cout + co] = static_cast<T>(q);
}

at::Tensor int_conv_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mult,
                         const at::Tensor& shift, const at::Tensor& taps, const at::Tensor& phases, int64_t si,
                         int64_t so, int64_t out_h, int64_t out_w, int64_t lo, int64_t hi, at::ScalarType out_dtype,
                         int64_t isa) {
  TORCH_CHECK(isa == -1, "fastae_C::int_conv: isa selects a CPU build; on CUDA it must be -1, got ", isa);
  TORCH_CHECK(x.scalar_type() == at::kShort && x.dim() == 4 && x.is_contiguous() && x.size(3) % 2 == 0,
              "fastae_C::int_conv: expected a contiguous int16 x [N, Hp, Wp, Cin] with Cin even, got ", x.sizes());
  const int64_t N = x.size(0), Hp = x.size(1), Wp = x.size(2), cin = x.size(3), cout = bias.numel();
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 4 && weight.size(1) * 2 == cin &&
                  weight.size(2) % 16 == 0 && weight.size(2) >= cout && weight.size(3) == 2 && weight.is_contiguous(),
              "fastae_C::int_conv: expected contiguous int8 weights [T, ", cin / 2, ", Cout rounded up to 16, 2], got ",
              weight.sizes());
  TORCH_CHECK(bias.scalar_type() == at::kInt && shift.scalar_type() == at::kInt && shift.numel() == cout &&
                  mult.scalar_type() == at::kInt && mult.numel() == 2 * cout,
              "fastae_C::int_conv: expected int32 bias [Cout], mult [2, Cout] and shift [Cout]");
  TORCH_CHECK(out_dtype == at::kShort || out_dtype == at::kInt, "fastae_C::int_conv: out_dtype must be int16 or int32");
  for (const auto* t : {&weight, &bias, &mult, &shift, &taps})
    TORCH_CHECK(t->device() == x.device(), "fastae_C::int_conv: expected every tensor on ", x.device());
  const int64_t T = weight.size(0), coutp = weight.size(2);
  // The plan is a few dozen integers: read on the host, where the reads are also checked.
  const at::Tensor tp = taps.to(at::kCPU).contiguous(), ph = phases.to(at::kCPU).contiguous();
  TORCH_CHECK(tp.scalar_type() == at::kInt && tp.numel() == 2 * T && ph.scalar_type() == at::kInt &&
                  ph.numel() % 4 == 0,
              "fastae_C::int_conv: expected int32 taps [T, 2] and phases [P, 4]");
  const int32_t* tap = tp.const_data_ptr<int32_t>();
  std::vector<Phase> plan;
  for (int64_t p = 0; p < ph.numel() / 4; ++p) {
    const int32_t* v = ph.const_data_ptr<int32_t>() + 4 * p;
    Phase f{v[2], v[3], v[0], v[1], 0, 0};
    TORCH_CHECK(f.t0 >= 0 && f.t0 <= f.t1 && f.t1 <= T && f.py >= 0 && f.px >= 0, "fastae_C::int_conv: bad phase ", p);
    f.ny = out_h > f.py ? (out_h - f.py + so - 1) / so : 0;
    f.nx = out_w > f.px ? (out_w - f.px + so - 1) / so : 0;
    for (int64_t t = f.t0; t < f.t1 && f.ny > 0 && f.nx > 0; ++t)
      TORCH_CHECK(tap[2 * t] >= 0 && tap[2 * t + 1] >= 0 && si * (f.ny - 1) + tap[2 * t] < Hp &&
                      si * (f.nx - 1) + tap[2 * t + 1] < Wp,
                  "fastae_C::int_conv: tap ", t, " of phase ", p, " reads outside the padded input");
    plan.push_back(f);
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::zeros({N, out_h, out_w, cout}, x.options().dtype(out_dtype));
  const at::Tensor b = bias.contiguous(), m = mult.contiguous(), s = shift.contiguous(), td = taps.contiguous();
  for (const Phase& f : plan) {
    const int64_t positions = N * f.ny * f.nx;
    if (positions == 0 || cout == 0) continue;
    const int64_t blocks = (positions * cout + kThreads - 1) / kThreads;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "fastae_C::int_conv: too many outputs for one launch");
    auto launch = [&](auto* o) {
      int_conv_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<int16_t>(), weight.const_data_ptr<int8_t>(), b.const_data_ptr<int32_t>(),
          m.const_data_ptr<int32_t>(), s.const_data_ptr<int32_t>(), td.const_data_ptr<int32_t>(), o, f, positions, Hp,
          Wp, cin, cout, coutp, si, so, out_h, out_w, lo, hi);
    };
    if (out_dtype == at::kInt) launch(out.mutable_data_ptr<int32_t>());
    else launch(out.mutable_data_ptr<int16_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CUDA, m) { m.impl("int_conv", &int_conv_cuda); }

}  // namespace fastae
