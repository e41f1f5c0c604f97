"""``mono_conv``: the 3x3, stride-2, padding-1 convolution from one channel into C, or its
transpose from C channels into one: the first and last layers of a conv autoencoder on grey
images (``fastae.models.conv``), forward and backward.

oneDNN runs these one-channel shapes as general convolutions; fastae's C++ kernels
(csrc/mono_conv.cpp) treat each C-channel pixel of a channels-last tensor as one vector against
the 9 x C weights. Backends: ``cpu`` (those kernels) and ``torch`` (``F.conv2d`` /
``F.conv_transpose2d`` and aten's convolution backward: the oracle, and what every other device
runs). Layout: the C-channel side comes out channels-last.

Two layers of ops, as for ``linear_act``: ``fastae::mono_conv_fwd`` / ``fastae::mono_conv_bwd``,
torch.library primitives with fake implementations and an autograd formula (what torch.compile
sees), and, for plain eager calls, a ``torch.autograd.Function`` with the same formulas and none
of the custom-op overhead.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastae.ops import _backend
from fastae.ops._common import autocast_inputs, check_like, check_tensors, create_graph_grads, plain_eager

_STRIDE, _PADDING = (2, 2), (1, 1)


def half_size(n: int) -> int:
    """The size a 3x3, stride-2, padding-1 convolution makes of ``n``."""
    return (n - 1) // 2 + 1


def _output_padding(h, w, height, width):
    return (height - 2 * h + 1, width - 2 * w + 1)


# ---------------------------------------------------------------------------------------------
# backends


def _torch_fwd(x, weight, bias, transposed, height, width):
    if transposed:
        return F.conv_transpose2d(x, weight, bias, _STRIDE, _PADDING, _output_padding(*x.shape[2:], height, width))
    return F.conv2d(x, weight, bias, _STRIDE, _PADDING).contiguous(memory_format=torch.channels_last)


def _torch_bwd(grad, x, weight, transposed, need_x, need_w, need_b):
    out_pad = _output_padding(*x.shape[2:], *grad.shape[2:]) if transposed else (0, 0)
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[1] if transposed else weight.shape[0]], _STRIDE, _PADDING, (1, 1),
        transposed, out_pad, 1, [need_x, need_w, need_b])
    empty = x.new_empty(0)
    return (gx.contiguous(memory_format=torch.channels_last) if need_x and transposed else gx if need_x else empty,
            gw if need_w else empty, gb if need_b else empty)


def _cpu_fwd(x, weight, bias, transposed, height, width):
    if transposed:
        return torch.ops.fastae_C.mono_conv_tfwd(x, weight, bias, height, width)
    return torch.ops.fastae_C.mono_conv_fwd(x, weight, bias)


def _cpu_bwd(grad, x, weight, transposed, need_x, need_w, need_b):
    ops = torch.ops.fastae_C
    empty = x.new_empty(0)
    if transposed:  # x [B, C, h, w] -> [B, 1, H, W]
        dx = ops.mono_conv_fwd(grad, weight, None) if need_x else empty
        dw = ops.mono_conv_wgrad(x, grad)[0].to(weight.dtype) if need_w else empty
        db = grad.sum(dtype=torch.float32).reshape(1).to(weight.dtype) if need_b else empty
    else:  # x [B, 1, H, W] -> [B, C, h, w]
        dx = ops.mono_conv_tfwd(grad, weight, None, x.shape[2], x.shape[3]) if need_x else empty
        if need_w or need_b:
            dw, db = ops.mono_conv_wgrad(grad, x)
            dw = dw.to(weight.dtype) if need_w else empty
            db = db.to(weight.dtype) if need_b else empty
        else:
            dw = db = empty
    return dx, dw, db


_FWD = {"torch": _torch_fwd, "cpu": _cpu_fwd}
_BWD = {"torch": _torch_bwd, "cpu": _cpu_bwd}


def _backend_for(device):
    """cpu where fastae's kernels run (the auto choice on a CPU, or forced), else torch: the GPU
    backends have no kernels of their own for this op and use cuDNN through torch."""
    name = _backend.resolve(device)
    return name if name in _FWD else "torch"


# ---------------------------------------------------------------------------------------------
# primitives


@torch.library.custom_op("fastae::mono_conv_fwd", mutates_args=())
def mono_conv_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], transposed: bool, height: int, width: int,
                  backend: str) -> Tensor:
    """The convolution (see the module docstring); height/width: the output's size when transposed."""
    return _FWD[backend](x, weight, bias, transposed, height, width)


@mono_conv_fwd.register_fake
def _(x, weight, bias, transposed, height, width, backend):
    if transposed:
        return x.new_empty(x.shape[0], 1, height, width)
    shape = (x.shape[0], weight.shape[0], half_size(x.shape[2]), half_size(x.shape[3]))
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last)


