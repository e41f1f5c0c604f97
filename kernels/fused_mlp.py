"""A whole narrow MLP as one Triton kernel per direction (tiny-cuda-nn's fully fused MLP, in Triton).

The network is ``h = act_i(h @ W_i.T + b_i)`` for i = 0 .. L-1 with widths d_0, d_1, ..., d_L. When
every hidden width d_1 .. d_{L-1} is at most MAX_HIDDEN (and each hidden-to-hidden weight fits
MAX_WEIGHT_TILE_BYTES), one program takes BLOCK_M rows of the batch through all the layers:

* forward (``_fwd_kernel``): the first layer reads x in BLOCK_K column blocks (d_0 may be wide,
  784 for MNIST) into a [BLOCK_M, d_1] fp32 accumulator; the bias, the activation, the rounding
  to the input dtype and the store of what backward needs happen in its epilogue; every hidden
  layer then multiplies the row block, which stays in registers, by its whole weight (loaded once
  per program, into shared memory on a GPU); the last layer writes its d_L outputs in BLOCK_N
  column blocks. The hidden activations are never read back from memory; they are written only
  when backward needs them (``save``).
* backward (``_bwd_kernel``): the same row block runs the chain of activation gradients from
  the output back to x: g_{L-1} = grad_out * act'(out) in BLOCK_N column blocks reduced into
  dh [BLOCK_M, d_{L-1}], then per hidden layer g_i = dh * act'(saved_i) (stored: the weight
  gradients need it) and dh = g_i @ W_i, and dx in BLOCK_K column blocks.
* the weight and bias gradients reduce over the batch, across programs: they are linear_act's
  dW kernel (kernels/linear_act.py, dw = g.T @ h and db = g.sum(0) in one pass), once per layer
  inside the same op; for the last layer it recomputes g from grad_out as it loads it.

Precision follows eager autograd's: the operands of every product are in the input dtype (fp16 /
bf16 / fp32), the products accumulate in fp32, and each layer's output, dh and g are rounded to
the input dtype where eager would store them; the bias and the activation are applied to the
fp32 accumulator, as linear_act's kernels do, not to a rounded pre-activation. Forward is 1 kernel instead of L, backward 1 + L
instead of 2L, and no hidden activation makes a round trip through memory in forward.

On a GPU the kernels are autotuned per shape; under TRITON_INTERPRET=1 the bare kernels run with
one small fixed config.
"""

import torch
import triton
import triton.language as tl

from fastae.ops.linear import _GRAD_FROM_OUTPUT as _FROM_OUTPUT  # activation ids whose act' follows from the output
from fastae.kernels.linear_act import (_INTERPRET, _act_forward, _act_grad, _dot, _load_grad, _precision,
                                       linear_act_bwd)

#: The widest hidden layer the fused kernels take (a row block of it lives in registers).
MAX_HIDDEN = 256
#: The largest hidden-to-hidden weight (bytes) a program loads whole.
MAX_WEIGHT_TILE_BYTES = 64 * 1024

_INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_K": 32, "BLOCK_N": 32}
_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_K": k, "BLOCK_N": k}, num_warps=w, num_stages=s)
            for m, k, w, s in ((128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4), (32, 64, 4, 3), (32, 32, 2, 4),
                               (16, 64, 2, 3))]


def _pad(d: int) -> int:
    """A hidden width padded for tl.dot: a power of two, at least 16."""
    return max(16, triton.next_power_of_2(d))


def fusable(dims, dtype) -> bool:
    """Whether the fused kernels take a network of widths ``dims`` (d_0, ..., d_L) in ``dtype``."""
    if len(dims) < 3 or dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    hidden = dims[1:-1]
    if min(dims) < 1 or max(hidden) > MAX_HIDDEN:
        return False
    size = torch.empty((), dtype=dtype).element_size()
    return all(_pad(a) * _pad(b) * size <= MAX_WEIGHT_TILE_BYTES for a, b in zip(hidden[:-1], hidden[1:]))


@triton.jit
def _load_wt(w_ptr, d_out, d_in, P_IN: tl.constexpr, P_OUT: tl.constexpr):
    """A hidden layer's whole weight W [d_out, d_in] (contiguous) as W.T [P_IN, P_OUT], 0 outside."""
    i = tl.arange(0, P_IN)
    o = tl.arange(0, P_OUT)
    return tl.load(w_ptr + o[None, :] * d_in + i[:, None], mask=(i[:, None] < d_in) & (o[None, :] < d_out), other=0.0)


