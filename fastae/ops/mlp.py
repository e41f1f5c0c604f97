"""``fused_mlp``: a whole MLP, ``h = act_i(h @ W_i.T + b_i)`` layer after layer, as one op.

Like ``linear_act`` (fastae/ops/linear.py) in two layers of torch.library ops:

* ``fastae::fused_mlp(x, weights, biases, activations)`` — the public op, a composite that checks
  its arguments, flattens leading dims, picks the backend and calls
* ``fastae::fused_mlp_fwd`` / ``fastae::fused_mlp_bwd`` — the 2-D primitives with a fake
  implementation and an autograd formula, which torch.compile keeps as two opaque nodes for the
  whole network (not 2 per layer).

What backward needs, and only that, is saved: the input, each hidden layer's output (the next
layer's input; for none, relu, leaky_relu, sigmoid and tanh also the value act' follows from), the
output, and the pre-activation of gelu, gelu_tanh and silu layers only.

Backends: ``cpu`` runs every layer in one C++ call (csrc/linear_act.cpp: the GEMMs of linear_act
with the bias folded in and the activation / its derivative / the bias gradient as one pass, no
Python or dispatcher round trip between layers); ``triton`` runs networks whose hidden widths are
at most 256 as one fused kernel per direction (kernels/fused_mlp.py, tiny-cuda-nn style) and
wider ones, like ``cuda``, as linear_act's fused GEMM kernels layer by layer inside the one op;
``torch`` is the oracle.
"""

from typing import Optional, Sequence

import torch
from torch import Tensor

from fastae.ops import _backend
from fastae.ops._common import (DTYPES, PLAIN_TYPES, autocast_inputs, check_choice, check_like, check_tensors,
                                create_graph_grads, needs_grad, plain_eager)
from fastae.ops import linear as _linear
from fastae.ops.linear import _ACT_ID, _GRAD_FROM_OUTPUT, ACTIVATIONS

# ---------------------------------------------------------------------------------------------
# backends: per layer (torch oracle, triton / cuda on linear_act's kernels) or all at once (cpu)


def _layered_fwd(layer_fwd):
    def fwd(x, weights, biases, acts, save):
        hidden, preacts = [], []
        h = x
        for i, (w, b, act) in enumerate(zip(weights, biases, acts)):
            keep_pre = save and act not in _GRAD_FROM_OUTPUT
            y, pre = layer_fwd(h, w, b, act, keep_pre)
            if save:
                preacts.append(pre if keep_pre else x.new_empty(0))
                if i + 1 < len(weights):
                    hidden.append(y)
            h = y
        return h, hidden, preacts

    return fwd


def _layered_bwd(layer_bwd):
    def bwd(grad_out, x, weights, hidden, out, preacts, acts, need_x, need_w, need_b):
        n = len(weights)
        dweights, dbiases = [None] * n, [None] * n
        dx = x.new_empty(0)
        g = grad_out
        for i in range(n - 1, -1, -1):
            act = acts[i]
            saved = (out if i == n - 1 else hidden[i]) if act in _GRAD_FROM_OUTPUT else preacts[i]
            inp = x if i == 0 else hidden[i - 1]
            need_in = i > 0 or need_x
            g_in, dweights[i], dbiases[i] = layer_bwd(g, inp, weights[i], saved, act, need_in, need_w, need_b)
            if i == 0 and need_x:
                dx = g_in
            g = g_in
        return dx, dweights, dbiases

    return bwd


def _native_fwd(x, weights, biases, acts, save):
    return torch.ops.fastae_C.fused_mlp_fwd(x, weights, biases, acts, save)


def _native_bwd(*args):
    return torch.ops.fastae_C.fused_mlp_bwd(*args)


def _triton_layer_fwd(*args):
    from fastae.kernels import linear_act as kernels

    return kernels.linear_act_fwd(*args)


def _triton_layer_bwd(*args):
    from fastae.kernels import linear_act as kernels

    return kernels.linear_act_bwd(*args)


def _triton_fused(x, weights):
    """kernels/fused_mlp.py when it takes this network (hidden widths <= 256), else None."""
    from fastae.kernels import fused_mlp as kernels

    return kernels if kernels.fusable((x.shape[1], *(w.shape[0] for w in weights)), x.dtype) else None


