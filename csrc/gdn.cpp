// CPU kernels of fastae_C::gdn_fwd and fastae_C::gdn_bwd: generalized divisive normalization fused
// over tiles of pixels. A tile's squares, its 1x1 convolution (a GEMM over channels) and the
// sqrt/rsqrt and product around it stay in cache, so x is read once and y written once where eager
// GDN makes five passes over memory; backward likewise reads grad, x and r once and writes dx once.
// The fp32 pieces (gdn_kernels.h) are compiled per CPU capability. Every value is computed in a
// fixed order, and the parameter gradients are summed per fixed chunk of tiles and then in chunk
// order, so results do not depend on the number of threads.
//
// A tile is a matrix of `rows` x `cols` elements with the tensor's row stride `ld`: for NCHW the
// channels of `len` consecutive pixels of one image (rows = C), for channels_last `len`
// consecutive pixels (rows of C channels) of the flattened batch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#define FASTAE_CAP_NS baseline
#include "gdn_kernels.h"
#undef FASTAE_CAP_NS

#include "convert.h"
#include "vec_dispatch.h"

#define FASTAE_DECLARE_GDN                                                                                 \
  void gdn_gemm(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t, float*, int64_t, bool); \
  void gdn_norm_row(const float*, const float*, const float*, int, int64_t, bool, float*, float*);          \
  void gdn_q_row(const float*, const float*, const float*, int64_t, bool, float*);                          \
  void gdn_dx_row(const float*, const float*, const float*, const float*, int64_t, float*);

namespace fastae {
#if defined(__GNUC__) && defined(__x86_64__)
namespace avx2 {  // gdn_avx2.cpp
FASTAE_DECLARE_GDN
}
namespace avx512 {  // gdn_avx512.cpp
FASTAE_DECLARE_GDN
}
namespace avx512bf16 {  // gdn_avx512bf16.cpp: the bfloat16 forward
void gdn_square_rows(const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*);
void gdn_square_pairs(const uint16_t*, int64_t, int64_t, int64_t, uint16_t*);
void gdn_gemm_bf16(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*, float*, int64_t);
void gdn_norm_row_bf16(const uint16_t*, const float*, const float*, int, int64_t, bool, uint16_t*, uint16_t*);
}

// bfloat16 inputs on a CPU with AVX512_BF16 (and AVX-512) take the bfloat16 GEMM in the forward.
bool has_bf16_dot() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return capability() == Capability::kAvx512 && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

// ... and where it has AMX too, the GEMM on AMX tiles through ATen's oneDNN brgemm micro-kernel
// (measured on a 2-core Xeon: IGDN of 96 x 256 x 384 bfloat16 in 8 ms instead of 20 ms).
bool has_amx_bf16() {
  static const bool ok = has_bf16_dot() && at::native::cpublas::could_pack(at::kBFloat16);
  return ok;
}
#else
bool has_bf16_dot() { return false; }
bool has_amx_bf16() { return false; }
#endif

namespace {

// float, half and bfloat16 (the kernels accumulate in fp32; float64 runs the torch oracle).
#define FASTAE_DISPATCH_GDN(TYPE, NAME, ...)                                        \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)          \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

constexpr int64_t kTile = 256;          // pixels per tile: a few C x kTile fp32 buffers fit in L2
constexpr int64_t kTilesPerChunk = 16;  // tiles whose parameter gradients are summed together

struct Geometry {
  bool cl;  // channels_last
  int64_t N, C, P, T, tiles_per_image, tiles;

