"""Fused losses: ``reconstruction_loss``, ``gaussian_kl`` and ``linear_bce_loss``.

Each computes its gradient in the forward pass, one read of the inputs, and keeps it; backward
only scales it by the incoming gradient (and, after the usual ``loss.backward()`` on the CPU,
where that gradient is exactly 1, not even that). Layers as in ``fastae.ops.linear``: a public
composite op that checks arguments and picks the backend, over primitive custom ops
(``fastae::recon_loss_fwd``, ``fastae::gaussian_kl_fwd``, ``fastae::linear_bce_loss_fwd``) with
fake implementations and autograd formulas.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastae.ops import _backend
from fastae.ops._common import (autocast_inputs, check_choice, check_like, check_tensors, create_graph_grads, needs_grad,
                               plain_eager)

KINDS = ("mse", "l1", "bce", "bce_logits")
REDUCTIONS = ("none", "mean", "sum", "batch")
_MSE, _L1, _BCE, _BCE_LOGITS = range(4)
_NONE, _MEAN, _SUM, _BATCH = range(4)
# linear_bce_loss materialises at most this many logits at a time.
LINEAR_BCE_CHUNK_ELEMENTS = 1 << 22


def _batch(t):
    return t.shape[0] if t.dim() else 1


def _scale(reduction, numel, batch):
    if reduction == _MEAN:
        return 1.0 / numel if numel else 0.0
    if reduction == _BATCH:
        return 1.0 / batch if batch else 0.0
    return 1.0


def _scale_saved_grad(saved, grad_output):
    """``saved * grad_output``, skipping the pass over memory when grad_output is the usual 1.

    Only for plain eager CPU tensors: reading the value would sync a GPU, and cannot be done
    while torch.compile or another tracer runs on fake or functional tensors."""
    if (plain_eager(grad_output) and grad_output.dim() == 0 and grad_output.device.type == "cpu"
            and grad_output.item() == 1.0):
        return saved  # autograd copies it before accumulating while the graph still holds it
    return saved * grad_output


def _reduce(loss, reduction, scale, dtype):
    return (loss if reduction == _NONE else loss.sum() * scale).to(dtype)


# ---------------------------------------------------------------------------------------------
# torch backend: plain PyTorch, the oracle


def _torch_recon(input, target, weight, kind, reduction, batch, need_grad):
    x, t = input.float(), target.float()
    if kind == _MSE:
        loss, grad = (x - t) ** 2, 2 * (x - t)
    elif kind == _L1:
        loss, grad = (x - t).abs(), torch.sign(x - t)
    elif kind == _BCE:
        loss = F.binary_cross_entropy(x, t, reduction="none")
        grad = (x - t) / ((1 - x) * x).clamp_min(1e-12)
    else:
        loss, grad = F.binary_cross_entropy_with_logits(x, t, reduction="none"), torch.sigmoid(x) - t
    if weight is not None:
        w = weight.float().reshape(-1)
        loss, grad = (loss.reshape(-1, w.numel()) * w).view_as(x), (grad.reshape(-1, w.numel()) * w).view_as(x)
    scale = _scale(reduction, x.numel(), batch)
    grad = (grad * scale).to(input.dtype) if need_grad else input.new_empty(0)
    return _reduce(loss, reduction, scale, torch.promote_types(input.dtype, target.dtype)), grad


def _torch_kl(mu, logvar, reduction, batch, need_grad):
    m, lv = mu.float(), logvar.float()
    loss = -0.5 * (1 + lv - m * m - lv.exp())
    scale = _scale(reduction, m.numel(), batch)
    if not need_grad:
        return _reduce(loss, reduction, scale, mu.dtype), mu.new_empty(0), mu.new_empty(0)
    return (_reduce(loss, reduction, scale, mu.dtype), (m * scale).to(mu.dtype),
            (0.5 * (lv.exp() - 1) * scale).to(mu.dtype))


def _native_recon(*args):
    return torch.ops.fastae_C.recon_loss_fwd(*args)


def _native_kl(*args):
    return torch.ops.fastae_C.gaussian_kl_fwd(*args)


def _triton_recon(*args):
    from fastae.kernels import loss as kernels

    return kernels.recon_loss_fwd(*args)


def _triton_kl(*args):
    from fastae.kernels import loss as kernels

    return kernels.gaussian_kl_fwd(*args)


_RECON = {"torch": _torch_recon, "cpu": _native_recon, "cuda": _native_recon, "triton": _triton_recon}
# Backends of recon_loss_fwd that read a target of another dtype than input as it is.
_MIXED_DTYPE_BACKENDS = ("cpu", "torch")
_KL = {"torch": _torch_kl, "cpu": _native_kl, "cuda": _native_kl, "triton": _triton_kl}

# ---------------------------------------------------------------------------------------------
# primitives


@torch.library.custom_op("fastae::recon_loss_fwd", mutates_args=())
def recon_loss_fwd(input: Tensor, target: Tensor, weight: Optional[Tensor], kind: int, reduction: int,
                   backend: str, need_grad: bool) -> tuple[Tensor, Tensor]:
    """Contiguous input and target of one shape -> (loss, d loss / d input or an empty tensor).
    The loss is in the dtype input and target promote to, the gradient in input's; the cpu and
    torch backends take a target of another dtype than input, the others one dtype."""
    return _RECON[backend](input, target, weight, kind, reduction, _batch(input), need_grad)


@recon_loss_fwd.register_fake
def _(input, target, weight, kind, reduction, backend, need_grad):
    loss = input.new_empty(input.shape if reduction == _NONE else (),
                           dtype=torch.promote_types(input.dtype, target.dtype))
    return loss, input.new_empty(input.shape if need_grad else (0,))


def _setup_outputs(ctx, output):
    """The gradients are outputs only to be kept for backward: no gradient flows into them, and
    none is made up (zero-filled, a whole pass over memory) for them."""
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _recon_setup(ctx, inputs, output):
    input, target, weight, kind, reduction, _, _ = inputs
    _setup_outputs(ctx, output)
    ctx.save_for_backward(output[1], input, target, weight)
    ctx.kind, ctx.reduction = kind, reduction


def _bce_target_grad(kind, x, t):
    """d loss / d target of the unreduced, unweighted loss (rarely needed, so unfused)."""
    x = x.float()
    if kind == _BCE:
        return torch.log1p(-x).clamp_min(-100) - torch.log(x).clamp_min(-100)
    return -x


def _recon_oracle(kind, reduction):
    def loss(input, target, weight):
        return _torch_recon(input, target, weight, kind, reduction, _batch(input), False)[0]

    return loss


def _recon_backward(ctx, grad_loss, _):
    grad, input, target, weight = ctx.saved_tensors
    need_input, need_target = ctx.needs_input_grad[:2]
    grad_input = grad_target = None
    if grad_loss is None:
        return None, None, None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
        return (*create_graph_grads(_recon_oracle(ctx.kind, ctx.reduction), (input, target, weight),
                                    ctx.needs_input_grad[:3], grad_loss), None, None, None, None)
    if need_input:
        grad_input = _scale_saved_grad(grad, grad_loss)
    if need_target:
        if ctx.kind in (_MSE, _L1):  # d/dt = -d/dx
            grad_target = -(grad * grad_loss)
        else:
            g = _bce_target_grad(ctx.kind, input, target)
            if weight is not None:
                g = (g.reshape(-1, weight.numel()) * weight.float().reshape(-1)).view_as(g)
            g = g * _scale(ctx.reduction, input.numel(), _batch(input))
            grad_target = (g * grad_loss).to(target.dtype)
    return grad_input, grad_target, None, None, None, None, None


recon_loss_fwd.register_autograd(_recon_backward, setup_context=_recon_setup)


class _ReconLossEager(torch.autograd.Function):
    """recon_loss_fwd without the custom-op machinery, for plain eager calls (see _LinearActEager)."""

    @staticmethod
    def forward(ctx, *inputs):
        input, target, weight, kind, reduction, backend, need_grad = inputs
        output = _RECON[backend](input, target, weight, kind, reduction, _batch(input), need_grad)
        _recon_setup(ctx, inputs, output)
        return output

    backward = staticmethod(_recon_backward)


@torch.library.custom_op("fastae::gaussian_kl_fwd", mutates_args=())
def gaussian_kl_fwd(mu: Tensor, logvar: Tensor, reduction: int, backend: str,
                    need_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Contiguous mu and logvar of one shape -> (loss, d/dmu, d/dlogvar), gradients empty when not needed."""
    return _KL[backend](mu, logvar, reduction, _batch(mu), need_grad)


