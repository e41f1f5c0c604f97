// CPU kernel of fastae_C::int_conv: an integer convolution given as phases of taps (see
// fastae/ops/int_conv.py), int16 activations by int8 weights (packed by the caller with input
// channels in pairs) into int32, rescaled per output channel. The rows of every phase are split
// among threads (integers: the result depends on neither the split nor the
// instruction set, which `isa` can force: -1 the best this CPU has, 0 baseline, 1 AVX2, 2 AVX-512).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#define FASTAE_CAP_NS baseline
#include "int_conv_kernels.h"
#undef FASTAE_CAP_NS

#include "vec_dispatch.h"

namespace fastae {
namespace {

using RowFn = void (*)(const IntConvRow&);

template <typename In, typename Out>
void requantize_rows(const In* acc, const int32_t* mult, const int32_t* shift, int64_t lo, int64_t hi, int64_t rows,
                     int64_t C, Out* out) {
  const int32_t* mult_neg = mult + C;
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const In* a = acc + r * C;
      Out* o = out + r * C;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t v = a[c];
        const uint64_t m = static_cast<uint64_t>(static_cast<int64_t>(v >= 0 ? mult[c] : mult_neg[c]));
        // product and rounding term modulo 2^64 (torch's int64 wraps the same), then an arithmetic shift
        const int64_t p = static_cast<int64_t>(static_cast<uint64_t>(v) * m + (uint64_t{1} << (shift[c] - 1)));
        const int64_t q = p >> shift[c];
        o[c] = static_cast<Out>(q < lo ? lo : q > hi ? hi : q);
      }
    }
  });
}

RowFn row_kernel(int64_t isa) {
#if defined(__GNUC__) && defined(__x86_64__)
  const Capability cap = capability();
  static const bool vnni = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni");
  }();
  const int64_t best = cap == Capability::kAvx512 ? (vnni ? 3 : 2) : cap == Capability::kAvx2 ? 1 : 0;
  TORCH_CHECK(isa >= -1 && isa <= best, "fastae_C::int_conv: isa ", isa, " is not available on this CPU (",
              "0 baseline, 1 AVX2, 2 AVX-512, 3 AVX-512 VNNI; this CPU has up to ", best, ")");
  const int64_t use = isa < 0 ? best : isa;
  return use == 3   ? avx512vnni::int_conv_row
         : use == 2 ? avx512::int_conv_row
         : use == 1 ? avx2::int_conv_row
                    : baseline::int_conv_row;
#else
  TORCH_CHECK(isa == -1 || isa == 0, "fastae_C::int_conv: only the baseline build (isa 0) exists here, got ", isa);
  return baseline::int_conv_row;
#endif
}

