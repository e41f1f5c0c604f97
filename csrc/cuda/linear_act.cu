// CUDA kernels of fastae_C::linear_act_{fwd,bwd}: act(x @ weight.T + bias) and its backward.
//
// Forward: one cuBLASLt matmul whose epilogue adds the bias and, where cuBLASLt has the
// activation, applies it too (relu, tanh-GELU; the latter can also store the pre-activation
// for backward), so out is written once. For the other activations (cuBLASLt's GELU is the
// tanh form, so exact gelu is one of them) the matmul adds the bias and one vectorized
// elementwise pass applies the activation, in place unless the pre-activation is kept.
// Backward: one kernel reads grad_out and saved once, writes g = grad_out * act'(saved) and
// reduces the bias gradient from the same registers; then dx = g @ weight and dw = g^T @ x
// are cuBLASLt matmuls. Without an activation, g is grad_out and the dw matmul reduces the
// bias gradient itself (BGRADB epilogue). All GEMMs accumulate in fp32; any matmul cuBLASLt
// has no algorithm for goes to ATen instead.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDADataType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

#include "../activation.h"

namespace fastae {
namespace {

// ---------------------------------------------------------------------------------------------
// cuBLASLt

void lt_check(cublasStatus_t status, const char* call) {
  TORCH_CHECK(status == CUBLAS_STATUS_SUCCESS, "fastae_C::linear_act (CUDA): ", call, " failed: ",
              cublasLtGetStatusString(status), " (", static_cast<int>(status), ")");
}

template <typename T>
void set_attr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, T value) {
  lt_check(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)), "cublasLtMatmulDescSetAttribute");
}

template <typename T>
void set_attr(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, T value) {
  lt_check(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)),
           "cublasLtMatmulPreferenceSetAttribute");
}

// Largest power of two (at most 256) dividing the address: the heuristic must not pick a
// kernel that assumes more alignment than a tensor with a storage offset has.
uint32_t alignment(const void* ptr) {
  const auto address = reinterpret_cast<uintptr_t>(ptr);
  uint32_t align = 256;
  while (address % align != 0) align /= 2;
  return align;
}

// Owns the descriptors of one matmul.
struct LtPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  LtPlan() = default;
  LtPlan(const LtPlan&) = delete;
  LtPlan& operator=(const LtPlan&) = delete;
  ~LtPlan() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// out = op(a) @ op(b) on row-major contiguous tensors of one dtype, op transposing when its
// flag is set, followed by `epilogue`; vec is its bias (read) or bias gradient (written) and
// aux its pre-activation output, shaped like out. cuBLASLt is column-major: a row-major [r, c]
// buffer is the column-major c x r matrix with leading dimension c, so out^T = op(b)^T op(a)^T
// is computed with A = b, B = a and no copies. Returns false, having done nothing, for an empty
// problem or when cuBLASLt has no algorithm for it.
bool lt_matmul(const at::Tensor& out, const at::Tensor& a, bool trans_a, const at::Tensor& b, bool trans_b,
               cublasLtEpilogue_t epilogue, void* vec = nullptr, void* aux = nullptr) {
  const int64_t inner = trans_a ? a.size(0) : a.size(1);
  if (out.numel() == 0 || inner == 0) return false;
  const cudaDataType_t type = at::cuda::ScalarTypeToCudaDataType(out.scalar_type());
  const bool tf32 = out.scalar_type() == at::kFloat && at::globalContext().allowTF32CuBLAS();

  LtPlan p;
  lt_check(cublasLtMatmulDescCreate(&p.op, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F),
           "cublasLtMatmulDescCreate");
  set_attr(p.op, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(trans_b ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_attr(p.op, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(trans_a ? CUBLAS_OP_T : CUBLAS_OP_N));
  set_attr(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(epilogue));
  if (vec != nullptr) set_attr(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, vec);
  if (aux != nullptr) {
    set_attr(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
    set_attr(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, static_cast<int64_t>(out.size(1)));
  }
  const auto layout = [&](cublasLtMatrixLayout_t* desc, const at::Tensor& t) {
    lt_check(cublasLtMatrixLayoutCreate(desc, type, static_cast<uint64_t>(t.size(1)), static_cast<uint64_t>(t.size(0)),
                                        t.size(1)),
             "cublasLtMatrixLayoutCreate");
  };
  layout(&p.a, b);
  layout(&p.b, a);
  layout(&p.d, out);

  const size_t workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();
  lt_check(cublasLtMatmulPreferenceCreate(&p.pref), "cublasLtMatmulPreferenceCreate");
  set_attr(p.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(workspace_size));
  // Split-K partial sums are reduced in fp32, never in a 16-bit output type.
  set_attr(p.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
           static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE));
  set_attr(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(b.const_data_ptr()));
  set_attr(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(a.const_data_ptr()));
  set_attr(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(out.const_data_ptr()));
  set_attr(p.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(out.const_data_ptr()));

  const cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle, p.op, p.a, p.b, p.d, p.d, p.pref, 1, &heuristic, &found);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0)) return false;
  lt_check(status, "cublasLtMatmulAlgoGetHeuristic");

  const float alpha = 1.0f, beta = 0.0f;  // beta = 0: C (= D) is not read
  lt_check(cublasLtMatmul(handle, p.op, &alpha, b.const_data_ptr(), p.a, a.const_data_ptr(), p.b, &beta,
                          out.data_ptr(), p.d, out.data_ptr(), p.d, &heuristic.algo,
                          at::cuda::getCUDABlasLtWorkspace(), workspace_size, at::cuda::getCurrentCUDAStream()),
           "cublasLtMatmul");
  return true;
}

