"""A quick numeric self-test of every available backend against the torch oracle
(what ``fastae info --check`` runs)."""

import torch

from fastae.ops import _backend
from fastae.ops.linear import ACTIVATIONS, linear_act
from fastae.ops.loss import KINDS, gaussian_kl, linear_bce_loss, reconstruction_loss
from fastae.ops.mono_conv import mono_conv

_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _device(name):
    if name == "cuda" or (name == "triton" and not _backend.triton_interpret()):
        return torch.device("cuda")
    return torch.device("cpu")


def _cases():
    """(op, case, fn, inputs, how many leading inputs get gradients)."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5, 33, generator=g), torch.randn(17, 33, generator=g) / 33**0.5, torch.randn(17, generator=g)
    for act in ACTIVATIONS:
        yield "linear_act", act, lambda *a, act=act: linear_act(*a, act), (x, w, b), 3
    target = torch.rand(6, 40, generator=g)
    for kind in KINDS:
        input = torch.rand(6, 40, generator=g) * 0.98 + 0.01 if kind == "bce" else torch.randn(6, 40, generator=g)
        yield "recon_loss", kind, lambda *a, kind=kind: reconstruction_loss(*a, kind), (input, target), 2
    yield "gaussian_kl", "batch", gaussian_kl, (torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)), 2
    yield "linear_bce", "mean", linear_bce_loss, (x, w, b, (torch.rand(5, 17, generator=g) > 0.5).float()), 3
    k = torch.randn(8, 1, 3, 3, generator=g) / 3
    yield "mono_conv", "1->C", mono_conv, (torch.rand(2, 1, 9, 8, generator=g), k, torch.randn(8, generator=g)), 3
    yield "mono_conv", "C->1", lambda *a: mono_conv(*a, transposed=True, output_size=(9, 8)), \
        (torch.randn(2, 8, 5, 4, generator=g), k, torch.randn(1, generator=g)), 3


def _run(fn, inputs, n_grad, backend, dtype, device):
    leaves = [t.to(device, dtype, copy=True).requires_grad_(i < n_grad) for i, t in enumerate(inputs)]
    with _backend.backend(backend):
        out = fn(*leaves)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype))
    return [out.detach().cpu()] + [t.grad.cpu() for t in leaves[:n_grad]]  # copy=True: fresh leaves each run


def _max_rel_error(got, want):
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1)).item()
               for a, b in zip(got, want))


def self_check():
    """Yield ``(op, backend, dtype, case, max_error, tolerance)`` for each case on each available
    non-oracle backend; a case passes when max_error <= tolerance. The error is relative to the
    largest value of each output and gradient."""
    for name, (ok, _) in _backend.available_backends().items():
        if not ok or name == "torch":
            continue
        for dtype, tol in _TOLERANCE.items():
            for op, case, fn, inputs, n_grad in _cases():
                # The fp32 oracle runs on values already rounded to dtype: it sees what the backend sees.
                rounded = [t.to(dtype).float() for t in inputs]
                want = _run(fn, rounded, n_grad, "torch", torch.float32, torch.device("cpu"))
                got = _run(fn, rounded, n_grad, name, dtype, _device(name))
                yield op, name, dtype, case, _max_rel_error(got, want), tol