@torch.library.custom_op("fastae::mono_conv_bwd", mutates_args=())
def mono_conv_bwd(grad: Tensor, x: Tensor, weight: Tensor, transposed: bool, backend: str, need_x: bool,
                  need_w: bool, need_b: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_weight, grad_bias), each an empty tensor when not needed."""
    return _BWD[backend](grad, x, weight, transposed, need_x, need_w, need_b)


@mono_conv_bwd.register_fake
def _(grad, x, weight, transposed, backend, need_x, need_w, need_b):
    bias_size = weight.shape[1] if transposed else weight.shape[0]
    dx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    if need_x and transposed:
        dx = dx.contiguous(memory_format=torch.channels_last)
    return dx, weight.new_empty(weight.shape if need_w else (0,)), weight.new_empty(bias_size if need_b else 0)


def _setup_context(ctx, inputs, output):
    x, weight, bias, transposed, _, _, backend = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.transposed, ctx.backend = transposed, backend


def _make_backward(bwd):
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        rest = (None,) * 4
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            transposed, height, width = ctx.transposed, grad.shape[2], grad.shape[3]
            return (*create_graph_grads(lambda x, w, b: _torch_fwd(x, w, b, transposed, height, width),
                                        (x, weight, bias), (need_x, need_w, need_b), grad), *rest)
        grad = grad.contiguous() if ctx.transposed else grad  # [B, 1, H, W]; the C-channel side in any layout
        dx, dw, db = bwd(grad, x, weight, ctx.transposed, ctx.backend, need_x, need_w, need_b)
        return (dx if need_x else None, dw if need_w else None, db if need_b else None, *rest)

    return backward


class _MonoConvEager(torch.autograd.Function):
    """mono_conv_fwd without the custom-op machinery, for plain eager calls (see fastae.ops.linear)."""

    @staticmethod
    def forward(ctx, *inputs):
        _setup_context(ctx, inputs, None)
        return _FWD[inputs[6]](*inputs[:6])

    backward = staticmethod(_make_backward(
        lambda grad, x, weight, transposed, backend, *need: _BWD[backend](grad, x, weight, transposed, *need)))


mono_conv_fwd.register_autograd(_make_backward(mono_conv_bwd), setup_context=_setup_context)

# ---------------------------------------------------------------------------------------------
# the public op

_lib = torch.library.Library("fastae", "FRAGMENT")
_lib.define("mono_conv(Tensor x, Tensor weight, Tensor? bias=None, bool transposed=False, SymInt[]? output_size=None) "
            "-> Tensor")


def _check(x, weight, bias, transposed, output_size):
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (1, 3, 3):
        raise ValueError(f"mono_conv: expected weight of shape [C, 1, 3, 3], got {list(weight.shape)}")
    C = weight.shape[0]
    if transposed:
        if x.dim() != 4 or x.shape[1] != C:
            raise ValueError(f"mono_conv: expected x of shape [B, {C}, h, w] (weight has C={C}), got {list(x.shape)}")
        if output_size is None or len(output_size) != 2:
            raise ValueError(f"mono_conv: transposed needs output_size (H, W), got {output_size!r}")
        H, W = (int(s) for s in output_size)
        if (half_size(H), half_size(W)) != tuple(x.shape[2:]):
            raise ValueError(f"mono_conv: output_size {[H, W]} does not halve to x's {list(x.shape[2:])} "
                             f"(expected {2 * x.shape[2] - 1} or {2 * x.shape[2]} by {2 * x.shape[3] - 1} or "
                             f"{2 * x.shape[3]})")
        nb = 1
    else:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"mono_conv: expected x of shape [B, 1, H, W], got {list(x.shape)}")
        if output_size is not None:
            raise ValueError(f"mono_conv: output_size is for transposed=True only, got {output_size!r}")
        H = W = 0
        nb = C
    if bias is not None and tuple(bias.shape) != (nb,):
        raise ValueError(f"mono_conv: expected bias of shape [{nb}], got {list(bias.shape)}")
    check_like("mono_conv", "x", x, same_shape=False, weight=weight, bias=bias)
    return H, W


def _mono_conv(x, weight, bias=None, transposed=False, output_size=None, fwd=mono_conv_fwd):
    x, weight, bias = autocast_inputs(x.device, x, weight, bias)
    height, width = _check(x, weight, bias, bool(transposed), output_size)
    return fwd(x, weight, bias, bool(transposed), height, width, _backend_for(x.device))


_lib.impl("mono_conv", _mono_conv, "CompositeImplicitAutograd")


def mono_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, transposed: bool = False,
              output_size=None) -> Tensor:
    """A 3x3 convolution with stride 2 and padding 1 into or out of one channel.

    Args:
        x: ``[B, 1, H, W]``, or with ``transposed`` ``[B, C, h, w]``; float32, float16 or bfloat16.
        weight: ``[C, 1, 3, 3]``: ``nn.Conv2d(1, C, 3)``'s weight, or with ``transposed``
            ``nn.ConvTranspose2d(C, 1, 3)``'s.
        bias: ``[C]`` (``[1]`` with ``transposed``) or None.
        transposed: the transposed convolution from C channels into one.
        output_size: ``(H, W)`` with ``transposed``: ``2h - 1`` or ``2h`` by ``2w - 1`` or ``2w``
            (the output_padding of ``nn.ConvTranspose2d`` 0 or 1).

    Returns:
        ``F.conv2d(x, weight, bias, stride=2, padding=1)`` as a channels-last ``[B, C, h, w]``, or with
        ``transposed`` ``F.conv_transpose2d(x, weight, bias, 2, 1, output_padding)`` ``[B, 1, H, W]``;
        products accumulate in fp32. Differentiable in x, weight and bias; under autocast in its dtype.
    """
    check_tensors("mono_conv", optional=("bias",), x=x, weight=weight, bias=bias)
    if plain_eager(x, weight, bias):
        return _mono_conv(x, weight, bias, transposed, output_size, fwd=_MonoConvEager.apply)
    return torch.ops.fastae.mono_conv(x, weight, bias, bool(transposed),
                                      None if output_size is None else list(output_size))
