"""``gdn``: generalized divisive normalization, y = x / sqrt(beta + conv1x1(x^2, gamma)) (``inverse``:
times the square root), in one fused op, forward and backward.

Layers as in ``fastae.ops.linear``: the public composite ``fastae::gdn`` checks its arguments,
applies autocast and picks the backend; the primitives ``fastae::gdn_fwd`` / ``fastae::gdn_bwd``
carry a fake implementation and the autograd formula. The forward keeps ``r = f(norm)``
(``f`` = rsqrt, or sqrt for the inverse) for backward, where with ``q = g x f'(norm)``

    dx = g r + 2 x (gamma^T q),   d beta = sum q,   d gamma = sum q (x^2)^T     (sums over pixels)

and ``f'(norm)`` follows from r alone (``-r^3 / 2``, or ``1 / (2 r)``).

Backends: ``cpu`` (csrc/gdn.cpp: tiles of pixels, the square, the 1x1 convolution as a GEMM and
the rsqrt/sqrt and product in one pass over memory; on CPUs with AVX512_BF16 a bfloat16 forward
multiplies bfloat16 squares, as eager bfloat16 GDN does, at twice the fp32 rate), ``triton``
(kernels/gdn.py; also what a ``cuda`` backend runs, there being no hand-written CUDA kernel) and
``torch`` (the oracle, operation for operation the eager GDN that fastae.models.codec.GDN ran
before). NCHW and channels_last inputs keep their layout. float64 inputs run the oracle on every
backend (the kernels accumulate in fp32).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from fastae.ops import _backend
from fastae.ops._common import autocast_inputs, check_tensors, create_graph_grads, needs_grad, plain_eager

_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# ``auto`` on the CPU (bench/test_gdn.py, one thread of the 2-core Zen 4 CPU): the fused kernel is
# 1.3-1.9x faster than eager GDN in fp32 inference, 1.1-3x in bf16, 1.35-1.6x in fp32 forward and
# backward, but 0.8-1.3x forward and backward in bf16, whose backward GEMMs run in fp32 where
# oneDNN's run in bf16: reduced precision with gradients stays eager.
_CPU_AUTO_GRAD_DTYPES = (torch.float32,)

# ---------------------------------------------------------------------------------------------
# torch backend: plain PyTorch, the oracle


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _torch_fwd(x, beta, gamma, inverse, save):
    xf = x.to(_compute_dtype(x))
    norm = F.conv2d(xf * xf, gamma.to(xf.dtype)[:, :, None, None], beta.to(xf.dtype))
    r = norm.sqrt() if inverse else norm.rsqrt()
    return (xf * r).to(x.dtype), (r.to(x.dtype) if save else x.new_empty(0))


def _torch_fprime(r, inverse):
    """f'(norm) from r = f(norm): d sqrt = 1 / (2 sqrt), d rsqrt = -rsqrt^3 / 2."""
    return 0.5 / r if inverse else -0.5 * r * r * r


def _torch_bwd(grad, x, gamma, r, inverse, need_x, need_params):
    dt = _compute_dtype(x)
    g, xf, rf = grad.to(dt), x.to(dt), r.to(dt)
    q = g * xf * _torch_fprime(rf, inverse)
    dx = (g * rf + 2 * xf * F.conv2d(q, gamma.to(dt).t()[:, :, None, None])).to(x.dtype) if need_x \
        else x.new_empty(0)
    if not need_params:
        return dx, gamma.new_empty(0), gamma.new_empty(0)
    dbeta = q.sum((0, 2, 3))
    dgamma = torch.einsum("nihw,njhw->ij", q, xf * xf)
    return dx, dbeta.to(gamma.dtype), dgamma.to(gamma.dtype)


def _native_fwd(x, beta, gamma, inverse, save):
    return torch.ops.fastae_C.gdn_fwd(x, beta, gamma, inverse, save)


