"""Fused linear + activation, y = act(x @ weight.T + bias), as Triton kernels.

Forward: one tiled matmul whose epilogue adds the bias, applies the activation and stores y
(and optionally the pre-activation). Backward: g = grad_out * act'(saved) is never
materialised; it is recomputed tile by tile inside the loads of the dX kernel (dx = g @ W)
and of the dW kernel (dw = g.T @ x), which also reduces the bias gradient (db = g.sum(0)).

Activation ids (same order as csrc/activation.h): 0 none, 1 relu, 2 leaky_relu (slope 0.01),
3 gelu (erf), 4 gelu_tanh, 5 sigmoid, 6 tanh, 7 silu. act' is computed from the output y
for ids 0, 1, 2, 5, 6 and from the pre-activation for ids 3, 4, 7.

On a GPU the kernels are autotuned; under TRITON_INTERPRET=1, where autotuning cannot
benchmark, the bare kernels run with one small fixed config.
"""

import os

import torch
import triton
import triton.language as tl

_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")
_INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP": 4}
# Autotune candidates: (output tile rows, output tile cols, reduction block, num_warps, num_stages).
_TILES = [
    (128, 256, 64, 8, 3),
    (128, 128, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 64, 4, 3),
    (64, 32, 32, 2, 5),
    (32, 64, 32, 2, 5),
]


def _configs(rows, cols, red):
    """_TILES as triton.Configs for a kernel whose output tile is rows x cols and whose reduction block is red."""
    return [triton.Config({rows: r, cols: c, red: k, "GROUP": 8}, num_warps=w, num_stages=s) for r, c, k, w, s in _TILES]


# Constants go to the right of tensors: in the interpreter `constexpr * tensor` is a constexpr, not a tensor.
_LEAKY_SLOPE = tl.constexpr(0.01)
_SQRT1_2 = tl.constexpr(0.7071067811865476)  # 1/sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1/sqrt(2*pi)
_SQRT_2_PI = tl.constexpr(0.7978845608028654)  # sqrt(2/pi)
_GELU_TANH_C = tl.constexpr(0.044715)


@triton.jit
def _sigmoid(x):
    # exp(-x) overflows to inf for x << 0, giving exactly 0 rather than NaN.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # Saturates to exactly +-1 for large |x| (exp gives inf or 0), never NaN.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _act_forward(x, ACT: tl.constexpr):
    """act(x) for an fp32 tile x."""
    if ACT == 1:
        x = tl.where(x < 0, 0.0, x)  # NaN passes through, as in torch.relu
    elif ACT == 2:
        x = tl.where(x > 0, x, x * _LEAKY_SLOPE)
    elif ACT == 3:
        x = 0.5 * x * (1.0 + tl.erf(x * _SQRT1_2))
    elif ACT == 4:
        x = 0.5 * x * (1.0 + _tanh((x + x * x * x * _GELU_TANH_C) * _SQRT_2_PI))
    elif ACT == 5:
        x = _sigmoid(x)
    elif ACT == 6:
        x = _tanh(x)
    elif ACT == 7:
        x = x * _sigmoid(x)
    return x


@triton.jit
def _act_grad(saved, ACT: tl.constexpr):
    """act'(pre) for an fp32 tile: saved is the output y for ids 0,1,2,5,6, else the pre-activation."""
    if ACT == 1:
        d = tl.where(saved <= 0, 0.0, 1.0)  # 0 at y == 0; NaN lets the gradient through, as in torch
    elif ACT == 2:
        d = tl.where(saved > 0, 1.0, _LEAKY_SLOPE)
    elif ACT == 3:
        cdf = 0.5 * (1.0 + tl.erf(saved * _SQRT1_2))
        d = cdf + saved * _INV_SQRT_2PI * tl.exp(-0.5 * saved * saved)
    elif ACT == 4:
        x2 = saved * saved
        t = _tanh(saved * _SQRT_2_PI * (1.0 + x2 * _GELU_TANH_C))
        d = 0.5 * (1.0 + t) + 0.5 * saved * (1.0 - t * t) * _SQRT_2_PI * (1.0 + x2 * (3.0 * _GELU_TANH_C))
    elif ACT == 5:
        d = saved * (1.0 - saved)
    elif ACT == 6:
        d = 1.0 - saved * saved
    elif ACT == 7:
        s = _sigmoid(saved)
        d = s * (1.0 + saved * (1.0 - s))
    else:
        d = tl.full(saved.shape, 1.0, tl.float32)
    return d


