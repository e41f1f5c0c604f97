"""Fused reconstruction losses and the Gaussian KL term, loss and gradient in one pass, as Triton kernels.

One launch per call: a 1-D grid over blocks of BLOCK elements. Each program loads its slice of
the inputs (and of the per-feature weights, element i using weight[i % F]), computes the loss and
d loss / d input in fp32, stores the scaled gradient and either the element-wise loss (reduction
none) or the sum of its block's losses into a per-program buffer, which the host then sums with
torch: deterministic, no atomics.

Loss kinds (same ids and formulas as csrc/loss_kernels.h): 0 mse, 1 l1, 2 bce (input holds
probabilities; logs clamped at -100 as F.binary_cross_entropy), 3 bce_logits (stable for any
logit). Reductions: 0 none, 1 mean, 2 sum, 3 batch (sum / batch size).

Triton has no log1p outside libdevice, which the interpreter cannot run, and log(1 + y) loses
tiny y to rounding: _log1p takes a short series for |y| < 1/4. On NVIDIA GPUs tl.log is libdevice's
logf; tl.exp is ex2.approx (relative error about 2^-22 + |x| 2^-24), used for exp(-|x|), the
sigmoid and exp(logvar).

The config is fixed, not autotuned (the partial-sum buffer, and so the rounding of the result,
must not depend on timing): a large block on a GPU, a small one under TRITON_INTERPRET=1, where
it also makes small tests run several programs.
"""

import os

import torch
import triton
import triton.language as tl

_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")
_BLOCK, _NUM_WARPS = (256, 1) if _INTERPRET else (4096, 8)

_MSE, _L1, _BCE, _BCE_LOGITS = range(4)
_NONE, _MEAN, _SUM, _BATCH = range(4)
_BCE_RANGE_ERROR = "all elements of input should be between 0 and 1"


@triton.jit
def _log1p_small(y):
    """log(1 + y) for |y| < 0.25 as 2 atanh(s), s = y / (2 + y): |s| < 1/7, so the odd series
    cut after s^9 is below fp32 rounding."""
    s = y / (2.0 + y)
    s2 = s * s
    p = s2 * 0.1111111111111111 + 0.14285714285714285
    p = s2 * p + 0.2
    p = s2 * p + 0.3333333333333333
    return 2.0 * s + (2.0 * s) * (s2 * p)


@triton.jit
def _log1p(y):
    """log(1 + y) for y >= -1 (-inf at -1, NaN for NaN), a few ulp also for tiny |y|."""
    return tl.where(tl.abs(y) < 0.25, _log1p_small(y), tl.log(1.0 + y))


@triton.jit
def _to_out(v, ptr):
    """fp32 tile v in ptr's element type, rounded to nearest even."""
    if _INTERPRET:
        if ptr.dtype.element_ty == tl.bfloat16:
            # The interpreter (triton 3.9) truncates fp32 -> bf16 and garbles subnormals: take the top
            # half of the bits, rounded to nearest even, as torch does (NaN -> 0x7FC0).
            b = v.to(tl.uint32, bitcast=True)
            top = tl.where(v != v, 0x7FC0, (b + 0x7FFF + ((b >> 16) & 1)) >> 16)
            return top.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return v.to(ptr.dtype.element_ty)


