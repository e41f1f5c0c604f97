"""Generalized divisive normalization, y = x * f(beta + gamma @ x^2 per pixel) with f = 1/sqrt
(GDN) or sqrt (IGDN), forward and backward as Triton kernels.

x is [N, C, H, W], NCHW- or channels_last-contiguous: element (n, c, pixel p) lies at
n * s_n + c * s_c + p * s_p, so one kernel serves both layouts. A program owns a block of output
channels of a block of pixels (flattened over the batch) and runs the 1x1 convolution as a tiled
matmul over input channels, squaring x as it loads it; the epilogue adds beta, takes the square
root and multiplies. The fp32 products run as IEEE fp32 (``input_precision="ieee"``, not TF32),
the square roots round to nearest (sqrt_rn, div_rn).

Backward: with q = g x f'(norm), f'(norm) = -r^3 / 2 (GDN) or 1 / (2 r) (IGDN) from the saved
r = f(norm), one kernel computes dx = g r + 2 x (gamma^T q) the same way, q made tile by tile
as it is loaded, and writes q (fp32); the parameter gradients d beta = sum q and
d gamma = sum q (x^2)^T are then a reduction and a matmul in torch.

The config is fixed, not autotuned (every output is then summed in one order): larger blocks on
a GPU, the smallest tl.dot allows under TRITON_INTERPRET=1.
"""

import os

import torch
import triton
import triton.language as tl

from fastae.kernels.loss import _to_out

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_BLOCK_P, _BLOCK_C, _BLOCK_K, _NUM_WARPS = (16, 16, 16, 1) if _INTERPRET else (64, 64, 32, 4)


@triton.jit
def _f(norm, INVERSE: tl.constexpr):
    s = tl.sqrt_rn(norm)
    if INVERSE:
        return s
    return tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s)


@triton.jit
def _pixels(pid, total, P, s_n, s_p, BLOCK_P: tl.constexpr):
    """Element offsets (int64) of the pixels of block ``pid`` over the flattened batch, and their mask."""
    j = pid.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    return (j // P) * s_n + (j % P) * s_p, j < total


@triton.jit
def _gdn_fwd_kernel(x_ptr, beta_ptr, gamma_ptr, y_ptr, r_ptr, total, P, C, s_n, s_c, s_p,
                    INVERSE: tl.constexpr, SAVE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    pix, pmask = _pixels(tl.program_id(0), total, P, s_n, s_p, BLOCK_P)
    co = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = co < C
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < C
        xk = tl.load(x_ptr + k[:, None].to(tl.int64) * s_c + pix[None, :], mask=kmask[:, None] & pmask[None, :],
                     other=0.0).to(tl.float32)
        g = tl.load(gamma_ptr + co[:, None] * C + k[None, :], mask=cmask[:, None] & kmask[None, :], other=0.0)
        acc += tl.dot(g, xk * xk, input_precision="ieee")
    norm = acc + tl.load(beta_ptr + co, mask=cmask, other=1.0)[:, None]
    f = _f(norm, INVERSE)
    offs = co[:, None].to(tl.int64) * s_c + pix[None, :]
    mask = cmask[:, None] & pmask[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, _to_out(x * f, y_ptr), mask=mask)
    if SAVE:
        tl.store(r_ptr + offs, _to_out(f, r_ptr), mask=mask)


@triton.jit
def _q(g_ptr, x_ptr, r_ptr, offs, mask, INVERSE: tl.constexpr):
    """q = g x f'(norm) at offs, from r = f(norm)."""
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=1.0).to(tl.float32)
    if INVERSE:
        fp = tl.div_rn(tl.full(r.shape, 0.5, tl.float32), r)
    else:
        fp = r * r * r * -0.5
    return g * x * fp


@triton.jit
def _gdn_bwd_kernel(g_ptr, x_ptr, r_ptr, gamma_ptr, dx_ptr, q_ptr, total, P, C, s_n, s_c, s_p,
                    INVERSE: tl.constexpr, NEED_X: tl.constexpr, NEED_Q: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    pix, pmask = _pixels(tl.program_id(0), total, P, s_n, s_p, BLOCK_P)
    co = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = co < C
    offs = co[:, None].to(tl.int64) * s_c + pix[None, :]
    mask = cmask[:, None] & pmask[None, :]
    if NEED_Q:
        tl.store(q_ptr + offs, _q(g_ptr, x_ptr, r_ptr, offs, mask, INVERSE), mask=mask)
    if NEED_X:
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
        for k0 in range(0, C, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < C
            koffs = k[:, None].to(tl.int64) * s_c + pix[None, :]
            qk = _q(g_ptr, x_ptr, r_ptr, koffs, kmask[:, None] & pmask[None, :], INVERSE)
            gt = tl.load(gamma_ptr + k[None, :] * C + co[:, None], mask=cmask[:, None] & kmask[None, :], other=0.0)
            acc += tl.dot(gt, qk, input_precision="ieee")  # (gamma^T q)[co, p]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_ptr + offs, _to_out(g * r + 2.0 * x * acc, dx_ptr), mask=mask)


def _geometry(x):
    n, c, h, w = x.shape
    return n * h * w, h * w, c, x.stride(0), x.stride(1), x.stride(3)


def _grid(total, c):
    return (triton.cdiv(total, _BLOCK_P), triton.cdiv(c, _BLOCK_C))


def gdn_fwd(x, beta, gamma, inverse: bool, save: bool):
    """(y, r = f(norm) or an empty tensor) of x [N, C, H, W] (NCHW- or channels_last-contiguous,
    fp32/bf16/fp16), float32 beta [C] and contiguous gamma [C, C]; y and r in x's dtype and layout."""
    y = torch.empty_like(x)
    r = torch.empty_like(x) if save else x.new_empty(0)
    total, P, C, s_n, s_c, s_p = _geometry(x)
    if total and C:
        _gdn_fwd_kernel[_grid(total, C)](x, beta, gamma, y, r if save else y, total, P, C, s_n, s_c, s_p,
                                        INVERSE=inverse, SAVE=save, BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C,
                                        BLOCK_K=_BLOCK_K, num_warps=_NUM_WARPS)
    return y, r


def gdn_bwd(grad, x, gamma, r, inverse: bool, need_x: bool, need_params: bool):
    """(dx, dbeta, dgamma) from grad, x and r of one layout; each an empty tensor when not needed."""
    dx = torch.empty_like(x) if need_x else x.new_empty(0)
    q = torch.empty_like(x, dtype=torch.float32) if need_params else None
    total, P, C, s_n, s_c, s_p = _geometry(x)
    if total and C and (need_x or need_params):
        _gdn_bwd_kernel[_grid(total, C)](grad, x, r, gamma, dx if need_x else x, q if need_params else x, total, P,
                                        C, s_n, s_c, s_p, INVERSE=inverse, NEED_X=need_x, NEED_Q=need_params,
                                        BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C, BLOCK_K=_BLOCK_K,
                                        num_warps=_NUM_WARPS)
    if not need_params:
        return dx, gamma.new_empty(0), gamma.new_empty(0)
    sq = x.float().square()
    return dx, q.sum((0, 2, 3)), torch.einsum("nihw,njhw->ij", q, sq)