def _native_bwd(*args):
    return torch.ops.fastae_C.gdn_bwd(*args)


def _triton_fwd(*args):
    from fastae.kernels import gdn as kernels

    return kernels.gdn_fwd(*args)


def _triton_bwd(*args):
    from fastae.kernels import gdn as kernels

    return kernels.gdn_bwd(*args)


_FWD = {"torch": _torch_fwd, "cpu": _native_fwd, "triton": _triton_fwd}
_BWD = {"torch": _torch_bwd, "cpu": _native_bwd, "triton": _triton_bwd}


def _resolve(x, grad):
    """The backend of a gdn call on x: the selected one, with ``cuda`` meaning the Triton kernels
    (or the oracle without triton), float64 always the oracle, and ``auto`` on the CPU the kernel
    except where it was measured slower than eager (see _CPU_AUTO_GRAD_DTYPES)."""
    name = _backend.resolve(x.device)
    if x.dtype == torch.float64:
        return "torch"
    if name == "cuda":
        return "triton" if _backend.available_backends()["triton"][0] else "torch"
    if name == "cpu" and _backend.current_backend() == "auto" and grad and x.dtype not in _CPU_AUTO_GRAD_DTYPES:
        return "torch"
    return name


# ---------------------------------------------------------------------------------------------
# the primitives


def _layout(x):
    """x itself when NCHW- or channels_last-contiguous (the layouts the kernels read), else an NCHW copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


@torch.library.custom_op("fastae::gdn_fwd", mutates_args=())
def gdn_fwd(x: Tensor, beta: Tensor, gamma: Tensor, inverse: bool, backend: str,
            save: bool) -> tuple[Tensor, Tensor]:
    """``(y, r)``: y in x's dtype and layout, r = rsqrt(norm) (sqrt for the inverse) like y when
    ``save``, else an empty tensor. x [N, C, H, W] NCHW- or channels_last-contiguous, beta [C]
    and gamma [C, C] float32."""
    return _FWD[backend](x, beta, gamma, inverse, save)


@gdn_fwd.register_fake
def _(x, beta, gamma, inverse, backend, save):
    return torch.empty_like(x), (torch.empty_like(x) if save else x.new_empty(0))


@torch.library.custom_op("fastae::gdn_bwd", mutates_args=())
def gdn_bwd(grad: Tensor, x: Tensor, gamma: Tensor, r: Tensor, inverse: bool, backend: str, need_x: bool,
            need_params: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dbeta, dgamma)``, each an empty tensor when not needed; grad, x and r of one layout."""
    return _BWD[backend](grad, x, gamma, r, inverse, need_x, need_params)


@gdn_bwd.register_fake
def _(grad, x, gamma, r, inverse, backend, need_x, need_params):
    return (torch.empty_like(x) if need_x else x.new_empty(0),
            gamma.new_empty(gamma.shape[0] if need_params else 0),
            gamma.new_empty(gamma.shape if need_params else (0,)))


def _setup_context(ctx, inputs, output):
    x, beta, gamma, inverse, backend, _ = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, beta, gamma, output[1])
    ctx.inverse, ctx.backend = inverse, backend


def _make_backward(bwd):
    """The backward formula, with ``bwd`` the gdn_bwd op (kept by torch.compile) or, for eager
    calls, the backend function itself."""

    def backward(ctx, grad, _grad_r):
        if grad is None:
            return None, None, None, None, None, None
        x, beta, gamma, r = ctx.saved_tensors
        need_x, need_beta, need_gamma = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            inverse = ctx.inverse
            return (*create_graph_grads(lambda x, b, g: _torch_fwd(x, b, g, inverse, False)[0], (x, beta, gamma),
                                        (need_x, need_beta, need_gamma), grad), None, None, None)
        dx, dbeta, dgamma = bwd(_layout_like(grad, x), x, gamma, r, ctx.inverse, ctx.backend, need_x,
                                need_beta or need_gamma)
        return (dx if need_x else None, dbeta if need_beta else None, dgamma if need_gamma else None,
                None, None, None)

    return backward