@triton.jit
def _load_grad(go_ptrs, s_ptrs, mask, ACT: tl.constexpr):
    """g = grad_out * act'(saved) for one tile, in fp32; 0 where masked."""
    g = tl.load(go_ptrs, mask=mask, other=0.0).to(tl.float32)
    if ACT != 0:  # id 0 has act' = 1 and may get an empty `saved`
        g *= _act_grad(tl.load(s_ptrs, mask=mask, other=0.0).to(tl.float32), ACT)
    return g


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 accumulation."""
    if _INTERPRET:
        if a.dtype == tl.bfloat16:  # the interpreter (triton 3.9) would multiply the raw bf16 bits as integers
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _tile_ids(num_a, num_b, GROUP: tl.constexpr):
    """Program id -> (a, b) tile, GROUP rows of a at a time so neighbouring programs share operands in L2."""
    pid = tl.program_id(0)
    width = GROUP * num_b
    first_a = (pid // width) * GROUP
    group_size = tl.minimum(num_a - first_a, GROUP)
    return first_a + (pid % width) % group_size, (pid % width) // group_size


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_N", "BLOCK_K"), key=["M", "N", "K"])
@triton.jit
def _fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, pre_ptr, M, N, K,
                stride_xm, stride_xk, stride_wn, stride_wk,
                ACT: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PREACT: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    """out[M, N] = act(x @ w.T + b), pre[M, N] = x @ w.T + b; both contiguous."""
    pid_m, pid_n = _tile_ids(tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows/columns wrap around (their results are never stored): only K needs masks.
    rows = (offs_m % M).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + (offs_n % N)[None, :] * stride_wn + offs_k[:, None] * stride_wk  # a tile of w.T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = _dot(a, b, acc, PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SAVE_PREACT:
        tl.store(pre_ptr + offs, acc.to(pre_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs, _act_forward(acc, ACT).to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs("BLOCK_M", "BLOCK_K", "BLOCK_N"), key=["M", "N", "K"])
@triton.jit
def _bwd_dx_kernel(go_ptr, s_ptr, w_ptr, dx_ptr, M, N, K,
                   stride_gm, stride_gn, stride_sm, stride_sn, stride_wn, stride_wk,
                   ACT: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    """dx[M, K] (contiguous) = g @ w, reducing over N."""
    pid_m, pid_k = _tile_ids(tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    # Out-of-range rows/columns wrap around (their results are never stored): only N needs masks.
    rows = (offs_m % M).to(tl.int64)
    go_ptrs = go_ptr + rows[:, None] * stride_gm + offs_n[None, :] * stride_gn
    s_ptrs = s_ptr + rows[:, None] * stride_sm + offs_n[None, :] * stride_sn
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + (offs_k % K)[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n in range(0, tl.cdiv(N, BLOCK_N)):
        n_left = N - n * BLOCK_N
        g = _load_grad(go_ptrs, s_ptrs, offs_n[None, :] < n_left, ACT)
        w = tl.load(w_ptrs, mask=offs_n[:, None] < n_left, other=0.0)
        acc = _dot(g.to(w.dtype), w, acc, PRECISION)  # g rounded like eager autograd
        go_ptrs += BLOCK_N * stride_gn
        s_ptrs += BLOCK_N * stride_sn
        w_ptrs += BLOCK_N * stride_wn
    offs = offs_m.to(tl.int64)[:, None] * K + offs_k[None, :]
    tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_k[None, :] < K))


@triton.autotune(configs=_configs("BLOCK_N", "BLOCK_K", "BLOCK_M"), key=["M", "N", "K", "COMPUTE_DW"])
@triton.jit
def _bwd_dw_kernel(go_ptr, s_ptr, x_ptr, dw_ptr, db_ptr, M, N, K,
                   stride_gm, stride_gn, stride_sm, stride_sn, stride_xm, stride_xk,
                   ACT: tl.constexpr, COMPUTE_DW: tl.constexpr, COMPUTE_DB: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
    """dw[N, K] (contiguous) = g.T @ x and db[N] = g.sum(0), reducing over M.

    The programs of the first K block also sum their g tiles into db. Without COMPUTE_DW the
    grid has one K block and only db is reduced.
    """
    pid_n, pid_k = _tile_ids(tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K) if COMPUTE_DW else 1, GROUP)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M)
    # M is the reduction dim and must be masked; N and K wrap around (never stored).
    cols = offs_n % N
    go_ptrs = go_ptr + cols[:, None] * stride_gn + offs_m[None, :] * stride_gm  # a tile of g.T
    s_ptrs = s_ptr + cols[:, None] * stride_sn + offs_m[None, :] * stride_sm
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + (offs_k % K)[None, :] * stride_xk
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m in range(0, tl.cdiv(M, BLOCK_M)):
        m_left = M - m * BLOCK_M
        g = _load_grad(go_ptrs, s_ptrs, offs_m[None, :] < m_left, ACT)
        if COMPUTE_DW:
            xt = tl.load(x_ptrs, mask=offs_m[:, None] < m_left, other=0.0)
            acc = _dot(g.to(xt.dtype), xt, acc, PRECISION)  # g rounded like eager autograd
            x_ptrs += BLOCK_M * stride_xm
        if COMPUTE_DB:
            if pid_k == 0:
                db += tl.sum(g, axis=1)
        go_ptrs += BLOCK_M * stride_gm
        s_ptrs += BLOCK_M * stride_sm
    if COMPUTE_DW:
        offs = offs_n[:, None] * K + offs_k[None, :]
        tl.store(dw_ptr + offs, acc.to(dw_ptr.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))
    if COMPUTE_DB:
        if pid_k == 0:
            tl.store(db_ptr + offs_n, db.to(db_ptr.dtype.element_ty), mask=offs_n < N)


def _launch(kernel, grid, *args, **kwargs):
    """Run an autotuned kernel; in the interpreter run its bare kernel with the fixed small config."""
    if _INTERPRET:
        kernel.fn[grid](*args, **kwargs, **_INTERPRET_CONFIG)
    else:
        kernel[grid](*args, **kwargs)


def _precision(dtype):
    # Like torch's matmul: fp32 uses TF32 tensor cores only when the user allowed it (ignored for fp16/bf16).
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def linear_act_fwd(x, weight, bias, activation: int, save_preact: bool):
    """(act(x @ weight.T + bias), x @ weight.T + bias or an empty tensor), both new contiguous [M, N]."""
    M, K = x.shape
    N = weight.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    pre = torch.empty((M, N) if save_preact else (0,), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out, pre
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    _launch(_fwd_kernel, grid, x, weight, bias if bias is not None else out, out, pre, M, N, K,
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
            ACT=activation, HAS_BIAS=bias is not None, SAVE_PREACT=save_preact, PRECISION=_precision(x.dtype))
    return out, pre


def linear_act_bwd(grad_out, x, weight, saved, activation: int, need_x: bool, need_w: bool, need_b: bool):
    """(dx [M, K], dw [N, K], db [N]) of y = act(x @ weight.T + b); an empty tensor for each one not needed.

    `saved` is the output y for activations 0, 1, 2, 5, 6 (unused, may be empty, for 0) and the
    pre-activation for 3, 4, 7.
    """
    M, K = x.shape
    N = weight.shape[0]
    dx = torch.empty((M, K) if need_x else (0,), dtype=x.dtype, device=x.device)
    dw = torch.empty((N, K) if need_w else (0,), dtype=weight.dtype, device=x.device)
    db = torch.empty((N,) if need_b else (0,), dtype=x.dtype, device=x.device)
    g_strides = (*grad_out.stride(), *(saved.stride() if activation != 0 else (0, 0)))
    precision = _precision(x.dtype)
    if need_x and dx.numel() > 0:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, meta["BLOCK_K"]),)
        _launch(_bwd_dx_kernel, grid, grad_out, saved, weight, dx, M, N, K, *g_strides,
                weight.stride(0), weight.stride(1), ACT=activation, PRECISION=precision)
    compute_dw = need_w and K > 0
    if (compute_dw or need_b) and N > 0:  # with M == 0 this writes zeros
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * (triton.cdiv(K, meta["BLOCK_K"]) if compute_dw else 1),)
        _launch(_bwd_dw_kernel, grid, grad_out, saved, x, dw, db, M, N, K, *g_strides,
                x.stride(0), x.stride(1), ACT=activation, COMPUTE_DW=compute_dw, COMPUTE_DB=need_b,
                PRECISION=precision)
    return dx, dw, db
