"""A quick numeric self-test of every available backend against the torch oracle
(what ``fastae info --check`` runs)."""

import torch

from fastae.ops import _backend
from fastae.ops.linear import ACTIVATIONS, linear_act

_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _device(name):
    if name == "cuda" or (name == "triton" and not _backend.triton_interpret()):
        return torch.device("cuda")
    return torch.device("cpu")


def _max_rel_error(got, want):
    return max(((g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1)).item()
               for g, w in zip(got, want))


def _linear_act_case(name, device, dtype, act):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 33, generator=gen), torch.randn(17, 33, generator=gen) / 33**0.5,
               torch.randn(17, generator=gen) / 33**0.5, torch.randn(5, 17, generator=gen)]
    # Rounded to `dtype` first, so that the fp32 oracle sees exactly the values the backend sees.
    *inputs, grad = [t.to(dtype).float() for t in tensors]

    def run(backend, dtype, device):
        leaves = [t.to(device, dtype).requires_grad_() for t in inputs]
        with _backend.backend(backend):
            out = linear_act(*leaves, act)
        out.backward(grad.to(device, dtype))
        return [out.cpu()] + [t.grad.cpu() for t in leaves]

    return _max_rel_error(run(name, dtype, device), run("torch", torch.float32, torch.device("cpu")))


def self_check():
    """Yield ``(op, backend, dtype, case, max_error, tolerance)`` for each case on each
    available non-oracle backend; a case passes when max_error <= tolerance."""
    for name, (ok, _) in _backend.available_backends().items():
        if not ok or name == "torch":
            continue
        device = _device(name)
        for dtype, tol in _TOLERANCE.items():
            for act in ACTIVATIONS:
                yield "linear_act", name, dtype, act, _linear_act_case(name, device, dtype, act), tol
