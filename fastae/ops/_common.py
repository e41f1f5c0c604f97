"""What every public op does before it picks a backend: check its arguments (errors name the
argument, what was expected and what came), apply autocast, and tell plain eager calls, which
can skip the custom-op machinery, from traced ones."""

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensors(op, optional=(), **tensors):
    """Each argument must be a Tensor (None allowed for the names in ``optional``). Run before
    the dispatcher, whose own message for a non-tensor names no argument."""
    for name, t in tensors.items():
        if not (isinstance(t, Tensor) or (t is None and name in optional)):
            raise TypeError(f"{op}: expected {name} to be a Tensor, got {type(t).__name__}")


def check_choice(op, name, value, allowed):
    """``value`` must be one of ``allowed``; returns its index."""
    if value not in allowed:
        raise ValueError(f"{op}: unknown {name} {value!r}; expected one of {allowed}")
    return allowed.index(value)


def check_like(op, ref_name, ref, same_shape=True, same_dtype=True, **others):
    """ref must be float32/float16/bfloat16; the others (None skipped) must have its dtype (or,
    with ``same_dtype=False``, one of those three), device and, with same_shape, its shape (no
    silent broadcasting)."""
    if ref.dtype not in DTYPES:
        raise TypeError(f"{op}: expected {ref_name} of dtype float32, float16 or bfloat16, got {ref.dtype}")
    for name, t in others.items():
        if t is None:
            continue
        if same_shape and t.shape != ref.shape:
            raise ValueError(f"{op}: expected {name} of shape {list(ref.shape)} like {ref_name}, got {list(t.shape)}")
        if same_dtype and t.dtype != ref.dtype:
            raise TypeError(f"{op}: expected {name} of dtype {ref.dtype} like {ref_name}, got {t.dtype}")
        if not same_dtype and t.dtype not in DTYPES:
            raise TypeError(f"{op}: expected {name} of dtype float32, float16 or bfloat16, got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{op}: expected {name} on {ref.device} like {ref_name}, got {t.device}")


def needs_grad(*tensors):
    """Whether autograd will want gradients of any of ``tensors`` (None skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_inputs(device, *tensors, dtype=None):
    """Under autocast, floating tensors in ``dtype`` (default: the autocast dtype), as autocast
    does for torch's own ops: matmuls run in the low precision, losses in fp32."""
    if not (torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)):
        return tensors
    dtype = dtype or torch.get_autocast_dtype(device.type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


PLAIN_TYPES = (Tensor, torch.nn.Parameter)  # exact types: a subclass is traced or wrapped


def plain_eager(*tensors):
    """True outside torch.compile and any tracer: every tensor a plain Tensor or Parameter, no dispatch mode."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and all(type(t) in PLAIN_TYPES for t in tensors if t is not None))


def create_graph_grads(oracle, inputs, needs, grad_output):
    """Gradients of ``oracle(*inputs)`` (plain, differentiable torch ops computing the same value as
    a fused op) for the inputs where ``needs`` is true, None elsewhere, with a graph: for a
    backward run with ``create_graph=True``. The fused ops compute their gradients in the forward
    pass (or in a kernel), so those have no graph back to the inputs, and a second derivative
    taken through them (a gradient penalty, a Hessian-vector product) would silently lack every
    term but the one through ``grad_output``."""
    wanted = [t for t, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        grads = iter(torch.autograd.grad(oracle(*inputs), wanted, grad_output, create_graph=True, allow_unused=True))
    return [next(grads) if need else None for need in needs]
