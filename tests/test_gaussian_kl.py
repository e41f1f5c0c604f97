"""fastae.ops.gaussian_kl on every backend against the closed-form KL written in PyTorch."""

import pytest
import torch

import fastae
from fastae.ops import REDUCTIONS, gaussian_kl
from tests._util import assert_close, backend_params, device_for

DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    pytest.param(torch.float16, 5e-3, 5e-3, id="fp16"),
]


def oracle(mu, logvar, reduction):
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp())
    if reduction == "none":
        return kl
    if reduction == "batch":
        return kl.sum() / mu.shape[0]
    return getattr(kl, reduction)()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (17, 3), (256, 64), (4, 3, 5)], ids=str)
def test_matches_formula(backend, reduction, dtype, atol, rtol, shape):
    device = device_for(backend)
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(shape, generator=g).to(device, dtype)
    logvar = (torch.randn(shape, generator=g) * 2).to(device, dtype)
    leaves = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
    with fastae.ops.backend(backend):
        kl = gaussian_kl(*leaves, reduction=reduction)
    refs = [mu.float().requires_grad_(), logvar.float().requires_grad_()]
    ref = oracle(*refs, reduction)
    assert kl.dtype == dtype and kl.shape == ref.shape
    assert_close(kl, ref, atol, rtol)
    grad_out = torch.randn(ref.shape, generator=g)
    kl.backward(grad_out.to(device, dtype))
    ref.backward(grad_out.to(device))
    for leaf, r in zip(leaves, refs):
        assert_close(leaf.grad, r.grad, atol, rtol)


@pytest.mark.parametrize("backend", backend_params())
def test_zero_at_the_prior_and_gradient_only_where_required(backend):
    device = device_for(backend)
    mu = torch.zeros(8, 4, device=device)
    logvar = torch.zeros(8, 4, device=device, requires_grad=True)
    with fastae.ops.backend(backend):
        kl = gaussian_kl(mu, logvar)
    assert kl.item() == 0.0
    kl.backward()
    assert mu.grad is None and torch.equal(logvar.grad, torch.zeros_like(logvar))


@pytest.mark.parametrize("backend", backend_params())
def test_opcheck(backend):
    device = device_for(backend)
    mu = torch.randn(6, 5, device=device, requires_grad=True)
    logvar = torch.randn(6, 5, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fastae.gaussian_kl_fwd, (mu, logvar, REDUCTIONS.index("batch"), backend, True))
    with fastae.ops.backend(backend):
        torch.library.opcheck(torch.ops.fastae.gaussian_kl, (mu, logvar, "none"))


def test_module_and_compile():
    mu = torch.randn(16, 2, requires_grad=True)
    logvar = torch.randn(16, 2, requires_grad=True)
    kl = fastae.nn.GaussianKL()
    eager = kl(mu, logvar)
    compiled = torch.compile(kl, fullgraph=True)(mu, logvar)
    assert_close(compiled, eager, 1e-6, 1e-6)
    assert_close(eager, oracle(mu, logvar, "batch"), 1e-6, 1e-6)


@pytest.mark.parametrize(
    "args, error, message",
    [
        ((torch.zeros(4, 2), torch.zeros(4, 3)), ValueError, r"expected logvar of shape \[4, 2\] like mu, got \[4, 3\]"),
        ((torch.zeros(4, 2), torch.zeros(4, 2), "avg"), ValueError, r"unknown reduction 'avg'"),
        ((torch.zeros(4, 2, dtype=torch.int32), torch.zeros(4, 2)), TypeError, r"expected mu of dtype float32"),
    ],
)
def test_bad_input_is_named(args, error, message):
    with pytest.raises(error, match=message):
        gaussian_kl(*args)