@triton.jit
def _loss_and_grad(x, t, KIND: tl.constexpr):
    """(loss, d loss / d x) of fp32 tiles x, t; formulas as csrc/loss_kernels.h writes them."""
    if KIND == 0:
        d = x - t
        loss = d * d
        grad = d * 2.0
    elif KIND == 1:
        d = x - t
        loss = tl.abs(d)
        grad = tl.where(d > 0.0, 1.0, 0.0) - tl.where(d < 0.0, 1.0, 0.0)  # 0 at 0 and at NaN, as torch.sign
    elif KIND == 2:
        # The clamped logs are -100 at x = 1 and x = 0 without taking log(0) (no inf, no interpreter
        # warning); x outside [0, 1] is an error (see _recon_kernel), whatever its loss.
        log_1mx = tl.where(x < 1.0, tl.maximum(_log1p(tl.where(x < 1.0, -x, 0.0)), -100.0), -100.0)
        log_x = tl.where(x > 0.0, tl.maximum(tl.log(tl.where(x > 0.0, x, 1.0)), -100.0), -100.0)
        loss = (t - 1.0) * log_1mx - t * log_x
        grad = (x - t) / tl.maximum((1.0 - x) * x, 1e-12)
    else:
        # (1 - t) x - log_sigmoid(x), log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)): stable for any x.
        # Adding the log1p term last keeps losses below x's rounding (e.g. 2e-9 at x = -20, t = 0)
        # that F.binary_cross_entropy_with_logits rounds to 0.
        e = tl.exp(-tl.abs(x))
        loss = (1.0 - t) * x - tl.minimum(x, 0.0) + _log1p(e)
        r = 1.0 / (1.0 + e)
        grad = tl.where(x >= 0.0, r, e * r) - t  # sigmoid(x) from the same exp, which never overflows
    return loss, grad


@triton.jit
def _recon_kernel(x_ptr, t_ptr, w_ptr, loss_ptr, grad_ptr, part_ptr, bad_ptr, n, F, scale,
                  KIND: tl.constexpr, HAS_WEIGHT: tl.constexpr, NEED_GRAD: tl.constexpr, STORE_LOSS: tl.constexpr,
                  WIDE_F: tl.constexpr, BLOCK: tl.constexpr):
    """loss_ptr[i] = w[i % F] * loss(x[i], t[i]) (STORE_LOSS) or part_ptr[pid] = the block's sum of them;
    grad_ptr[i] = scale * w[i % F] * d loss / d x (NEED_GRAD); for bce, bad_ptr[pid] = the block's
    count of inputs outside [0, 1] (NaN included)."""
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    loss, grad = _loss_and_grad(x, t, KIND)
    if HAS_WEIGHT:
        # One 64-bit modulo per program; the per-element one is 32-bit unless F + BLOCK could overflow it.
        if WIDE_F:
            w_offs = (start % F + tl.arange(0, BLOCK)) % F
        else:
            w_offs = ((start % F).to(tl.int32) + tl.arange(0, BLOCK)) % F
        w = tl.load(w_ptr + w_offs, mask=mask, other=0.0).to(tl.float32)
        loss = loss * w
        grad = grad * w
    if STORE_LOSS:
        tl.store(loss_ptr + offs, _to_out(loss, loss_ptr), mask=mask)
    else:
        tl.store(part_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))  # padding lanes are no loss
    if NEED_GRAD:
        tl.store(grad_ptr + offs, _to_out(grad * scale, grad_ptr), mask=mask)
    if KIND == 2:
        bad = tl.where(mask, tl.where((x >= 0.0) & (x <= 1.0), 0, 1), 0)
        tl.store(bad_ptr + pid, tl.sum(bad, axis=0))


@triton.jit
def _kl_kernel(mu_ptr, lv_ptr, loss_ptr, dmu_ptr, dlv_ptr, part_ptr, n, scale,
               NEED_GRAD: tl.constexpr, STORE_LOSS: tl.constexpr, BLOCK: tl.constexpr):
    """loss = 1/2 (mu^2 + exp(lv) - 1 - lv) element-wise (STORE_LOSS) or its block sum into part_ptr[pid];
    dmu = scale mu, dlv = scale (exp(lv) - 1) / 2 (NEED_GRAD)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    lv = tl.load(lv_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.exp(lv)
    loss = 0.5 * (mu * mu + e - 1.0 - lv)
    if STORE_LOSS:
        tl.store(loss_ptr + offs, _to_out(loss, loss_ptr), mask=mask)
    else:
        tl.store(part_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))
    if NEED_GRAD:
        tl.store(dmu_ptr + offs, _to_out(mu * scale, dmu_ptr), mask=mask)
        tl.store(dlv_ptr + offs, _to_out(0.5 * (e - 1.0) * scale, dlv_ptr), mask=mask)


def _scale(reduction, numel, batch):
    """The factor of the summed loss and of the gradient (0 for a mean over nothing)."""
    if reduction == _MEAN:
        return 1.0 / numel if numel else 0.0
    if reduction == _BATCH:
        return 1.0 / batch if batch else 0.0
    return 1.0


def _outputs(ref, reduction, need_grad, num_grads):
    """(loss, gradients...) allocations: loss has ref's shape for reduction none, else 0-d (zero, for
    an empty ref); gradients ref's shape, or empty(0) when not needed."""
    if reduction == _NONE:
        loss = torch.empty(ref.shape, dtype=ref.dtype, device=ref.device)
    elif ref.numel() == 0:
        loss = torch.zeros((), dtype=ref.dtype, device=ref.device)
    else:
        loss = None  # made from the partial sums
    grads = [torch.empty(ref.shape if need_grad else (0,), dtype=ref.dtype, device=ref.device)
             for _ in range(num_grads)]
    return loss, grads