def _triton_fwd(x, weights, biases, acts, save):
    kernels = _triton_fused(x, weights)
    if kernels is not None:
        return kernels.fused_mlp_fwd(x, weights, biases, acts, save)
    return _layered_fwd(_triton_layer_fwd)(x, weights, biases, acts, save)


def _triton_bwd(grad_out, x, weights, *rest):
    kernels = _triton_fused(x, weights)
    if kernels is not None:
        return kernels.fused_mlp_bwd(grad_out, x, weights, *rest)
    return _layered_bwd(_triton_layer_bwd)(grad_out, x, weights, *rest)


def _cuda_layer_fwd(*args):
    return torch.ops.fastae_C.linear_act_fwd(*args)


def _cuda_layer_bwd(*args):
    return torch.ops.fastae_C.linear_act_bwd(*args)


_FWD = {"torch": _layered_fwd(_linear._torch_fwd), "cpu": _native_fwd,
        "cuda": _layered_fwd(_cuda_layer_fwd), "triton": _triton_fwd}
_BWD = {"torch": _layered_bwd(_linear._torch_bwd), "cpu": _native_bwd,
        "cuda": _layered_bwd(_cuda_layer_bwd), "triton": _triton_bwd}

# ---------------------------------------------------------------------------------------------
# the primitives