at::Tensor int_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mult,
                        const at::Tensor& shift, const at::Tensor& taps, const at::Tensor& phases, int64_t si,
                        int64_t so, int64_t out_h, int64_t out_w, int64_t lo, int64_t hi, at::ScalarType out_dtype,
                        int64_t isa) {
  TORCH_CHECK(x.scalar_type() == at::kShort && x.dim() == 4 && x.is_contiguous() && x.size(3) % 2 == 0,
              "fastae_C::int_conv: expected a contiguous int16 x [N, Hp, Wp, Cin] with Cin even, got ", x.sizes());
  const int64_t N = x.size(0), Hp = x.size(1), Wp = x.size(2), cin = x.size(3), cout = bias.numel();
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 4 && weight.size(1) * 2 == cin &&
                  weight.size(2) % 16 == 0 && weight.size(2) >= cout && weight.size(3) == 2 && weight.is_contiguous(),
              "fastae_C::int_conv: expected contiguous int8 weights [T, ", cin / 2, ", Cout rounded up to 16, 2], got ",
              weight.sizes());
  const int64_t T = weight.size(0), coutp = weight.size(2);
  for (const auto* t : {&bias, &shift})
    TORCH_CHECK(t->scalar_type() == at::kInt && t->numel() == cout, "fastae_C::int_conv: expected int32 [", cout, "]");
  TORCH_CHECK(mult.scalar_type() == at::kInt && mult.numel() == 2 * cout, "fastae_C::int_conv: expected int32 mult [2, ",
              cout, "]");
  TORCH_CHECK(taps.scalar_type() == at::kInt && taps.numel() == 2 * T && phases.scalar_type() == at::kInt &&
                  phases.numel() % 4 == 0,
              "fastae_C::int_conv: expected int32 taps [T, 2] and phases [P, 4]");
  TORCH_CHECK(out_dtype == at::kShort || out_dtype == at::kInt, "fastae_C::int_conv: out_dtype must be int16 or int32");
  TORCH_CHECK(si >= 1 && so >= 1 && out_h >= 0 && out_w >= 0, "fastae_C::int_conv: bad strides or output size");
  const RowFn kernel = row_kernel(isa);

  const at::Tensor tp = taps.contiguous(), ph = phases.contiguous();
  const int32_t* tap = tp.const_data_ptr<int32_t>();
  struct Phase {
    int64_t py, px, t0, t1, ny, nx;
  };
  std::vector<Phase> plan;
  std::vector<int64_t> first_row{0};  // of each phase in the flat list of (phase, image, row) tasks
  for (int64_t p = 0; p < ph.numel() / 4; ++p) {
    const int32_t* v = ph.const_data_ptr<int32_t>() + 4 * p;
    Phase f{v[0], v[1], v[2], v[3], 0, 0};
    TORCH_CHECK(f.t0 >= 0 && f.t0 <= f.t1 && f.t1 <= T && f.py >= 0 && f.px >= 0,
                "fastae_C::int_conv: bad phase ", p);
    f.ny = out_h > f.py ? (out_h - f.py + so - 1) / so : 0;
    f.nx = out_w > f.px ? (out_w - f.px + so - 1) / so : 0;
    for (int64_t t = f.t0; t < f.t1 && f.ny > 0 && f.nx > 0; ++t) {  // every read inside the padded input
      TORCH_CHECK(tap[2 * t] >= 0 && tap[2 * t + 1] >= 0 && si * (f.ny - 1) + tap[2 * t] < Hp &&
                      si * (f.nx - 1) + tap[2 * t + 1] < Wp,
                  "fastae_C::int_conv: tap ", t, " of phase ", p, " reads outside the padded input");
    }
    plan.push_back(f);
    first_row.push_back(first_row.back() + N * f.ny);
  }

  // The rescaling's numbers as doubles (exact: see int_conv_kernels.h), once per call.
  const at::Tensor b = bias.contiguous(), m = mult.contiguous(), s = shift.contiguous();
  TORCH_CHECK(cout == 0 || (m.min().item<int32_t>() >= 0 && m.max().item<int32_t>() < (1 << 21) &&
                            s.min().item<int32_t>() >= 1 && s.max().item<int32_t>() <= 40),
              "fastae_C::int_conv: expected multipliers in [0, 2^21) and shifts in [1, 40]");
  std::vector<double> scale(5 * cout);
  for (int64_t co = 0; co < cout; ++co) {
    const int32_t sh = s.const_data_ptr<int32_t>()[co];
    scale[co] = b.const_data_ptr<int32_t>()[co];
    scale[cout + co] = m.const_data_ptr<int32_t>()[co];
    scale[2 * cout + co] = m.const_data_ptr<int32_t>()[cout + co];
    scale[3 * cout + co] = std::ldexp(1.0, sh - 1);
    scale[4 * cout + co] = std::ldexp(1.0, -sh);
  }
  at::Tensor out = at::zeros({N, out_h, out_w, cout}, x.options().dtype(out_dtype));
  const int16_t* xp = x.const_data_ptr<int16_t>();
  char* op = static_cast<char*>(out.mutable_data_ptr());
  const int64_t osize = out.element_size();
  at::parallel_for(0, first_row.back(), 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t p = 0;
      while (r >= first_row[p + 1]) ++p;
      const Phase& f = plan[p];
      const int64_t n = (r - first_row[p]) / f.ny, y = (r - first_row[p]) % f.ny;
      IntConvRow a{};
      a.x = xp + n * Hp * Wp * cin;
      a.wp = Wp, a.cin = cin, a.w = weight.const_data_ptr<int8_t>(), a.coutp = coutp, a.cout = cout;
      a.taps = tap, a.t0 = f.t0, a.t1 = f.t1, a.si = si, a.y = y, a.nx = f.nx;
      a.scale = scale.data();
      a.lo = lo, a.hi = hi, a.out32 = out_dtype == at::kInt, a.out_step = so * cout;
      a.out = op + (((n * out_h + so * y + f.py) * out_w + f.px) * cout) * osize;
      kernel(a);
    }
  });
  return out;
}