def recon_loss_fwd(input, target, weight, kind: int, reduction: int, batch: int, need_grad: bool):
    """(loss, scale * d loss / d input or an empty tensor) of contiguous input and target of one shape.

    weight: None or contiguous, numel F dividing input's; element i is weighted by weight[i % F].
    The loss is element-wise in input's shape for reduction none (gradient unscaled), else a 0-d
    tensor, scale * the fp32 sum of the element losses; both in input's dtype. For bce, raises
    RuntimeError like torch if an input lies outside [0, 1] or is NaN.
    """
    n = input.numel()
    loss, (grad,) = _outputs(input, reduction, need_grad, 1)
    if n == 0:
        return loss, grad
    scale = _scale(reduction, n, batch)
    programs = triton.cdiv(n, _BLOCK)
    store_loss = reduction == _NONE
    part = None if store_loss else torch.empty(programs, dtype=torch.float32, device=input.device)
    bad = torch.empty(programs, dtype=torch.int32, device=input.device) if kind == _BCE else None
    F = weight.numel() if weight is not None else 1
    # Unused pointers get a placeholder tensor; the kernel never touches them.
    _recon_kernel[(programs,)](
        input, target, weight if weight is not None else input, loss if store_loss else input,
        grad if need_grad else input, part if part is not None else input, bad if bad is not None else input,
        n, F, scale, KIND=kind, HAS_WEIGHT=weight is not None, NEED_GRAD=need_grad, STORE_LOSS=store_loss,
        WIDE_F=F + _BLOCK >= 2**31, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    # Reading the count back waits for the kernel (a device sync on a GPU): the price of torch's error.
    if bad is not None and bad.sum().item() != 0:
        raise RuntimeError(_BCE_RANGE_ERROR)
    if not store_loss:
        loss = (part.sum() * scale).to(input.dtype)
    return loss, grad


def gaussian_kl_fwd(mu, logvar, reduction: int, batch: int, need_grad: bool):
    """(loss, d/dmu, d/dlogvar) of KL(N(mu, exp(logvar)) || N(0, 1)) = 1/2 (mu^2 + exp(lv) - 1 - lv)
    for contiguous mu, logvar of one shape; reductions and outputs as recon_loss_fwd, gradients
    empty(0) when not needed."""
    n = mu.numel()
    loss, (dmu, dlv) = _outputs(mu, reduction, need_grad, 2)
    if n == 0:
        return loss, dmu, dlv
    scale = _scale(reduction, n, batch)
    programs = triton.cdiv(n, _BLOCK)
    store_loss = reduction == _NONE
    part = None if store_loss else torch.empty(programs, dtype=torch.float32, device=mu.device)
    _kl_kernel[(programs,)](
        mu, logvar, loss if store_loss else mu, dmu if need_grad else mu, dlv if need_grad else mu,
        part if part is not None else mu, n, scale, NEED_GRAD=need_grad, STORE_LOSS=store_loss,
        BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    if not store_loss:
        loss = (part.sum() * scale).to(mu.dtype)
    return loss, dmu, dlv