@triton.jit
def _store_rows(ptr, value, offs_m, M, d, P: tl.constexpr):
    """Store value [BLOCK_M, P] into the rows offs_m of the contiguous [M, d] tensor at ptr."""
    cols = tl.arange(0, P)
    tl.store(ptr + offs_m.to(tl.int64)[:, None] * d + cols[None, :], value.to(ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (cols[None, :] < d))


@triton.jit
def _load_rows(ptr, offs_m, M, d, P: tl.constexpr):
    cols = tl.arange(0, P)
    return tl.load(ptr + offs_m.to(tl.int64)[:, None] * d + cols[None, :],
                   mask=(offs_m[:, None] < M) & (cols[None, :] < d), other=0.0)


@triton.jit
def _fwd_kernel(x_ptr, w_ptrs, b_ptrs, out_ptr, hid_ptrs, pre_ptrs, M, stride_xm, stride_xk,
                DIMS: tl.constexpr, PADS: tl.constexpr, ACTS: tl.constexpr, HAS_BIAS: tl.constexpr,
                SAVE_HID: tl.constexpr, SAVE_PRE: tl.constexpr, L: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = the MLP of x for BLOCK_M rows; hidden outputs / pre-activations stored where SAVE_*."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = (offs_m % M).to(tl.int64)  # out-of-range rows wrap around: computed, never stored
    dtype = out_ptr.dtype.element_ty
    # layer 0: x [BLOCK_M, d_0] in column blocks against W_0.T [BLOCK_K, P_1]
    D0: tl.constexpr = DIMS[0]
    D1: tl.constexpr = DIMS[1]
    P1: tl.constexpr = PADS[1]
    offs_k = tl.arange(0, BLOCK_K)
    outs = tl.arange(0, P1)
    acc = tl.zeros((BLOCK_M, P1), dtype=tl.float32)
    for k in range(0, tl.cdiv(D0, BLOCK_K)):
        ks = k * BLOCK_K + offs_k
        a = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk, mask=ks[None, :] < D0, other=0.0)
        b = tl.load(w_ptrs[0] + outs[None, :] * D0 + ks[:, None], mask=(ks[:, None] < D0) & (outs[None, :] < D1),
                    other=0.0)
        acc = _dot(a, b, acc, PRECISION)
    h = acc
    # hidden layers 0 .. L-2: epilogue of layer i, then (i >= 1) the product that made it
    for i in tl.static_range(0, L - 1):  # (no constexpr aliases in here: a name can be bound only once)
        if i > 0:
            w = _load_wt(w_ptrs[i], DIMS[i + 1], DIMS[i], PADS[i], PADS[i + 1])
            h = _dot(h, w, tl.zeros((BLOCK_M, PADS[i + 1]), dtype=tl.float32), PRECISION)
        if HAS_BIAS[i]:
            bias_cols = tl.arange(0, PADS[i + 1])
            h += tl.load(b_ptrs[i] + bias_cols, mask=bias_cols < DIMS[i + 1], other=0.0).to(tl.float32)[None, :]
        if SAVE_PRE[i]:
            _store_rows(pre_ptrs[i], h, offs_m, M, DIMS[i + 1], PADS[i + 1])
        h = _act_forward(h, ACTS[i]).to(dtype)  # the next layer's operand, rounded as eager stores it
        if SAVE_HID:
            _store_rows(hid_ptrs[i], h, offs_m, M, DIMS[i + 1], PADS[i + 1])
    # the last layer: d_L outputs in column blocks of W_{L-1} [BLOCK_N, P_{L-1}]
    DL: tl.constexpr = DIMS[L]
    DH: tl.constexpr = DIMS[L - 1]
    PH: tl.constexpr = PADS[L - 1]
    ins = tl.arange(0, PH)
    offs_n = tl.arange(0, BLOCK_N)
    for n in range(0, tl.cdiv(DL, BLOCK_N)):
        ns = n * BLOCK_N + offs_n
        w_out = tl.load(w_ptrs[L - 1] + ns[None, :] * DH + ins[:, None],
                        mask=(ns[None, :] < DL) & (ins[:, None] < DH), other=0.0)
        y = _dot(h, w_out, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32), PRECISION)
        if HAS_BIAS[L - 1]:
            y += tl.load(b_ptrs[L - 1] + ns, mask=ns < DL, other=0.0).to(tl.float32)[None, :]
        offs = offs_m.to(tl.int64)[:, None] * DL + ns[None, :]
        mask = (offs_m[:, None] < M) & (ns[None, :] < DL)
        if SAVE_PRE[L - 1]:
            tl.store(pre_ptrs[L - 1] + offs, y.to(dtype), mask=mask)
        tl.store(out_ptr + offs, _act_forward(y, ACTS[L - 1]).to(dtype), mask=mask)


