"""fastae.ops.mono_conv (and MonoConv2d / MonoConvTranspose2d) against F.conv2d / F.conv_transpose2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastae
from fastae.nn import MonoConv2d, MonoConvTranspose2d
from fastae.ops import mono_conv
from tests._util import assert_close, backend_params

BACKENDS = backend_params(("cpu", "torch"))
DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    pytest.param(torch.float16, 5e-3, 5e-3, id="fp16"),
]
# (batch, channels, height, width): odd and even sizes (output_padding 0 and 1), the channel counts
# the C++ kernels unroll (16, 32, 64) and others (5, 70), an empty batch.
SHAPES = [(2, 32, 28, 28), (3, 5, 7, 10), (1, 16, 1, 2), (2, 64, 9, 6), (2, 70, 5, 5), (0, 32, 4, 4)]


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _inputs(transposed, batch, channels, height, width, dtype, bias=True):
    g = torch.Generator().manual_seed(channels * 100 + height)
    h, w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    x = torch.randn(batch, channels, h, w, generator=g) if transposed else torch.rand(batch, 1, height, width,
                                                                                         generator=g)
    weight = torch.randn(channels, 1, 3, 3, generator=g) / 3
    b = torch.randn(1 if transposed else channels, generator=g) if bias else None
    grad = torch.randn(*((batch, 1, height, width) if transposed else (batch, channels, h, w)), generator=g)
    return [None if t is None else t.to(dtype) for t in (x, weight, b, grad)]


def _oracle(transposed, x, weight, bias, height, width):
    if transposed:
        pad = (height - 2 * x.shape[2] + 1, width - 2 * x.shape[3] + 1)
        return F.conv_transpose2d(x, weight, bias, 2, 1, pad)
    return F.conv2d(x, weight, bias, 2, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_oracle(backend, transposed, dtype, atol, rtol, shape):
    batch, channels, height, width = shape
    x, weight, bias, grad = _inputs(transposed, *shape, dtype)
    leaves = _leaves(x, weight, bias)
    with fastae.ops.backend(backend):
        out = mono_conv(*leaves, transposed=transposed, output_size=(height, width) if transposed else None)
    out.backward(grad)
    ref_leaves = _leaves(*(t.float() for t in (x, weight, bias)))
    ref = _oracle(transposed, *ref_leaves, height, width)
    ref.backward(grad.float())
    assert out.shape == ref.shape and out.dtype == dtype
    if not transposed:
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close(out, ref, atol, rtol)
    for got, want in zip(leaves, ref_leaves):
        assert got.grad.dtype == dtype and got.grad.shape == want.shape
        assert_close(got.grad, want.grad, atol * max(1, batch * height * width / 100), rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_without_bias_and_partial_gradients(backend, transposed):
    x, weight, _, grad = _inputs(transposed, 2, 8, 9, 12, torch.float32, bias=False)
    w = weight.clone().requires_grad_()  # x needs no gradient: only the weight's is computed
    with fastae.ops.backend(backend):
        out = mono_conv(x, w, None, transposed, (9, 12) if transposed else None)
    out.backward(grad)
    w_ref = weight.clone().requires_grad_()
    _oracle(transposed, x, w_ref, None, 9, 12).backward(grad)
    assert_close(w.grad, w_ref.grad, 1e-5, 1e-5)


def test_channels_last_and_strided_inputs():
    """The C-channel side may come in any layout: NCHW, channels-last or a strided view."""
    x, weight, bias, _ = _inputs(True, 2, 32, 14, 14, torch.float32)
    ref = _oracle(True, x, weight, bias, 14, 14)
    wide = torch.randn(2, 64, 7, 7)
    wide[:, ::2] = x
    for variant in (x.contiguous(), x.contiguous(memory_format=torch.channels_last), wide[:, ::2]):
        with fastae.ops.backend("cpu" if "cpu" in fastae.ops.available_backends() else "torch"):
            assert_close(mono_conv(variant, weight, bias, True, (14, 14)), ref, 1e-5, 1e-5)


def test_double_backward_matches_oracle():
    """create_graph=True: a gradient penalty differentiates through the backward."""
    x, weight, bias, grad = _inputs(False, 2, 8, 10, 10, torch.float32)
    results = []
    for fn in (lambda x, w, b: mono_conv(x, w, b), lambda x, w, b: F.conv2d(x, w, b, 2, 1)):
        x1, w1, b1 = _leaves(x, weight, bias)
        (gx,) = torch.autograd.grad((fn(x1, w1, b1) * grad).sum(), x1, create_graph=True)
        (gx ** 2).sum().backward()
        results.append(w1.grad)
    assert_close(results[0], results[1], 1e-5, 1e-5)


def test_autocast_runs_in_its_dtype():
    x, weight, bias, _ = _inputs(False, 2, 16, 8, 8, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mono_conv(x, weight, bias)
    assert out.dtype == torch.bfloat16
    assert_close(out, F.conv2d(x, weight, bias, 2, 1), 2e-2, 2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    for transposed in (False, True):
        x, weight, bias, grad = _inputs(transposed, 2, 8, 7, 6, torch.float32)
        size = (7, 6) if transposed else (0, 0)
        torch.library.opcheck(torch.ops.fastae.mono_conv_fwd,
                              (x.requires_grad_(), weight.requires_grad_(), bias, transposed, *size, backend))
        torch.library.opcheck(torch.ops.fastae.mono_conv_bwd,
                              (grad, x.detach(), weight.detach(), transposed, backend, True, True, True))


def test_compiled_matches_eager():
    x, weight, bias, _ = _inputs(True, 2, 8, 10, 9, torch.float32)
    fn = torch.compile(lambda x, w, b: mono_conv(x, w, b, True, (10, 9)).sigmoid(), fullgraph=True)
    assert_close(fn(x, weight, bias), mono_conv(x, weight, bias, True, (10, 9)).sigmoid(), 1e-6, 1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weight": torch.zeros(8, 2, 3, 3)}, ValueError, r"expected weight of shape \[C, 1, 3, 3\], got \[8, 2, 3, 3\]"),
    ({"x": torch.zeros(2, 3, 8, 8)}, ValueError, r"expected x of shape \[B, 1, H, W\], got \[2, 3, 8, 8\]"),
    ({"bias": torch.zeros(3)}, ValueError, r"expected bias of shape \[8\], got \[3\]"),
    ({"output_size": (8, 8)}, ValueError, r"output_size is for transposed=True only"),
    ({"x": torch.zeros(2, 1, 8, 8, dtype=torch.float64)}, TypeError, r"expected x of dtype float32, float16 or bfloat16"),
    ({"weight": torch.zeros(8, 1, 3, 3, dtype=torch.bfloat16)}, TypeError, r"expected weight of dtype torch.float32"),
    ({"x": [1.0]}, TypeError, r"expected x to be a Tensor, got list"),
])
def test_errors(kwargs, error, match):
    args = {"x": torch.zeros(2, 1, 8, 8), "weight": torch.zeros(8, 1, 3, 3), "bias": None, **kwargs}
    with pytest.raises(error, match=match):
        mono_conv(**args)


@pytest.mark.parametrize("x_shape, size, match", [
    ((2, 8, 4, 4), (9, 8), r"output_size \[9, 8\] does not halve to x's \[4, 4\] \(expected 7 or 8 by 7 or 8\)"),
    ((2, 3, 4, 4), (8, 8), r"expected x of shape \[B, 8, h, w\] \(weight has C=8\), got \[2, 3, 4, 4\]"),
    ((2, 8, 4, 4), None, r"transposed needs output_size \(H, W\), got None"),
])
def test_transposed_errors(x_shape, size, match):
    with pytest.raises(ValueError, match=match):
        mono_conv(torch.zeros(x_shape), torch.zeros(8, 1, 3, 3), None, True, size)


@pytest.mark.parametrize("padding", [0, 1, (0, 1)])
def test_modules_are_the_torch_modules_with_another_forward(padding):
    torch.manual_seed(0)
    conv, ref_conv = MonoConv2d(16), nn.Conv2d(1, 16, 3, stride=2, padding=1)
    deconv = MonoConvTranspose2d(16, output_padding=padding)
    ref_deconv = nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=padding)
    for mine, ref in ((conv, ref_conv), (deconv, ref_deconv)):
        assert mine.state_dict().keys() == ref.state_dict().keys()
        mine.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 11, 12)
    h = conv(x)
    assert_close(h, ref_conv(x), 1e-5, 1e-5)
    out = deconv(h)
    assert out.shape == ref_deconv(h).shape
    assert_close(out, ref_deconv(h), 1e-5, 1e-5)
    with pytest.raises(ValueError, match="output_padding 0 or 1"):
        MonoConvTranspose2d(16, output_padding=2)


@pytest.mark.skipif("cpu" not in fastae.ops.available_backends(), reason="needs fastae._C")
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
def test_gradients_do_not_depend_on_the_thread_count(transposed):
    x, weight, bias, grad = _inputs(transposed, 37, 32, 12, 12, torch.float32)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            leaves = _leaves(x, weight, bias)
            with fastae.ops.backend("cpu"):
                mono_conv(*leaves, transposed=transposed, output_size=(12, 12) if transposed else None).backward(grad)
            grads.append([t.grad for t in leaves])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*grads):
        assert torch.equal(a, b)