def _layout_like(t, x):
    """t in x's memory format (the kernels read grad, x and r with one set of strides)."""
    fmt = torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                  and not x.is_contiguous()) else torch.contiguous_format
    return t.contiguous(memory_format=fmt)


def _eager_bwd(grad, x, gamma, r, inverse, backend, need_x, need_params):
    return _BWD[backend](grad, x, gamma, r, inverse, need_x, need_params)


class _GdnEager(torch.autograd.Function):
    """gdn_fwd without the custom-op machinery, for plain eager calls (see _LinearActEager)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _FWD[inputs[4]](*inputs[:4], inputs[5])
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_make_backward(_eager_bwd))


gdn_fwd.register_autograd(_make_backward(gdn_bwd), setup_context=_setup_context)

# ---------------------------------------------------------------------------------------------
# the public op

_lib = torch.library.Library("fastae", "FRAGMENT")
_lib.define("gdn(Tensor x, Tensor beta, Tensor gamma, bool inverse=False) -> Tensor")


def _check(x, beta, gamma):
    if x.dim() != 4:
        raise ValueError(f"gdn: expected x of shape [N, C, H, W], got {list(x.shape)}")
    c = x.shape[1]
    if x.dtype not in _DTYPES:
        raise TypeError(f"gdn: expected x of dtype float32, bfloat16, float16 or float64, got {x.dtype}")
    if beta.shape != (c,):
        raise ValueError(f"gdn: expected beta of shape [{c}] (x has {c} channels), got {list(beta.shape)}")
    if gamma.shape != (c, c):
        raise ValueError(f"gdn: expected gamma of shape [{c}, {c}] (x has {c} channels), got {list(gamma.shape)}")
    for name, t in (("beta", beta), ("gamma", gamma)):
        if not t.is_floating_point():
            raise TypeError(f"gdn: expected {name} of a floating dtype, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"gdn: expected {name} on {x.device} like x, got {t.device}")


def _gdn(x, beta, gamma, inverse=False, fwd=gdn_fwd):
    (x,) = autocast_inputs(x.device, x)
    _check(x, beta, gamma)
    param_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    beta, gamma = beta.to(param_dtype).contiguous(), gamma.to(param_dtype).contiguous()
    x = _layout(x)
    grad = needs_grad(x, beta, gamma)
    y, _ = fwd(x, beta, gamma, bool(inverse), _resolve(x, grad), grad)
    return y


_lib.impl("gdn", _gdn, "CompositeImplicitAutograd")


def gdn(x: Tensor, beta: Tensor, gamma: Tensor, inverse: bool = False) -> Tensor:
    """Generalized divisive normalization (Ballé et al. 2016):
    ``y[:, i] = x[:, i] / sqrt(beta[i] + sum_j gamma[i, j] x[:, j]^2)``, or times the square root
    for ``inverse`` (IGDN), with the 1x1 convolution, the square root and the product fused.

    Args:
        x: ``[N, C, H, W]`` float32, bfloat16, float16 (computed in fp32) or float64, NCHW or
            channels_last (the output keeps the layout; other strides are copied to NCHW).
        beta: ``[C]``, positive (the caller's reparametrization keeps it so).
        gamma: ``[C, C]``, non-negative.

    Returns:
        ``[N, C, H, W]`` in x's dtype and layout. Differentiable in x, beta and gamma (beta and
        gamma get float32 gradients cast to their dtype). Under autocast x runs in the autocast dtype.
    """
    check_tensors("gdn", x=x, beta=beta, gamma=gamma)
    if plain_eager(x, beta, gamma):
        return _gdn(x, beta, gamma, inverse, fwd=_GdnEager.apply)
    return torch.ops.fastae.gdn(x, beta, gamma, inverse)