@triton.jit
def _bwd_kernel(go_ptr, s_ptrs, w_ptrs, g_ptrs, dx_ptr, M, stride_gm, stride_gn,
                DIMS: tl.constexpr, PADS: tl.constexpr, ACTS: tl.constexpr, L: tl.constexpr,
                NEED_X: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """For BLOCK_M rows: g_i = dL/d(pre-activation of layer i) for i < L-1 into g_ptrs[i], and dx.

    s_ptrs[i]: what act_i' is computed from (its output or its pre-activation; s_ptrs[L-1] for
    the output layer, unused for activation 0), each contiguous [M, d_{i+1}]."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = (offs_m % M).to(tl.int64)
    dtype = dx_ptr.dtype.element_ty
    # the output layer: dh = (grad_out * act'(s)) @ W_{L-1}, reduced over d_L in column blocks
    DL: tl.constexpr = DIMS[L]
    DH: tl.constexpr = DIMS[L - 1]
    PH: tl.constexpr = PADS[L - 1]
    ins = tl.arange(0, PH)
    offs_n = tl.arange(0, BLOCK_N)
    dh = tl.zeros((BLOCK_M, PH), dtype=tl.float32)
    for n in range(0, tl.cdiv(DL, BLOCK_N)):
        ns = n * BLOCK_N + offs_n
        mask = ns[None, :] < DL
        g = _load_grad(go_ptr + rows[:, None] * stride_gm + ns[None, :] * stride_gn,
                       s_ptrs[L - 1] + rows[:, None] * DL + ns[None, :], mask, ACTS[L - 1])
        w = tl.load(w_ptrs[L - 1] + ns[:, None] * DH + ins[None, :], mask=(ns[:, None] < DL) & (ins[None, :] < DH),
                    other=0.0)
        dh = _dot(g.to(dtype), w, dh, PRECISION)  # g rounded like eager autograd
    dh = dh.to(dtype)
    # hidden layers L-2 .. 0: g_i = dh * act_i'(s_i), then dh = g_i @ W_i (for i >= 1)
    for i in tl.static_range(L - 2, -1, -1):  # (no constexpr aliases in here: a name can be bound only once)
        g = dh.to(tl.float32)
        if ACTS[i] != 0:
            g *= _act_grad(_load_rows(s_ptrs[i], offs_m, M, DIMS[i + 1], PADS[i + 1]).to(tl.float32), ACTS[i])
        g = g.to(dtype)
        _store_rows(g_ptrs[i], g, offs_m, M, DIMS[i + 1], PADS[i + 1])
        if i > 0:
            # W_i [d_{i+1}, d_i] read as it is: [P_{i+1}, P_i]
            a = tl.arange(0, PADS[i + 1])
            b = tl.arange(0, PADS[i])
            w = tl.load(w_ptrs[i] + a[:, None] * DIMS[i] + b[None, :],
                        mask=(a[:, None] < DIMS[i + 1]) & (b[None, :] < DIMS[i]), other=0.0)
            dh = _dot(g, w, tl.zeros((BLOCK_M, PADS[i]), dtype=tl.float32), PRECISION).to(dtype)
        elif NEED_X:
            # dx = g_0 @ W_0 in column blocks of d_0
            a = tl.arange(0, PADS[1])
            offs_k = tl.arange(0, BLOCK_K)
            for k in range(0, tl.cdiv(DIMS[0], BLOCK_K)):
                ks = k * BLOCK_K + offs_k
                w_in = tl.load(w_ptrs[0] + a[:, None] * DIMS[0] + ks[None, :],
                               mask=(a[:, None] < DIMS[1]) & (ks[None, :] < DIMS[0]), other=0.0)
                dx = _dot(g, w_in, tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32), PRECISION)
                tl.store(dx_ptr + offs_m.to(tl.int64)[:, None] * DIMS[0] + ks[None, :], dx.to(dtype),
                         mask=(offs_m[:, None] < M) & (ks[None, :] < DIMS[0]))


_fwd_tuned = triton.autotune(configs=_CONFIGS, key=["M", "DIMS", "ACTS", "SAVE_HID"])(_fwd_kernel)
_bwd_tuned = triton.autotune(configs=_CONFIGS, key=["M", "DIMS", "ACTS", "NEED_X"])(_bwd_kernel)


def _run(tuned, bare, grid, *args, **kwargs):
    if _INTERPRET:
        bare[grid](*args, **kwargs, **_INTERPRET_CONFIG)
    else:
        tuned[grid](*args, **kwargs)


def _rows_grid(M):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)


def fused_mlp_fwd(x, weights, biases, acts, save: bool):
    """(out [M, d_L], hidden outputs [M, d_i] for i = 1 .. L-1 (save), pre-activations (save; an
    empty tensor for the layers whose act' follows from their output)), as the layered backends
    return them. x [M, d_0] with any strides; weights contiguous."""
    M = x.shape[0]
    dims = (x.shape[1], *(w.shape[0] for w in weights))
    L = len(weights)
    pads = tuple(_pad(d) for d in dims)
    out = x.new_empty((M, dims[-1]))
    keep_pre = tuple(save and a not in _FROM_OUTPUT for a in acts)
    hidden = [x.new_empty((M, d)) for d in dims[1:-1]] if save else []
    preacts = [x.new_empty((M, d) if k else (0,)) for d, k in zip(dims[1:], keep_pre)] if save else []
    if M == 0:
        return out, hidden, preacts
    ws = tuple(w.contiguous() for w in weights)
    bs = tuple(b if b is not None else out for b in biases)
    hid = tuple(hidden) if save else (out,) * (L - 1)  # (`out` stands in for what is not stored)
    pre = tuple(p if p.numel() else out for p in preacts) if save else (out,) * L
    _run(_fwd_tuned, _fwd_kernel, _rows_grid(M), x, ws, bs, out, hid, pre,
         M, x.stride(0), x.stride(1), DIMS=dims, PADS=pads, ACTS=tuple(acts),
         HAS_BIAS=tuple(b is not None for b in biases), SAVE_HID=save, SAVE_PRE=keep_pre, L=L,
         PRECISION=_precision(x.dtype))
    return out, hidden, preacts


def fused_mlp_bwd(grad_out, x, weights, hidden, out, preacts, acts, need_x, need_w, need_b):
    """(dx or an empty tensor, [dW_i or None], [db_i or None]) from what fused_mlp_fwd saved."""
    M = x.shape[0]
    dims = (x.shape[1], *(w.shape[0] for w in weights))
    L = len(weights)
    pads = tuple(_pad(d) for d in dims)
    ws = tuple(w.contiguous() for w in weights)
    # what each act' is computed from: the layer's output (hidden / out) or its pre-activation
    layer_out = [*hidden, out]
    saved = [layer_out[i] if a in _FROM_OUTPUT else preacts[i] for i, a in enumerate(acts)]
    saved = [s if s.numel() else out for s in saved]  # activation 0 reads nothing
    gs = [x.new_empty((M, d)) for d in dims[1:-1]]  # g_i for the hidden layers
    dx = x.new_empty((M, dims[0]) if need_x else (0,))
    if M > 0:
        _run(_bwd_tuned, _bwd_kernel, _rows_grid(M), grad_out, tuple(saved), ws, tuple(gs), dx if need_x else out, M,
             grad_out.stride(0), grad_out.stride(1), DIMS=dims, PADS=pads, ACTS=tuple(acts), L=L, NEED_X=need_x,
             PRECISION=_precision(x.dtype))
    elif need_x:
        dx.zero_()
    dweights, dbiases = [None] * L, [None] * L
    for i in range(L):  # dW_i = g_i.T @ h_i and db_i = g_i.sum(0): linear_act's dW kernel
        inp = x if i == 0 else hidden[i - 1]
        if i == L - 1:  # g recomputed from grad_out and act' as the kernel loads it
            go, s, act = grad_out, saved[i], acts[i]
        else:
            go, s, act = gs[i], gs[i], 0
        _, dweights[i], dbiases[i] = linear_act_bwd(go, inp, weights[i], s, act, False, need_w, need_b)
    return dx, dweights, dbiases