@gaussian_kl_fwd.register_fake
def _(mu, logvar, reduction, backend, need_grad):
    grad_shape = mu.shape if need_grad else (0,)
    return mu.new_empty(mu.shape if reduction == _NONE else ()), mu.new_empty(grad_shape), mu.new_empty(grad_shape)


def _kl_setup(ctx, inputs, output):
    _setup_outputs(ctx, output)
    ctx.save_for_backward(output[1], output[2], inputs[0], inputs[1])
    ctx.reduction = inputs[2]


def _kl_backward(ctx, grad_loss, _, __):
    dmu, dlogvar, mu, logvar = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
        def oracle(m, lv):
            return _torch_kl(m, lv, ctx.reduction, _batch(m), False)[0]

        return (*create_graph_grads(oracle, (mu, logvar), ctx.needs_input_grad[:2], grad_loss), None, None, None)
    return (_scale_saved_grad(dmu, grad_loss) if ctx.needs_input_grad[0] else None,
            _scale_saved_grad(dlogvar, grad_loss) if ctx.needs_input_grad[1] else None, None, None, None)


gaussian_kl_fwd.register_autograd(_kl_backward, setup_context=_kl_setup)


@torch.library.custom_op("fastae::linear_bce_loss_fwd", mutates_args=())
def linear_bce_loss_fwd(h: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor, reduction: int,
                        backend: str, need_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BCE-with-logits of ``h @ weight.T + bias`` against target, a chunk of rows at a time, so the
    logits are never whole in memory. Returns (loss, d/dh, d/dweight, d/dbias), gradients empty
    when not needed (d/dbias also without a bias)."""
    rows, out_f = h.shape[0], weight.shape[0]
    scale = _scale(reduction, rows * out_f, rows)
    chunk = max(1, min(rows, LINEAR_BCE_CHUNK_ELEMENTS // out_f))
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    if need_grad:
        dh = torch.empty_like(h)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
        db = torch.zeros(out_f, dtype=torch.float32, device=h.device)
    for start in range(0, rows, chunk):
        hc = h[start:start + chunk]
        logits = F.linear(hc, weight, bias)
        loss, g = _RECON[backend](logits, target[start:start + chunk].contiguous(), None, _BCE_LOGITS, _SUM,
                                  logits.shape[0], need_grad)
        total += loss.float()
        if need_grad:
            g = g.mul_(scale)
            torch.mm(g, weight, out=dh[start:start + chunk])
            dw += (g.t() @ hc).float()
            db += g.sum(0, dtype=torch.float32)
    loss = (total * scale).to(h.dtype)
    if not need_grad:
        return loss, h.new_empty(0), h.new_empty(0), h.new_empty(0)
    return loss, dh, dw.to(weight.dtype), (db.to(weight.dtype) if bias is not None else h.new_empty(0))


@linear_bce_loss_fwd.register_fake
def _(h, weight, bias, target, reduction, backend, need_grad):
    if not need_grad:
        return h.new_empty(()), h.new_empty(0), h.new_empty(0), h.new_empty(0)
    return (h.new_empty(()), h.new_empty(h.shape), weight.new_empty(weight.shape),
            weight.new_empty(weight.shape[0] if bias is not None else 0))


def _linear_bce_setup(ctx, inputs, output):
    _setup_outputs(ctx, output)
    ctx.save_for_backward(*output[1:], *inputs[:4])
    ctx.reduction = inputs[4]


def _linear_bce_backward(ctx, grad_loss, *_):
    if grad_loss is None:
        return (None,) * 7
    if ctx.needs_input_grad[3]:
        raise NotImplementedError("linear_bce_loss: no gradient for target")
    dh, dw, db, h, weight, bias, target = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: gradients that can be differentiated again
        def oracle(h, weight, bias):
            return _torch_recon(F.linear(h, weight, bias), target, None, _BCE_LOGITS, ctx.reduction, h.shape[0],
                                False)[0]

        return (*create_graph_grads(oracle, (h, weight, bias), ctx.needs_input_grad[:3], grad_loss),
                None, None, None, None)
    grads = [_scale_saved_grad(g, grad_loss) if need else None
             for g, need in zip((dh, dw, db), ctx.needs_input_grad[:3])]
    return (*grads, None, None, None, None)


linear_bce_loss_fwd.register_autograd(_linear_bce_backward, setup_context=_linear_bce_setup)

# ---------------------------------------------------------------------------------------------
# public ops

_lib = torch.library.Library("fastae", "FRAGMENT")
_lib.define("reconstruction_loss(Tensor input, Tensor target, str kind='mse', str reduction='mean', "
            "Tensor? weight=None) -> Tensor")
_lib.define("gaussian_kl(Tensor mu, Tensor logvar, str reduction='batch') -> Tensor")
_lib.define("linear_bce_loss(Tensor h, Tensor weight, Tensor? bias, Tensor target, str reduction='mean') -> Tensor")


def _reconstruction_loss(input, target, kind="mse", reduction="mean", weight=None, fwd=recon_loss_fwd):
    op = "reconstruction_loss"
    # Under autocast the loss is float32 (the target's dtype), computed from input as it is: no
    # float32 copy of a low-precision reconstruction, and its gradient comes back in its dtype.
    (target,) = autocast_inputs(input.device, target, dtype=torch.float32)
    kind_id = check_choice(op, "kind", kind, KINDS)
    reduction_id = check_choice(op, "reduction", reduction, REDUCTIONS)
    check_like(op, "input", input, same_dtype=False, target=target)
    backend = _backend.resolve(input.device)
    if target.dtype != input.dtype and (backend not in _MIXED_DTYPE_BACKENDS or needs_grad(target)):
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
    if weight is not None:
        feature_shape = tuple(input.shape[1:])
        if tuple(weight.shape) not in (feature_shape, (1,) + feature_shape):
            raise ValueError(f"{op}: expected weight of shape {list(feature_shape)} (input's shape without the "
                             f"batch dim, broadcast over it), got {list(weight.shape)}")
        if weight.requires_grad:
            raise ValueError(f"{op}: weight must not require grad")
        if weight.device != input.device:
            raise ValueError(f"{op}: expected weight on {input.device} like input, got {weight.device}")
        weight = weight.contiguous()
    need_grad = needs_grad(input) or (kind_id in (_MSE, _L1) and needs_grad(target))
    loss, _ = fwd(input.contiguous(), target.contiguous(), weight, kind_id, reduction_id, backend, need_grad)
    return loss


def _gaussian_kl(mu, logvar, reduction="batch"):
    mu, logvar = autocast_inputs(mu.device, mu, logvar, dtype=torch.float32)
    reduction_id = check_choice("gaussian_kl", "reduction", reduction, REDUCTIONS)
    check_like("gaussian_kl", "mu", mu, logvar=logvar)
    loss, _, _ = gaussian_kl_fwd(mu.contiguous(), logvar.contiguous(), reduction_id, _backend.resolve(mu.device),
                                 needs_grad(mu, logvar))
    return loss


def _linear_bce_loss(h, weight, bias, target, reduction="mean"):
    op = "linear_bce_loss"
    h, weight, bias, target = autocast_inputs(h.device, h, weight, bias, target)
    check_choice(op, "reduction", reduction, REDUCTIONS[1:])  # no per-element loss
    reduction_id = REDUCTIONS.index(reduction)
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: expected h of shape [batch, in] and weight of shape [out, in], "
                         f"got {list(h.shape)} and {list(weight.shape)}")
    expected = torch.Size([h.shape[0], weight.shape[0]])
    if target.shape != expected:
        raise ValueError(f"{op}: expected target of shape {list(expected)}, got {list(target.shape)}")
    check_like(op, "h", h, same_shape=False, weight=weight, bias=bias, target=target)
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"{op}: expected bias of shape [{weight.shape[0]}], got {list(bias.shape)}")
    loss, *_ = linear_bce_loss_fwd(h, weight, bias, target, reduction_id, _backend.resolve(h.device),
                                   needs_grad(h, weight, bias))
    return loss


_lib.impl("reconstruction_loss", _reconstruction_loss, "CompositeImplicitAutograd")
_lib.impl("gaussian_kl", _gaussian_kl, "CompositeImplicitAutograd")
_lib.impl("linear_bce_loss", _linear_bce_loss, "CompositeImplicitAutograd")


def reconstruction_loss(input: Tensor, target: Tensor, kind: str = "mse", reduction: str = "mean",
                        weight: Optional[Tensor] = None) -> Tensor:
    """Reconstruction loss with its gradient computed in the same pass over the data.

    Args:
        input: the reconstruction, any shape, float32/float16/bfloat16; for ``bce`` probabilities
            in [0, 1], for ``bce_logits`` logits.
        target: same shape and device as input (no broadcasting), float32/float16/bfloat16: a
            bfloat16 reconstruction is scored against a float32 target as it is, in float32,
            without a float32 copy of it.
        kind: ``mse``, ``l1``, ``bce`` (log clamped at -100, as F.binary_cross_entropy),
            ``bce_logits`` (stable for any logit).
        reduction: ``mean`` (over all elements), ``sum``, ``none`` (per element) or ``batch``
            (sum over all but the first dim, mean over the first).
        weight: optional per-feature weights of shape ``input.shape[1:]``, broadcast over the batch.

    Returns:
        The loss in the dtype input and target promote to (input's when they share it): a
        scalar, or input's shape for ``none``; input's gradient in input's dtype. Under autocast
        the target is taken in float32, so the loss is float32.
    """
    check_tensors("reconstruction_loss", optional=("weight",), input=input, target=target, weight=weight)
    if plain_eager(input, target, weight):
        return _reconstruction_loss(input, target, kind, reduction, weight, fwd=_ReconLossEager.apply)
    return torch.ops.fastae.reconstruction_loss(input, target, kind, reduction, weight)


def gaussian_kl(mu: Tensor, logvar: Tensor, reduction: str = "batch") -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 Σ (1 + logvar - mu² - exp(logvar)), the VAE's
    regulariser, with both gradients from the same pass. Reductions as reconstruction_loss
    (default ``batch``: sum over latent dims, mean over the batch)."""
    check_tensors("gaussian_kl", mu=mu, logvar=logvar)
    return torch.ops.fastae.gaussian_kl(mu, logvar, reduction)


def linear_bce_loss(h: Tensor, weight: Tensor, bias: Optional[Tensor], target: Tensor,
                    reduction: str = "mean") -> Tensor:
    """BCE-with-logits of ``F.linear(h, weight, bias)`` against target — an autoencoder's output
    layer, its sigmoid and its BCE in one op that never holds all the logits: they are made and
    consumed a chunk of rows at a time, and the gradients of h, weight and bias come out of the
    same pass. h: ``[batch, in]``, weight: ``[out, in]``, bias: ``[out]`` or None, target:
    ``[batch, out]``. Reductions: ``mean``, ``sum``, ``batch``."""
    check_tensors("linear_bce_loss", optional=("bias",), h=h, weight=weight, bias=bias, target=target)
    return torch.ops.fastae.linear_bce_loss(h, weight, bias, target, reduction)