// out = op(a) @ op(b) (+ bias): cuBLASLt with the bias epilogue, else ATen (which also covers
// the empty problems, e.g. K == 0 leaving out = bias).
void gemm(at::Tensor& out, const at::Tensor& a, bool trans_a, const at::Tensor& b, bool trans_b,
          const std::optional<at::Tensor>& bias = std::nullopt) {
  if (lt_matmul(out, a, trans_a, b, trans_b, bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT,
                bias ? bias->data_ptr() : nullptr)) {
    return;
  }
  const at::Tensor a_op = trans_a ? a.t() : a, b_op = trans_b ? b.t() : b;
  if (bias) {
    at::addmm_out(out, *bias, a_op, b_op);
  } else {
    at::mm_out(out, a_op, b_op);
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise kernels

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kRows = kThreads / kWarp;  // rows of the backward kernel's 2-D block

// V consecutive elements moved as one 16-byte access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// out = act(in) over n elements, in place when in == out; V > 1 needs both 16-byte aligned.
template <typename scalar_t, int V>
__global__ void act_forward_kernel(const scalar_t* in, scalar_t* out, int64_t n, int act) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t i = first; i < packs; i += stride) {
    Pack<scalar_t, V> p = reinterpret_cast<const Pack<scalar_t, V>*>(in)[i];
#pragma unroll
    for (int j = 0; j < V; ++j) p.v[j] = static_cast<scalar_t>(act_forward(act, static_cast<float>(p.v[j])));
    reinterpret_cast<Pack<scalar_t, V>*>(out)[i] = p;
  }
  for (int64_t i = packs * V + first; i < n; i += stride) {
    out[i] = static_cast<scalar_t>(act_forward(act, static_cast<float>(in[i])));
  }
}

void act_forward_cuda(const at::Tensor& in, const at::Tensor& out, int act) {
  const int64_t n = in.numel();
  if (n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "linear_act_fwd_cuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const bool vec = aligned16(src) && aligned16(dst);
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(ceil_div(n, vec ? V : 1), kThreads),
                                                                int64_t{sm_count()} * 32));
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (vec) {
      act_forward_kernel<scalar_t, V><<<blocks, kThreads, 0, stream>>>(src, dst, n, act);
    } else {
      act_forward_kernel<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(src, dst, n, act);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// g = grad_out * act'(saved) over [M, N], and the column sums of g in fp32 when db is given.
// Block: kWarp threads across V-column packs (coalesced) x kRows threads down the rows; the
// grid's y dimension splits the rows, each thread keeping V partial sums in registers, which
// the block then adds up in shared memory. With one row split the sums go to db directly,
// otherwise to partial[blockIdx.y, :] for sum_partials_kernel, so there are no atomics and the
// result is deterministic. saved == nullptr means act' = 1 (no activation); g == nullptr means
// only db is wanted. V > 1 needs N % V == 0 and 16-byte aligned pointers.
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    act_grad_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ saved,
                    scalar_t* __restrict__ g, scalar_t* __restrict__ db, float* __restrict__ partial, int64_t M,
                    int64_t N, int act) {
  using P = Pack<scalar_t, V>;
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x) * V;
  const bool active = col < N;
  float acc[V] = {};
  if (active) {
    for (int64_t row = static_cast<int64_t>(blockIdx.y) * kRows + threadIdx.y; row < M;
         row += static_cast<int64_t>(gridDim.y) * kRows) {
      const int64_t i = (row * N + col) / V;
      const P go = reinterpret_cast<const P*>(grad_out)[i];
      P s;
      if (saved != nullptr) s = reinterpret_cast<const P*>(saved)[i];
      P out;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float v = static_cast<float>(go.v[j]);
        if (saved != nullptr) v *= act_grad(act, static_cast<float>(s.v[j]));
        out.v[j] = static_cast<scalar_t>(v);
        acc[j] += v;
      }
      if (g != nullptr) reinterpret_cast<P*>(g)[i] = out;
    }
  }
  if (db == nullptr) return;  // uniform across the block

  __shared__ float sums[kRows][V][kWarp];  // [row][j][column pack]: conflict-free stores