  Geometry(const at::Tensor& x) {
    N = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
    cl = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t pixels = cl ? N * P : P;
    T = std::min(kTile, std::max<int64_t>(pixels, 1));
    tiles_per_image = (pixels + T - 1) / T;
    tiles = cl ? tiles_per_image : N * tiles_per_image;
  }
};

struct Tile {
  int64_t offset, rows, cols, ld, len;  // element offset of its first element; len pixels
};

Tile tile_at(const Geometry& g, int64_t i) {
  if (g.cl) {
    const int64_t r0 = i * g.T, len = std::min(g.T, g.N * g.P - r0);
    return {r0 * g.C, len, g.C, g.C, len};
  }
  const int64_t n = i / g.tiles_per_image, p0 = (i % g.tiles_per_image) * g.T, len = std::min(g.T, g.P - p0);
  return {n * g.C * g.P + p0, g.C, len, g.P, len};
}

// A tile of a tensor of scalar_t as fp32 rows: the tensor's own memory for float, else a converted copy.
template <typename T>
const float* load_tile(const T* base, const Tile& t, float* buf, int64_t& ld) {
  if constexpr (std::is_same_v<T, float>) {
    ld = t.ld;
    return base + t.offset;
  } else {
    for (int64_t i = 0; i < t.rows; ++i) to_float(base + t.offset + i * t.ld, buf + i * t.cols, t.cols);
    ld = t.cols;
    return buf;
  }
}

// Where a row function writes row i of an output tile: the tensor itself for float, else buf (then stored).
template <typename T>
float* out_row(T* base, const Tile& t, float* buf, int64_t i) {
  if constexpr (std::is_same_v<T, float>) return base + t.offset + i * t.ld;
  else return buf + i * t.cols;
}

template <typename T>
void store_tile(T* base, const Tile& t, const float* buf) {
  if constexpr (!std::is_same_v<T, float>) {
    for (int64_t i = 0; i < t.rows; ++i) from_float(buf + i * t.cols, base + t.offset + i * t.ld, t.cols);
  }
}

void square(const float* x, int64_t ld, const Tile& t, float* sq) {
  for (int64_t i = 0; i < t.rows; ++i) {
    const float* xr = x + i * ld;
    float* s = sq + i * t.cols;
#pragma omp simd
    for (int64_t j = 0; j < t.cols; ++j) s[j] = xr[j] * xr[j];
  }
}

void transpose(const float* a, int64_t rows, int64_t cols, float* out) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = a[i * cols + j];
}

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& gamma) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              op, ": expected x of dtype float32, bfloat16 or float16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 4 && (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)),
              op, ": expected x [N, C, H, W], NCHW- or channels_last-contiguous, got ", x.sizes(), " strides ",
              x.strides());
  TORCH_CHECK(gamma.dim() == 2 && gamma.size(0) == x.size(1) && gamma.size(1) == x.size(1) &&
                  gamma.scalar_type() == at::kFloat,
              op, ": expected float32 gamma [", x.size(1), ", ", x.size(1), "], got ", gamma.sizes(), " ",
              gamma.scalar_type());
}

// gamma for the bfloat16 GEMM, channels padded to kp (even) with zeros: NCHW needs it as rows
// [C][kp] (the A operand), channels_last as gamma^T packed [kp / 2][C][2] (the B operand).
std::vector<uint16_t> gamma_bf16(const at::Tensor& gamma, bool cl, int64_t kp) {
  const int64_t C = gamma.size(0);
  const float* gp = gamma.const_data_ptr<float>();
  std::vector<uint16_t> out(C * kp, 0);
  for (int64_t i = 0; i < C; ++i)
    for (int64_t k = 0; k < C; ++k)
      out[cl ? ((k / 2) * C + i) * 2 + k % 2 : i * kp + k] = c10::BFloat16(gp[i * C + k]).x;
  return out;
}

