"""Second derivatives through the fused ops (a gradient penalty, create_graph=True) against plain torch.

The fused ops compute their gradients in the forward pass or in a kernel; with create_graph=True
their backward recomputes them with differentiable torch ops, so the gradient of a gradient has
every term, not only the one through the incoming gradient."""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import ACTIVATIONS, gaussian_kl, gdn, linear_act, linear_bce_loss, reconstruction_loss
from tests._util import assert_close, backend_params, device_for

TORCH_ACT = {"none": lambda v: v, "relu": F.relu, "leaky_relu": F.leaky_relu, "gelu": F.gelu,
             "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "sigmoid": torch.sigmoid, "tanh": torch.tanh,
             "silu": F.silu}


def _penalized_grads(fn, *inputs):
    """Gradients of fn(*inputs) + sum over inputs of |d fn / d input|^2."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    loss = fn(*inputs)
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    (loss + sum((g * g).sum() for g in grads)).backward()
    return [t.grad for t in inputs]


def _check(backend, fused, reference, *inputs, tol=1e-4):
    with fastae.ops.backend(backend):
        got = _penalized_grads(fused, *inputs)
    want = _penalized_grads(reference, *inputs)
    for g, w in zip(got, want):
        assert_close(g, w, tol, tol)
    return got


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("kind", ["mse", "bce", "bce_logits"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_reconstruction_loss(backend, kind, reduction):
    device = device_for(backend)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 6, generator=g) * 0.8 + 0.1 if kind == "bce" else torch.randn(4, 6, generator=g)).to(device)
    t = torch.rand(4, 6, generator=g).to(device)
    ref = {"mse": F.mse_loss, "bce": F.binary_cross_entropy, "bce_logits": F.binary_cross_entropy_with_logits}[kind]
    if reduction == "none":  # a non-scalar loss: a fixed projection makes it one
        w = torch.rand(4, 6, generator=g).to(device)
        _check(backend, lambda a, b: (reconstruction_loss(a, b, kind, "none") * w).sum(),
               lambda a, b: (ref(a, b, reduction="none") * w).sum(), x, t)
    else:
        _check(backend, lambda a, b: reconstruction_loss(a, b, kind, "mean"), lambda a, b: ref(a, b), x, t)


@pytest.mark.parametrize("backend", backend_params())
def test_gaussian_kl(backend):
    device = device_for(backend)
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(5, 3, generator=g).to(device), torch.randn(5, 3, generator=g).to(device)
    _check(backend, lambda m, lv: gaussian_kl(m, lv, "batch"),
           lambda m, lv: -0.5 * (1 + lv - m * m - lv.exp()).sum() / m.shape[0], mu, logvar)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_act(backend, activation):
    device = device_for(backend)
    g = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*s, generator=g).to(device) for s in ((6, 5), (4, 5), (4,)))
    _check(backend, lambda x, w, b: linear_act(x, w, b, activation).pow(2).sum(),
           lambda x, w, b: TORCH_ACT[activation](F.linear(x, w, b)).pow(2).sum(), x, w, b)


@pytest.mark.parametrize("backend", backend_params())
def test_linear_bce_loss(backend):
    device = device_for(backend)
    g = torch.Generator().manual_seed(3)
    h, w, b = (torch.randn(*s, generator=g).to(device) for s in ((6, 5), (7, 5), (7,)))
    t = torch.rand(6, 7, generator=g).to(device)
    _check(backend, lambda h, w, b: linear_bce_loss(h, w, b, t, "mean"),
           lambda h, w, b: F.binary_cross_entropy_with_logits(F.linear(h, w, b), t), h, w, b)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("inverse", [False, True])
def test_gdn(backend, inverse):
    device = device_for(backend)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 5, generator=g).to(device)
    beta, gamma = (torch.rand(3, generator=g) + 0.5).to(device), (torch.rand(3, 3, generator=g) * 0.3).to(device)

    def reference(x, b, gm):
        norm = F.conv2d(x * x, gm[:, :, None, None], b)
        return (x * (norm.sqrt() if inverse else norm.rsqrt())).pow(2).sum()

    _check(backend, lambda x, b, gm: gdn(x, b, gm, inverse).pow(2).sum(), reference, x, beta, gamma)


def test_first_order_gradients_keep_the_fused_path():
    """Without create_graph the saved gradients are used: no graph is built back to the inputs."""
    x = torch.rand(4, 6, requires_grad=True)
    (g,) = torch.autograd.grad(reconstruction_loss(x, torch.rand(4, 6), "mse"), x)
    assert g.grad_fn is None