#pragma unroll
  for (int j = 0; j < V; ++j) sums[threadIdx.y][j][threadIdx.x] = acc[j];
  __syncthreads();
  if (threadIdx.y != 0 || !active) return;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    float total = 0.0f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) total += sums[r][j][threadIdx.x];
    if (partial != nullptr) {
      partial[blockIdx.y * N + col + j] = total;
    } else {
      db[col + j] = static_cast<scalar_t>(total);
    }
  }
}

// db[c] = sum over the row splits of partial[:, c], in a fixed order.
template <typename scalar_t>
__global__ void sum_partials_kernel(const float* __restrict__ partial, scalar_t* __restrict__ db, int64_t splits,
                                    int64_t N) {
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < N;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float total = 0.0f;
    for (int64_t s = 0; s < splits; ++s) total += partial[s * N + c];
    db[c] = static_cast<scalar_t>(total);
  }
}

// Launches act_grad_kernel; saved, g and db may be undefined (see the kernel).
void act_grad_cuda(const at::Tensor& grad_out, const at::Tensor& saved, const at::Tensor& g, const at::Tensor& db,
                   int act) {
  const int64_t M = grad_out.size(0), N = grad_out.size(1);
  if (N == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "linear_act_bwd_cuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* go_ptr = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* saved_ptr = saved.defined() ? saved.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* g_ptr = g.defined() ? g.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* db_ptr = db.defined() ? db.mutable_data_ptr<scalar_t>() : nullptr;
    const bool vec =
        N % V == 0 && aligned16(go_ptr) && (saved_ptr == nullptr || aligned16(saved_ptr)) &&
        (g_ptr == nullptr || aligned16(g_ptr));
    const int64_t col_blocks = ceil_div(N, int64_t{kWarp} * (vec ? V : 1));
    // Enough row splits to fill the GPU about once, with at least 4 rows per thread.
    const int64_t wave = int64_t{sm_count()} * (2048 / kThreads);
    const int64_t splits = std::max<int64_t>(1, std::min(ceil_div(M, int64_t{kRows} * 4), wave / col_blocks));
    const at::Tensor partial =
        (db_ptr != nullptr && splits > 1) ? at::empty({splits, N}, grad_out.options().dtype(at::kFloat)) : at::Tensor();
    float* partial_ptr = partial.defined() ? partial.mutable_data_ptr<float>() : nullptr;

    const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
    const dim3 block(kWarp, kRows);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    if (vec) {
      act_grad_kernel<scalar_t, V>
          <<<grid, block, 0, stream>>>(go_ptr, saved_ptr, g_ptr, db_ptr, partial_ptr, M, N, act);
    } else {
      act_grad_kernel<scalar_t, 1>
          <<<grid, block, 0, stream>>>(go_ptr, saved_ptr, g_ptr, db_ptr, partial_ptr, M, N, act);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (partial_ptr != nullptr) {
      const auto blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(N, kThreads), int64_t{sm_count()} * 8));
      sum_partials_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(partial_ptr, db_ptr, splits, N);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Ops

void check_like(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device() && t.scalar_type() == x.scalar_type(), "fastae_C::", op, ": ", name,
              " must be on ", x.device(), " with dtype ", x.scalar_type(), ", got ", t.device(), " and ",
              t.scalar_type());
}

void check_linear(const at::Tensor& x, const at::Tensor& weight, int64_t act, const char* op) {
  TORCH_CHECK(x.is_cuda(), "fastae_C::", op, ": expected CUDA tensors, got x on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "fastae_C::", op, ": dtype must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "fastae_C::", op,
              ": expected x [M, K] and weight [N, K], got ", x.sizes(), " and ", weight.sizes());
  check_like(weight, x, op, "weight");
  TORCH_CHECK(act >= 0 && act < kNumActivations, "fastae_C::", op, ": activation id must be in [0, ",
              static_cast<int>(kNumActivations), "), got ", act);
}

std::tuple<at::Tensor, at::Tensor> linear_act_fwd_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias, int64_t activation,
                                                       bool save_preact) {
  check_linear(x, weight, activation, "linear_act_fwd");
  const c10::cuda::CUDAGuard guard(x.device());
  const int act = static_cast<int>(activation);
  const int64_t M = x.size(0), N = weight.size(0);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    check_like(*bias, x, "linear_act_fwd", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N, "fastae_C::linear_act_fwd: expected bias [", N, "], got ",
                bias->sizes());
    b = bias->contiguous();
  }
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor out = at::empty({M, N}, x.options());
  at::Tensor pre = save_preact ? at::empty({M, N}, x.options()) : at::empty({0}, x.options());

  // Epilogues that finish the op in the matmul; GELU_AUX writes the pre-activation alongside,
  // which needs its leading dimension N to be a multiple of 8.
  std::optional<cublasLtEpilogue_t> fused;
  void* aux = nullptr;
  if (act == kRelu && !save_preact) {
    fused = b ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
  } else if (act == kGeluTanh && !save_preact) {
    fused = b ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  } else if (act == kGeluTanh && N % 8 == 0) {
    fused = b ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    aux = pre.data_ptr();
  }
  if (fused && lt_matmul(out, xc, false, wc, true, *fused, b ? b->data_ptr() : nullptr, aux)) return {out, pre};

  // Otherwise the matmul adds the bias and one pass applies the activation, in place on out
  // unless the pre-activation is kept.
  at::Tensor& dst = save_preact ? pre : out;
  gemm(dst, xc, false, wc, true, b);
  if (save_preact || act != kNone) act_forward_cuda(dst, out, act);
  return {out, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                                   const at::Tensor& weight, const at::Tensor& saved,
                                                                   int64_t activation, bool need_x, bool need_w,
                                                                   bool need_b) {
  check_linear(x, weight, activation, "linear_act_bwd");
  const int act = static_cast<int>(activation);
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  check_like(grad_out, x, "linear_act_bwd", "grad_out");
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == M && grad_out.size(1) == N,
              "fastae_C::linear_act_bwd: expected grad_out [", M, ", ", N, "], got ", grad_out.sizes());
  if (act != kNone) {
    check_like(saved, x, "linear_act_bwd", "saved");
    TORCH_CHECK(saved.sizes() == grad_out.sizes(), "fastae_C::linear_act_bwd: saved must match grad_out ",
                grad_out.sizes(), ", got ", saved.sizes());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = need_x ? at::empty({M, K}, x.options()) : at::empty({0}, x.options());
  at::Tensor dw = need_w ? at::empty({N, K}, weight.options()) : at::empty({0}, x.options());
  at::Tensor db = need_b ? at::empty({N}, x.options()) : at::empty({0}, x.options());
  if (M == 0) {  // nothing to reduce over: zero gradients (zero_ of a [0] tensor does nothing)
    dw.zero_();
    db.zero_();
    return {dx, dw, db};
  }

  const at::Tensor go = grad_out.contiguous();
  at::Tensor g = go;  // without an activation the pre-activation gradient is grad_out itself
  bool db_done = !need_b;
  if (act != kNone) {
    g = (need_x || need_w) ? at::empty({M, N}, go.options()) : at::Tensor();
    if (g.defined() || need_b) act_grad_cuda(go, saved.contiguous(), g, need_b ? db : at::Tensor(), act);
    db_done = true;
  }
  if (need_w) {
    const at::Tensor xc = x.contiguous();
    // dw = g^T @ x sums over the same M rows as db, so its epilogue can reduce db on the way.
    const bool db_fused = !db_done && lt_matmul(dw, g, true, xc, false, CUBLASLT_EPILOGUE_BGRADB, db.data_ptr());
    if (!db_fused) gemm(dw, g, true, xc, false);
    db_done = db_done || db_fused;
  }
  if (!db_done) act_grad_cuda(go, at::Tensor(), at::Tensor(), db, kNone);
  if (need_x) gemm(dx, g, false, weight.contiguous(), false);
  return {dx, dw, db};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastae_C, CUDA, m) {
  m.impl("linear_act_fwd", &linear_act_fwd_cuda);
  m.impl("linear_act_bwd", &linear_act_bwd_cuda);
}

}  // namespace fastae
