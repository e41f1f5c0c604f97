"""The integer convolution of fastae/ops/int_conv.py (fastae_C::int_conv) as a Triton kernel.

One launch per phase of the plan; a program computes a block of the phase's outputs (flattened
over images, rows and columns) by a block of output channels, as an implicit GEMM over the taps
and input channels. The int16 activations (in [-2^14, 2^14)) are split into two int8 halves,
a = 128 * (a >> 7) + (a & 127), and each half meets the int8 weights in an int8 tl.dot with int32
accumulation (tensor cores on a GPU, exact integers in the interpreter); the halves recombine in
int64 with the bias before the rescaling, clamp((acc * m + 2^(s-1)) >> s, lo, hi). Every step is
integer arithmetic, so the result equals the C++ and CUDA kernels' whatever the blocking.
"""

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter pays per program and per op, not per element: large blocks there too.
_BLOCK_M, _BLOCK_N, _BLOCK_K, _NUM_WARPS = (128, 64, 32, 1) if _INTERPRET else (64, 64, 32, 4)


@triton.jit
def _int_conv_kernel(x_ptr, w_ptr, bias_ptr, mult_ptr, shift_ptr, taps_ptr, out_ptr, total, Hp, Wp, CIN, COUT,
                     COUTP, t0, t1, py, px, si, so, ny, nx, out_h, out_w, lo, hi,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = m < total
    n = m // (ny * nx)
    y = (m // nx) % ny
    x = m % nx
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = co < COUT
    acc_hi = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    acc_lo = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for t in range(t0, t1):
        dy = tl.load(taps_ptr + 2 * t).to(tl.int64)
        dx = tl.load(taps_ptr + 2 * t + 1).to(tl.int64)
        base = ((n * Hp + si * y + dy) * Wp + si * x + dx) * CIN
        for k0 in range(0, CIN, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < CIN
            a = tl.load(x_ptr + base[:, None] + k[None, :], mask=mmask[:, None] & kmask[None, :], other=0).to(tl.int32)
            # packed [T, CIN / 2, COUTP, 2]: input channels k and k + 1 (k even) side by side
            w_offs = ((t * (CIN // 2) + k[:, None] // 2).to(tl.int64) * COUTP + co[None, :]) * 2 + k[:, None] % 2
            w = tl.load(w_ptr + w_offs, mask=kmask[:, None] & cmask[None, :], other=0)
            acc_hi += tl.dot((a >> 7).to(tl.int8), w, out_dtype=tl.int32)
            acc_lo += tl.dot((a & 127).to(tl.int8), w, out_dtype=tl.int32)
    bias = tl.load(bias_ptr + co, mask=cmask, other=0).to(tl.int64)
    acc = acc_hi.to(tl.int64) * 128 + acc_lo.to(tl.int64) + bias[None, :]
    m_pos = tl.load(mult_ptr + co, mask=cmask, other=0).to(tl.int64)
    m_neg = tl.load(mult_ptr + COUT + co, mask=cmask, other=0).to(tl.int64)
    s = tl.load(shift_ptr + co, mask=cmask, other=1).to(tl.int64)
    mult = tl.where(acc >= 0, m_pos[None, :], m_neg[None, :])
    half = tl.full((BLOCK_N,), 1, tl.int64) << (s - 1)
    q = (acc * mult + half[None, :]) >> s[None, :]
    q = tl.minimum(tl.maximum(q, lo), hi)
    out = ((n * out_h + so * y + py) * out_w + so * x + px) * COUT
    tl.store(out_ptr + out[:, None] + co[None, :], q.to(out_ptr.dtype.element_ty),
             mask=mmask[:, None] & cmask[None, :])


def int_conv(x, weight, bias, mult, shift, taps, phases, si: int, so: int, out_h: int, out_w: int, lo: int, hi: int,
             out_dtype):
    """The plan's convolution (fastae_C::int_conv's contract): x int16 [N, Hp, Wp, Cin] padded (Cin
    even), weight int8 [T, Cin / 2, Cout16, 2] packed, taps [(dy, dx)], phases [(py, px, t0, t1)]."""
    n, hp, wp, cin = x.shape
    cout, coutp = bias.shape[0], weight.shape[2]
    out = torch.zeros((n, out_h, out_w, cout), dtype=out_dtype, device=x.device)
    taps_t = torch.tensor([v for tap in taps for v in tap] or [0], dtype=torch.int32, device=x.device)
    w = weight.contiguous()
    for py, px, t0, t1 in phases:
        ny, nx = -(-(out_h - py) // so), -(-(out_w - px) // so)
        total = n * ny * nx
        if ny <= 0 or nx <= 0 or total == 0 or cout == 0:
            continue
        grid = (triton.cdiv(total, _BLOCK_M), triton.cdiv(cout, _BLOCK_N))
        _int_conv_kernel[grid](x, w, bias, mult, shift, taps_t, out, total, hp, wp, cin, cout, coutp, t0, t1, py, px,
                               si, so, ny, nx, out_h, out_w, lo, hi, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
                               BLOCK_K=_BLOCK_K, num_warps=_NUM_WARPS)
    return out