// fastae_C::int_requantize: clamp((acc * m + 2^(shift-1)) >> shift, lo, hi) over the last dim (channels),
// m = mult[0] where acc >= 0 else mult[1], in int64 as fastae.ops.int_conv.requantize computes it in
// torch (products wrap modulo 2^64 as torch's do; shifts are arithmetic), in one pass.
at::Tensor int_requantize_cpu(const at::Tensor& acc, const at::Tensor& mult, const at::Tensor& shift, int64_t lo,
                              int64_t hi, at::ScalarType out_dtype) {
  TORCH_CHECK((acc.scalar_type() == at::kInt || acc.scalar_type() == at::kLong) && acc.dim() >= 1,
              "fastae_C::int_requantize: expected int32 or int64 acc [..., C], got ", acc.scalar_type(), " ",
              acc.sizes());
  const int64_t C = acc.size(-1);
  TORCH_CHECK(mult.scalar_type() == at::kInt && mult.numel() == 2 * C && shift.scalar_type() == at::kInt &&
                  shift.numel() == C,
              "fastae_C::int_requantize: expected int32 mult [2, ", C, "] and shift [", C, "]");
  TORCH_CHECK(out_dtype == at::kShort || out_dtype == at::kInt || out_dtype == at::kLong,
              "fastae_C::int_requantize: out_dtype must be int16, int32 or int64");
  TORCH_CHECK(lo <= hi, "fastae_C::int_requantize: lo ", lo, " > hi ", hi);
  const at::Tensor a = acc.contiguous(), m = mult.contiguous(), s = shift.contiguous();
  TORCH_CHECK(C == 0 || (s.min().item<int32_t>() >= 1 && s.max().item<int32_t>() <= 62),
              "fastae_C::int_requantize: expected shifts in [1, 62]");
  at::Tensor out = at::empty(a.sizes(), a.options().dtype(out_dtype));
  const int64_t rows = C ? a.numel() / C : 0;
  const int32_t* mp = m.const_data_ptr<int32_t>();
  const int32_t* sp = s.const_data_ptr<int32_t>();
  AT_DISPATCH_INDEX_TYPES(a.scalar_type(), "int_requantize", [&] {
    using In = index_t;
    const In* ap = a.const_data_ptr<In>();
    AT_DISPATCH_SWITCH(out_dtype, "int_requantize_out",
                       AT_DISPATCH_CASE(at::kShort, [&] {
                         requantize_rows<In, int16_t>(ap, mp, sp, lo, hi, rows, C, out.mutable_data_ptr<int16_t>());
                       }) AT_DISPATCH_CASE(at::kInt, [&] {
                         requantize_rows<In, int32_t>(ap, mp, sp, lo, hi, rows, C, out.mutable_data_ptr<int32_t>());
                       }) AT_DISPATCH_CASE(at::kLong, [&] {
                         requantize_rows<In, int64_t>(ap, mp, sp, lo, hi, rows, C, out.mutable_data_ptr<int64_t>());
                       }));
  });
  return out;
}

// fastae_C::int_add_clamp: clamp(a + b, -limit, limit) of int32 a and b (the sum exact in int64), int32.
at::Tensor int_add_clamp_cpu(const at::Tensor& a, const at::Tensor& b, int64_t limit) {
  TORCH_CHECK(a.scalar_type() == at::kInt && b.scalar_type() == at::kInt && a.sizes() == b.sizes(),
              "fastae_C::int_add_clamp: expected two int32 tensors of one shape, got ", a.scalar_type(), " ",
              a.sizes(), " and ", b.scalar_type(), " ", b.sizes());
  TORCH_CHECK(limit >= 0 && limit <= INT32_MAX, "fastae_C::int_add_clamp: limit must be in [0, 2^31 - 1], got ",
              limit);
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int32_t* xp = x.const_data_ptr<int32_t>();
  const int32_t* yp = y.const_data_ptr<int32_t>();
  int32_t* op = out.mutable_data_ptr<int32_t>();
  at::parallel_for(0, x.numel(), 65536, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t v = static_cast<int64_t>(xp[i]) + yp[i];
      op[i] = static_cast<int32_t>(v < -limit ? -limit : v > limit ? limit : v);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) {
  m.impl("int_conv", &int_conv_cpu);
  m.impl("int_requantize", &int_requantize_cpu);
  m.impl("int_add_clamp", &int_add_clamp_cpu);
}

}  // namespace fastae