std::tuple<at::Tensor, at::Tensor> gdn_fwd_cpu(const at::Tensor& x, const at::Tensor& beta, const at::Tensor& gamma,
                                               bool inverse, bool save) {
  check_inputs("fastae_C::gdn_fwd", x, gamma);
  const Geometry g(x);
  const int64_t C = g.C, kp = (C + 1) / 2 * 2;
  const at::Tensor gm = gamma.contiguous(), gt = gamma.t().contiguous(), b = beta.to(at::kFloat).contiguous();
  at::Tensor y = at::empty_like(x), r = save ? at::empty_like(x) : at::empty({0}, x.options());
  const auto gemm = FASTAE_SEGMENT(gdn_gemm);
  const auto norm_row = FASTAE_SEGMENT(gdn_norm_row);
  const bool bf16_dot = x.scalar_type() == at::kBFloat16 && has_bf16_dot();
  const std::vector<uint16_t> gb = bf16_dot ? gamma_bf16(gm, g.cl, kp) : std::vector<uint16_t>();
  const bool amx = bf16_dot && has_amx_bf16();
  FASTAE_DISPATCH_GDN(x.scalar_type(), "gdn_fwd_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    scalar_t* rp = save ? r.mutable_data_ptr<scalar_t>() : nullptr;
    const float *gp = gm.const_data_ptr<float>(), *gtp = gt.const_data_ptr<float>(), *bp = b.const_data_ptr<float>();
    at::parallel_for(0, g.tiles, 1, [&](int64_t t0, int64_t t1) {
      const int64_t n = C * g.T;
      std::vector<float> xbuf(n), sq(n), norm(n), ybuf(n), rbuf(n);
      std::vector<uint16_t> sqb(bf16_dot ? kp * g.T : 0);
      for (int64_t i = t0; i < t1; ++i) {
        const Tile t = tile_at(g, i);
#if defined(__GNUC__) && defined(__x86_64__)
        if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
          if (bf16_dot) {  // bfloat16 squares and gamma, two products per fp32 lane; no fp32 copy of the tile
            const uint16_t* xb = reinterpret_cast<const uint16_t*>(xp) + t.offset;
            // The GEMM: oneDNN's brgemm micro-kernel (AMX tiles) where this CPU has AMX, else ours.
            // Both take the same packed operands and accumulate in fp32; the sums' order differs.
            if (g.cl) {
              avx512bf16::gdn_square_rows(xb, t.ld, t.rows, C, kp, sqb.data());
              if (amx)
                at::native::cpublas::brgemm(t.rows, C, kp, kp, C, C, false,
                                            reinterpret_cast<const at::BFloat16*>(sqb.data()),
                                            reinterpret_cast<const at::BFloat16*>(gb.data()), norm.data());
              else
                avx512bf16::gdn_gemm_bf16(t.rows, C, kp / 2, sqb.data(), kp, gb.data(), norm.data(), C);
            } else {
              avx512bf16::gdn_square_pairs(xb, t.ld, C, t.cols, sqb.data());
              if (amx)
                at::native::cpublas::brgemm(C, t.cols, kp, kp, t.cols, t.cols, false,
                                            reinterpret_cast<const at::BFloat16*>(gb.data()),
                                            reinterpret_cast<const at::BFloat16*>(sqb.data()), norm.data());
              else
                avx512bf16::gdn_gemm_bf16(C, t.cols, kp / 2, gb.data(), kp, sqb.data(), norm.data(), t.cols);
            }
            for (int64_t row = 0; row < t.rows; ++row) {
              const int64_t off = t.offset + row * t.ld;
              avx512bf16::gdn_norm_row_bf16(xb + row * t.ld, norm.data() + row * t.cols, g.cl ? bp : bp + row,
                                            g.cl ? 1 : 0, t.cols, inverse, reinterpret_cast<uint16_t*>(yp) + off,
                                            rp ? reinterpret_cast<uint16_t*>(rp) + off : nullptr);
            }
            continue;
          }
        }
#endif
        int64_t ld;
        const float* xf = load_tile(xp, t, xbuf.data(), ld);
        square(xf, ld, t, sq.data());
        if (g.cl) gemm(t.rows, C, C, sq.data(), C, gtp, C, norm.data(), C, false);  // [len, C] @ gamma^T
        else gemm(C, t.cols, C, gp, C, sq.data(), t.cols, norm.data(), t.cols, false);  // gamma @ [C, len]
        for (int64_t row = 0; row < t.rows; ++row) {
          norm_row(xf + row * ld, norm.data() + row * t.cols, g.cl ? bp : bp + row, g.cl ? 1 : 0, t.cols, inverse,
                   out_row(yp, t, ybuf.data(), row), rp ? out_row(rp, t, rbuf.data(), row) : nullptr);
        }
        store_tile(yp, t, ybuf.data());
        if (rp) store_tile(rp, t, rbuf.data());
      }
      if (amx) at::native::cpublas::brgemm_release();
    });
  });
  return {y, r};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gdn_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                           const at::Tensor& gamma, const at::Tensor& r, bool inverse,
                                                           bool need_x, bool need_params) {
  check_inputs("fastae_C::gdn_bwd", x, gamma);
  TORCH_CHECK(grad.sizes() == x.sizes() && r.sizes() == x.sizes() && grad.strides() == x.strides() &&
                  r.strides() == x.strides() && grad.scalar_type() == x.scalar_type() &&
                  r.scalar_type() == x.scalar_type(),
              "fastae_C::gdn_bwd: expected grad and r of x's shape, strides and dtype");
  const Geometry g(x);
  const int64_t C = g.C;
  const at::Tensor gm = gamma.contiguous(), gt = gamma.t().contiguous();
  at::Tensor dx = need_x ? at::empty_like(x) : at::empty({0}, x.options());
  const int64_t chunks = (g.tiles + kTilesPerChunk - 1) / kTilesPerChunk;
  at::Tensor dgamma_part = need_params ? at::zeros({chunks, C, C}, gamma.options()) : at::Tensor();
  at::Tensor dbeta_part = need_params ? at::zeros({chunks, C}, gamma.options()) : at::Tensor();
  const auto gemm = FASTAE_SEGMENT(gdn_gemm);
  const auto q_row = FASTAE_SEGMENT(gdn_q_row);
  const auto dx_row = FASTAE_SEGMENT(gdn_dx_row);
  FASTAE_DISPATCH_GDN(x.scalar_type(), "gdn_bwd_cpu", [&] {
    const scalar_t *gp = grad.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>(),
                   *rp = r.const_data_ptr<scalar_t>();
    scalar_t* dxp = need_x ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    const float *gmp = gm.const_data_ptr<float>(), *gtp = gt.const_data_ptr<float>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      const int64_t n = C * g.T;
      std::vector<float> gbuf(n), xbuf(n), rbuf(n), q(n), tb(n), dxbuf(n), sq(n), tr(n);
      for (int64_t chunk = c0; chunk < c1; ++chunk) {
        for (int64_t i = chunk * kTilesPerChunk; i < std::min(g.tiles, (chunk + 1) * kTilesPerChunk); ++i) {
          const Tile t = tile_at(g, i);
          int64_t ldg, ldx, ldr;
          const float* gf = load_tile(gp, t, gbuf.data(), ldg);
          const float* xf = load_tile(xp, t, xbuf.data(), ldx);
          const float* rf = load_tile(rp, t, rbuf.data(), ldr);
          for (int64_t row = 0; row < t.rows; ++row)
            q_row(gf + row * ldg, xf + row * ldx, rf + row * ldr, t.cols, inverse, q.data() + row * t.cols);
          if (need_x) {  // t = gamma^T q per pixel
            if (g.cl) gemm(t.rows, C, C, q.data(), C, gmp, C, tb.data(), C, false);  // [len, C] @ gamma
            else gemm(C, t.cols, C, gtp, C, q.data(), t.cols, tb.data(), t.cols, false);  // gamma^T @ [C, len]
            for (int64_t row = 0; row < t.rows; ++row)
              dx_row(gf + row * ldg, xf + row * ldx, rf + row * ldr, tb.data() + row * t.cols, t.cols,
                     out_row(dxp, t, dxbuf.data(), row));
            store_tile(dxp, t, dxbuf.data());
          }
          if (need_params) {  // d gamma += q (x^2)^T and d beta += q, summed over the tile's pixels
            float* dgp = dgamma_part.mutable_data_ptr<float>() + chunk * C * C;
            float* dbp = dbeta_part.mutable_data_ptr<float>() + chunk * C;
            square(xf, ldx, t, sq.data());
            if (g.cl) {  // q^T [C, len] @ sq [len, C]
              transpose(q.data(), t.rows, C, tr.data());
              gemm(C, C, t.rows, tr.data(), t.rows, sq.data(), C, dgp, C, true);
              for (int64_t row = 0; row < t.rows; ++row)
                for (int64_t c = 0; c < C; ++c) dbp[c] += q[row * C + c];
            } else {  // q [C, len] @ sq^T [len, C]
              transpose(sq.data(), C, t.cols, tr.data());
              gemm(C, C, t.cols, q.data(), t.cols, tr.data(), C, dgp, C, true);
              for (int64_t c = 0; c < C; ++c) {
                float s = 0.0f;
                for (int64_t j = 0; j < t.cols; ++j) s += q[c * t.cols + j];
                dbp[c] += s;
              }
            }
          }
        }
      }
    });
  });
  if (!need_params) return {dx, at::empty({0}, gamma.options()), at::empty({0}, gamma.options())};
  at::Tensor dgamma = at::zeros({C, C}, gamma.options()), dbeta = at::zeros({C}, gamma.options());
  float *dg = dgamma.mutable_data_ptr<float>(), *db = dbeta.mutable_data_ptr<float>();
  const float *dgs = dgamma_part.const_data_ptr<float>(), *dbs = dbeta_part.const_data_ptr<float>();
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {  // in chunk order: the same sum at any thread count
    for (int64_t k = 0; k < C * C; ++k) dg[k] += dgs[chunk * C * C + k];
    for (int64_t k = 0; k < C; ++k) db[k] += dbs[chunk * C + k];
  }
  return {dx, dbeta, dgamma};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CPU, m) {
  m.impl("gdn_fwd", &gdn_fwd_cpu);
  m.impl("gdn_bwd", &gdn_bwd_cpu);
}

}  // namespace fastae
