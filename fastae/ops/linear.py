"""``linear_act``: act(x @ weight.T + bias) in one fused op, forward and backward.

Two layers of torch.library ops:

* ``fastae::linear_act(x, weight, bias, activation)`` — the public op. A composite: it checks
  its arguments, flattens leading dims, picks the backend and calls
* ``fastae::linear_act_fwd`` / ``fastae::linear_act_bwd`` — the 2-D primitives with a fake
  implementation and an autograd formula, which torch.compile keeps as opaque nodes.

Activations whose derivative follows from their output (none, relu, leaky_relu, sigmoid, tanh)
save only the output for backward; gelu, gelu_tanh and silu save the pre-activation.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastae.ops import _backend
from fastae.ops._common import (autocast_inputs, check_choice, check_like, check_tensors, create_graph_grads, needs_grad,
                               plain_eager)

ACTIVATIONS = ("none", "relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh", "silu")
_ACT_ID = {name: i for i, name in enumerate(ACTIVATIONS)}
_GRAD_FROM_OUTPUT = frozenset(_ACT_ID[a] for a in ("none", "relu", "leaky_relu", "sigmoid", "tanh"))
LEAKY_SLOPE = 0.01

# ---------------------------------------------------------------------------------------------
# torch backend: plain PyTorch, the oracle


def _torch_act(act, pre):
    name = ACTIVATIONS[act]
    if name == "none":
        return pre
    if name == "leaky_relu":
        return F.leaky_relu(pre, LEAKY_SLOPE)
    if name == "gelu_tanh":
        return F.gelu(pre, approximate="tanh")
    return getattr(F, name)(pre)


def _torch_act_grad(act, saved):
    """d act / d pre in fp32, from the output or the pre-activation (see module docstring)."""
    s = saved.float()
    name = ACTIVATIONS[act]
    if name == "relu":
        return (s > 0).float()
    if name == "leaky_relu":
        return torch.where(s > 0, 1.0, LEAKY_SLOPE)
    if name == "sigmoid":
        return s * (1 - s)
    if name == "tanh":
        return 1 - s * s
    if name == "gelu":
        return 0.5 * (1 + torch.erf(s * 0.5**0.5)) + s * torch.exp(-0.5 * s * s) * (2 * torch.pi) ** -0.5
    if name == "gelu_tanh":
        c = (2 / torch.pi) ** 0.5
        t = torch.tanh(c * (s + 0.044715 * s**3))
        return 0.5 * (1 + t) + 0.5 * s * (1 - t * t) * c * (1 + 3 * 0.044715 * s * s)
    sig = torch.sigmoid(s)  # silu
    return sig * (1 + s * (1 - sig))


def _torch_fwd(x, weight, bias, act, save_preact):
    pre = F.linear(x, weight, bias)
    return _torch_act(act, pre), (pre if save_preact else x.new_empty(0))


def _torch_bwd(grad_out, x, weight, saved, act, need_x, need_w, need_b):
    g = grad_out if ACTIVATIONS[act] == "none" else (grad_out.float() * _torch_act_grad(act, saved)).to(x.dtype)
    return (
        g @ weight if need_x else x.new_empty(0),  # a fresh empty each: custom op outputs may not alias
        g.t() @ x if need_w else x.new_empty(0),
        g.sum(0) if need_b else x.new_empty(0),
    )


# ---------------------------------------------------------------------------------------------
# the other backends


def _native_fwd(x, weight, bias, act, save_preact):
    return torch.ops.fastae_C.linear_act_fwd(x, weight, bias, act, save_preact)


def _native_bwd(*args):
    return torch.ops.fastae_C.linear_act_bwd(*args)


def _triton_fwd(x, weight, bias, act, save_preact):
    from fastae.kernels import linear_act as kernels

    return kernels.linear_act_fwd(x, weight, bias, act, save_preact)


def _triton_bwd(*args):
    from fastae.kernels import linear_act as kernels

    return kernels.linear_act_bwd(*args)


_FWD = {"torch": _torch_fwd, "cpu": _native_fwd, "cuda": _native_fwd, "triton": _triton_fwd}
_BWD = {"torch": _torch_bwd, "cpu": _native_bwd, "cuda": _native_bwd, "triton": _triton_bwd}

# ---------------------------------------------------------------------------------------------
# the primitives


@torch.library.custom_op("fastae::linear_act_fwd", mutates_args=())
def linear_act_fwd(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: int, backend: str, save_preact: bool
) -> tuple[Tensor, Tensor]:
    """2-D forward: ``(act(x @ weight.T + bias), pre-activation or an empty tensor)``."""
    return _FWD[backend](x, weight, bias, activation, save_preact)


@linear_act_fwd.register_fake
def _(x, weight, bias, activation, backend, save_preact):
    shape = (x.shape[0], weight.shape[0])
    return x.new_empty(shape), x.new_empty(shape if save_preact else (0,))


@torch.library.custom_op("fastae::linear_act_bwd", mutates_args=())
def linear_act_bwd(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    saved: Tensor,
    activation: int,
    backend: str,
    need_x: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """2-D backward: ``(grad_x, grad_weight, grad_bias)``, each an empty tensor when not needed."""
    return _BWD[backend](grad_out, x, weight, saved, activation, need_x, need_w, need_b)


@linear_act_bwd.register_fake
def _(grad_out, x, weight, saved, activation, backend, need_x, need_w, need_b):
    return (
        x.new_empty(x.shape if need_x else (0,)),
        weight.new_empty(weight.shape if need_w else (0,)),
        x.new_empty(weight.shape[0] if need_b else 0),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, act, backend, _ = inputs
    out, preact = output
    # preact is kept for backward only: no gradient flows into it and none is zero-filled for it.
    ctx.mark_non_differentiable(preact)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, weight, out if act in _GRAD_FROM_OUTPUT else preact, bias)
    ctx.act, ctx.backend = act, backend


def _make_backward(bwd):
    """The backward formula, with ``bwd`` computing (dx, dw, db): the linear_act_bwd op, which
    torch.compile keeps in its graph, or the backend function itself, for eager calls."""

    def backward(ctx, grad_out, _grad_preact):
        if grad_out is None:
            return None, None, None, None, None, None
        x, weight, saved, bias = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
            act = ctx.act
            return (*create_graph_grads(lambda x, w, b: _torch_fwd(x, w, b, act, False)[0], (x, weight, bias),
                                        (need_x, need_w, need_b), grad_out), None, None, None)
        dx, dw, db = bwd(grad_out, x, weight, saved, ctx.act, ctx.backend, need_x, need_w, need_b)
        return (dx if need_x else None, dw if need_w else None, db if need_b else None, None, None, None)

    return backward


def _eager_bwd(grad_out, x, weight, saved, act, backend, *need):
    return _BWD[backend](grad_out, x, weight, saved, act, *need)


class _LinearActEager(torch.autograd.Function):
    """linear_act_fwd with the same formulas but without the custom-op machinery, whose Python
    overhead (~150 µs a layer, forward and backward) dominates at autoencoder sizes. Used for
    plain eager calls; anything traced (torch.compile, export, fake tensors) uses the ops."""

    @staticmethod
    def forward(ctx, *inputs):  # ctx in forward: a separate setup_context costs an inspect.signature bind a call
        output = _FWD[inputs[4]](*inputs[:4], inputs[5])
        _setup_context(ctx, inputs, output)
        return output

    backward = staticmethod(_make_backward(_eager_bwd))


linear_act_fwd.register_autograd(_make_backward(linear_act_bwd), setup_context=_setup_context)

# ---------------------------------------------------------------------------------------------
# the public op

_lib = torch.library.Library("fastae", "FRAGMENT")
_lib.define("linear_act(Tensor x, Tensor weight, Tensor? bias=None, str activation='relu') -> Tensor")


def _check(x, weight, bias, activation):
    check_choice("linear_act", "activation", activation, ACTIVATIONS)
    if weight.dim() != 2:
        raise ValueError(f"linear_act: expected weight of shape [out, in], got {weight.dim()}-D {list(weight.shape)}")
    out_f, in_f = weight.shape
    if x.dim() == 0 or x.shape[-1] != in_f:
        raise ValueError(
            f"linear_act: expected x of shape [..., in] with in={in_f} (weight is [{out_f}, {in_f}]), "
            f"got {list(x.shape)}"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_f):
        raise ValueError(f"linear_act: expected bias of shape [{out_f}], got {list(bias.shape)}")
    check_like("linear_act", "x", x, same_shape=False, weight=weight, bias=bias)


def _linear_act(x, weight, bias=None, activation="relu", fwd=linear_act_fwd):
    x, weight, bias = autocast_inputs(x.device, x, weight, bias)
    _check(x, weight, bias, activation)
    act = _ACT_ID[activation]
    save_preact = act not in _GRAD_FROM_OUTPUT and needs_grad(x, weight, bias)
    out, _ = fwd(x.reshape(-1, weight.shape[1]), weight, bias, act, _backend.resolve(x.device), save_preact)
    return out.view(*x.shape[:-1], weight.shape[0])


_lib.impl("linear_act", _linear_act, "CompositeImplicitAutograd")


def linear_act(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "relu") -> Tensor:
    """``act(x @ weight.T + bias)`` with the bias and activation fused into the matmul.

    Args:
        x: ``[..., in]``, float32, float16 or bfloat16 (any leading dims, any strides).
        weight: ``[out, in]`` like ``nn.Linear.weight``, same dtype and device as x.
        bias: ``[out]`` or None.
        activation: one of ``ACTIVATIONS``: none, relu, leaky_relu (slope 0.01), gelu (erf),
            gelu_tanh, sigmoid, tanh, silu.

    Returns:
        ``[..., out]`` in x's dtype; products accumulate in fp32. Differentiable in x, weight
        and bias. The backend is ``fastae.ops.current_backend()`` (``auto``: the fastest here).
    """
    check_tensors("linear_act", optional=("bias",), x=x, weight=weight, bias=bias)
    if plain_eager(x, weight, bias):
        return _linear_act(x, weight, bias, activation, fwd=_LinearActEager.apply)
    return torch.ops.fastae.linear_act(x, weight, bias, activation)