@torch.library.custom_op("fastae::fused_mlp_fwd", mutates_args=())
def fused_mlp_fwd(
    x: Tensor, weights: list[Tensor], biases: list[Optional[Tensor]], activations: list[int], backend: str, save: bool
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """2-D forward: ``(output, hidden outputs, pre-activations)``; with ``save`` the L-1 hidden
    layer outputs and per layer its pre-activation where act' needs it (else an empty tensor);
    without ``save`` both lists are empty."""
    return _FWD[backend](x, list(weights), list(biases), list(activations), save)


@fused_mlp_fwd.register_fake
def _(x, weights, biases, activations, backend, save):
    m = x.shape[0]
    out = x.new_empty(m, weights[-1].shape[0])
    if not save:
        return out, [], []
    hidden = [x.new_empty(m, w.shape[0]) for w in weights[:-1]]
    preacts = [x.new_empty(m, w.shape[0]) if a not in _GRAD_FROM_OUTPUT else x.new_empty(0)
               for w, a in zip(weights, activations)]
    return out, hidden, preacts


@torch.library.custom_op("fastae::fused_mlp_bwd", mutates_args=())
def fused_mlp_bwd(
    grad_out: Tensor,
    x: Tensor,
    weights: list[Tensor],
    hidden: list[Tensor],
    out: Tensor,
    preacts: list[Tensor],
    activations: list[int],
    backend: str,
    need_x: bool,
    need_w: bool,
    need_b: bool,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """2-D backward: ``(grad_x, grad_weights, grad_biases)``, empty tensors where not needed."""
    dx, dw, db = _BWD[backend](grad_out, x, list(weights), list(hidden), out, list(preacts), list(activations),
                               need_x, need_w, need_b)
    return dx, list(dw), list(db)


@fused_mlp_bwd.register_fake
def _(grad_out, x, weights, hidden, out, preacts, activations, backend, need_x, need_w, need_b):
    return (
        x.new_empty(x.shape if need_x else (0,)),
        [w.new_empty(w.shape if need_w else (0,)) for w in weights],
        [x.new_empty(w.shape[0] if need_b else 0) for w in weights],
    )


def _oracle(acts):
    """The network in differentiable torch ops, for create_graph=True backward (see create_graph_grads)."""

    def f(x, *params):
        n = len(acts)
        h = x
        for w, b, act in zip(params[:n], params[n:], acts):
            h = _linear._torch_fwd(h, w, b, act, False)[0]
        return h

    return f


def _backward(ctx, grad_out, bwd):
    n = ctx.n
    saved = ctx.saved_tensors
    x, out, weights = saved[0], saved[1], list(saved[2:2 + n])
    hidden, preacts = list(saved[2 + n:2 * n + 1]), list(saved[2 * n + 1:])
    biases = ctx.biases
    need_x = ctx.needs_input_grad[0]
    need_w, need_b = ctx.need_w, ctx.need_b
    if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
        params = [*weights, *biases]
        grads = create_graph_grads(_oracle(ctx.acts), (x, *params), (need_x, *ctx.param_needs), grad_out)
        return grads[0], grads[1:1 + n], grads[1 + n:]
    dx, dw, db = bwd(grad_out, x, weights, hidden, out, preacts, ctx.acts, ctx.backend, need_x,
                     any(need_w), any(b is not None and nb for b, nb in zip(biases, need_b)))
    dw = [d if need else None for d, need in zip(dw, need_w)]
    db = [d if (need and b is not None) else None for d, b, need in zip(db, biases, need_b)]
    return (dx if need_x else None), dw, db


def _save(ctx, x, weights, biases, acts, backend, out, hidden, preacts, need_w, need_b):
    ctx.save_for_backward(x, out, *weights, *hidden, *preacts)
    # biases are not needed by backward; only whether each exists (kept as None or the tensor for create_graph)
    ctx.biases = list(biases)
    ctx.n, ctx.acts, ctx.backend = len(weights), list(acts), backend
    ctx.need_w, ctx.need_b = need_w, need_b


def _setup_context(ctx, inputs, output):
    x, weights, biases, acts, backend, _ = inputs
    out, hidden, preacts = output
    ctx.mark_non_differentiable(*hidden, *preacts)
    ctx.set_materialize_grads(False)
    _save(ctx, x, weights, biases, acts, backend, out, hidden, preacts,
          [w.requires_grad for w in weights], [b is not None and b.requires_grad for b in biases])
    ctx.param_needs = [*ctx.need_w, *ctx.need_b]


def _op_backward(ctx, grad_out, _grad_hidden, _grad_preacts):
    n = ctx.n
    if grad_out is None:
        return None, [None] * n, [None] * n, None, None, None
    dx, dw, db = _backward(ctx, grad_out, fused_mlp_bwd)
    return dx, dw, db, None, None, None


fused_mlp_fwd.register_autograd(_op_backward, setup_context=_setup_context)


def _eager_bwd(grad_out, x, weights, hidden, out, preacts, acts, backend, *need):
    return _BWD[backend](grad_out, x, weights, hidden, out, preacts, acts, *need)


class _FusedMLPEager(torch.autograd.Function):
    """fused_mlp_fwd's formulas without the custom-op machinery (its Python overhead is a large
    part of a step at batch 256), for plain eager calls; anything traced uses the ops.

    apply(x, n, acts, backend, save, *weights, *biases) -> output."""

    @staticmethod
    def forward(ctx, x, n, acts, backend, save, *params):
        weights, biases = list(params[:n]), list(params[n:])
        out, hidden, preacts = _FWD[backend](x, weights, biases, acts, save)
        if save:
            need = ctx.needs_input_grad[5:]
            _save(ctx, x, weights, biases, acts, backend, out, hidden, preacts, list(need[:n]),
                  [b is not None and nb for b, nb in zip(biases, need[n:])])
            ctx.param_needs = list(need)
        else:
            ctx.n = n
        return out

    @staticmethod
    def backward(ctx, grad_out):
        dx, dw, db = _backward(ctx, grad_out, _eager_bwd)
        return (dx, None, None, None, None, *dw, *db)


# ---------------------------------------------------------------------------------------------
# the public op

_lib = torch.library.Library("fastae", "FRAGMENT")
_lib.define("fused_mlp(Tensor x, Tensor[] weights, Tensor?[] biases, str[] activations) -> Tensor")


def _check(x, weights, biases, activations):
    """The arguments as _check_detail wants them; a plain loop over the layers first, because
    this runs on every call (the detailed per-layer checks cost ~10 us for four layers)."""
    n = len(weights)
    if n and len(biases) == n and len(activations) == n and x.dtype in DTYPES and x.dim():
        width, dtype, device = x.shape[-1], x.dtype, x.device
        for w, b, a in zip(weights, biases, activations):
            if (a not in ACTIVATIONS or w.dim() != 2 or w.shape[1] != width or w.dtype != dtype
                    or w.device != device or (b is not None and (b.dim() != 1 or b.shape[0] != w.shape[0]
                                                                 or b.dtype != dtype or b.device != device))):
                break
            width = w.shape[0]
        else:
            return
    _check_detail(x, weights, biases, activations)


def _check_detail(x, weights, biases, activations):
    op = "fused_mlp"
    if len(weights) == 0:
        raise ValueError(f"{op}: expected at least one weight, got none")
    if len(biases) != len(weights) or len(activations) != len(weights):
        raise ValueError(f"{op}: expected one bias (or None) and one activation per weight ({len(weights)}), "
                         f"got {len(biases)} biases and {len(activations)} activations")
    for a in activations:
        check_choice(op, "activation", a, ACTIVATIONS)
    width = x.shape[-1] if x.dim() else None
    for i, (w, b) in enumerate(zip(weights, biases)):
        if w.dim() != 2:
            raise ValueError(f"{op}: expected weights[{i}] of shape [out, in], got {w.dim()}-D {list(w.shape)}")
        if w.shape[1] != width:
            what = "x of shape [..., in]" if i == 0 else f"weights[{i}] to take the {width} outputs of layer {i - 1}"
            raise ValueError(f"{op}: expected {what} with in={w.shape[1] if i == 0 else width}, "
                             f"got {list(x.shape) if i == 0 else list(w.shape)}")
        if b is not None and (b.dim() != 1 or b.shape[0] != w.shape[0]):
            raise ValueError(f"{op}: expected biases[{i}] of shape [{w.shape[0]}], got {list(b.shape)}")
        check_like(op, "x", x, same_shape=False, **{f"weights[{i}]": w, f"biases[{i}]": b})
        width = w.shape[0]


def _prepare(x, weights, biases, activations):
    n = len(weights)
    cast = autocast_inputs(x.device, x, *weights, *biases)
    x, weights, biases = cast[0], list(cast[1:1 + n]), list(cast[1 + n:])
    _check(x, weights, biases, activations)
    acts = [_ACT_ID[a] for a in activations]
    return x, weights, biases, acts, _backend.resolve(x.device)


def _fused_mlp(x, weights, biases, activations):
    x, weights, biases, acts, backend = _prepare(x, weights, biases, activations)
    save = needs_grad(x, *weights, *biases)
    out, _, _ = fused_mlp_fwd(x.reshape(-1, weights[0].shape[1]), weights, biases, acts, backend, save)
    return out.view(*x.shape[:-1], weights[-1].shape[0])


_lib.impl("fused_mlp", _fused_mlp, "CompositeImplicitAutograd")


def fused_mlp(x: Tensor, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]],
              activations: Sequence[str]) -> Tensor:
    """A whole MLP in one op: ``h = act_i(h @ weights[i].T + biases[i])`` for each layer i.

    Args:
        x: ``[..., in]``, float32, float16 or bfloat16 (any leading dims).
        weights: ``[out_i, in_i]`` per layer like ``nn.Linear.weight``, chained (``in_{i+1} = out_i``),
            x's dtype and device.
        biases: ``[out_i]`` or None per layer.
        activations: one of ``ACTIVATIONS`` per layer.

    Returns:
        ``[..., out_last]`` in x's dtype; products accumulate in fp32. Differentiable in x, the
        weights and the biases; backward gets only the input, the hidden outputs, the output and
        the pre-activations of gelu / gelu_tanh / silu layers. The backend is
        ``fastae.ops.current_backend()`` (``auto``: cpu on the CPU, see docs/ops.md).
    """
    weights, biases, activations = list(weights), list(biases), list(activations)
    if not (type(x) in PLAIN_TYPES and all(type(w) in PLAIN_TYPES for w in weights)
            and all(b is None or type(b) in PLAIN_TYPES for b in biases)):  # the named checks only when needed
        check_tensors("fused_mlp", x=x)
        check_tensors("fused_mlp", **{f"weights[{i}]": w for i, w in enumerate(weights)})
        check_tensors("fused_mlp", optional=tuple(f"biases[{i}]" for i in range(len(biases))),
                      **{f"biases[{i}]": b for i, b in enumerate(biases)})
    if plain_eager(x, *weights, *biases):
        x, weights, biases, acts, backend = _prepare(x, weights, biases, activations)
        save = needs_grad(x, *weights, *biases)
        out = _FusedMLPEager.apply(x.reshape(-1, weights[0].shape[1]), len(weights), acts, backend, save,
                                   *weights, *biases)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], weights[-1].shape[0])
    return torch.ops.fastae.fused_mlp(x, weights, biases, activations)
