"""fastae.ops.gdn on every backend against the plain-PyTorch formula, and the GDN module over it."""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.models.codec import GDN
from fastae.ops import gdn
from tests._util import assert_close, backend_params, device_for

DTYPES = [
    pytest.param(torch.float32, 1e-5, 1e-4, id="fp32"),
    pytest.param(torch.bfloat16, 2e-2, 2e-2, id="bf16"),
    pytest.param(torch.float16, 5e-3, 5e-3, id="fp16"),
]
# (N, C, H, W): one channel, one pixel, sizes that are no multiple of any block or tile, and more
# pixels than one CPU tile (256) and one chunk of tiles.
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 17, 13, 11), (3, 40, 9, 31), (1, 6, 70, 70)]
LAYOUTS = ["nchw", "channels_last"]


def oracle(x, beta, gamma, inverse):
    """Today's eager GDN in fp32: a 1x1 convolution of the squares, then sqrt or rsqrt."""
    norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
    return x * torch.sqrt(norm) if inverse else x * torch.rsqrt(norm)


def make_inputs(shape, dtype, device, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 2).to(device, dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    beta = (torch.rand(c, generator=g) + 0.2).to(device)
    gamma = (torch.rand(c, c, generator=g) * 0.3 / c**0.5).to(device)
    return x, beta, gamma


def run(backend, x, beta, gamma, inverse, grad_out):
    """Output and gradients of x, beta, gamma on ``backend``, and the same from the fp32 oracle."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, beta, gamma)]
    with fastae.ops.backend(backend):
        out = gdn(*leaves, inverse)
    out.backward(grad_out)
    ref_leaves = [t.detach().float().requires_grad_() for t in (x, beta, gamma)]
    ref = oracle(*ref_leaves, inverse)
    ref.backward(grad_out.float())
    return out, ref, [(t.grad, r.grad) for t, r in zip(leaves, ref_leaves)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_matches_oracle(backend, dtype, atol, rtol, shape, layout, inverse):
    device = device_for(backend)
    if backend == "triton" and device.type == "cpu" and shape[2] * shape[3] > 1000 and dtype != torch.float32:
        pytest.skip("the Triton interpreter is slow; the large shape runs in fp32 only")
    x, beta, gamma = make_inputs(shape, dtype, device, layout)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out, ref, grads = run(backend, x, beta, gamma, inverse, grad_out)
    assert out.dtype == dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                             torch.contiguous_format)
    assert_close(out, ref.detach(), atol, rtol)
    (dx, ref_dx), (dbeta, ref_dbeta), (dgamma, ref_dgamma) = grads
    assert dx.dtype == dtype and dbeta.dtype == dgamma.dtype == torch.float32
    assert_close(dx, ref_dx, atol, rtol)
    # the parameter gradients are sums over every pixel: their error grows with the count
    scale = (shape[0] * shape[2] * shape[3]) ** 0.5
    assert_close(dbeta, ref_dbeta, atol * scale, rtol)
    assert_close(dgamma, ref_dgamma, atol * scale, rtol)


@pytest.mark.parametrize("backend", backend_params())
def test_non_contiguous_input(backend):
    device = device_for(backend)
    x, beta, gamma = make_inputs((2, 5, 6, 8), torch.float32, device, "nchw")
    x = x.transpose(2, 3)  # neither NCHW nor channels_last
    with fastae.ops.backend(backend):
        out = gdn(x, beta, gamma)
    assert_close(out, oracle(x, beta, gamma, False), 1e-5, 1e-5)


@pytest.mark.parametrize("backend", backend_params())
def test_gradient_only_where_required(backend):
    device = device_for(backend)
    x, beta, gamma = make_inputs((1, 4, 3, 5), torch.float32, device, "nchw")
    for needs in ([True, False, False], [False, True, False], [False, False, True]):
        leaves = [t.clone().requires_grad_(n) for t, n in zip((x, beta, gamma), needs)]
        with fastae.ops.backend(backend):
            gdn(*leaves, True).sum().backward()
        ref = [t.clone().requires_grad_(n) for t, n in zip((x, beta, gamma), needs)]
        oracle(*ref, True).sum().backward()
        for t, r, n in zip(leaves, ref, needs):
            assert (t.grad is not None) == n
            if n:
                assert_close(t.grad, r.grad, 1e-4, 1e-4)


def test_float64_runs_the_oracle():
    x, beta, gamma = (t.double() for t in make_inputs((2, 3, 4, 5), torch.float32, "cpu", "nchw"))
    for backend in ("cpu", "torch"):
        with fastae.ops.backend(backend):
            out = gdn(x, beta, gamma)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, oracle(x, beta, gamma, False), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cpu_results_do_not_depend_on_the_thread_count(layout):
    """Fixed tiles and chunks: bit-identical output and gradients at 1 and 2 threads."""
    if not fastae.ops.available_backends()["cpu"][0]:
        pytest.skip("no C++ backend")
    x, beta, gamma = make_inputs((2, 24, 40, 50), torch.float32, "cpu", layout)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            leaves = [t.clone().requires_grad_() for t in (x, beta, gamma)]
            with fastae.ops.backend("cpu"):
                out = gdn(*leaves, True)
            out.backward(torch.ones_like(out))
            results.append([out] + [t.grad for t in leaves])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("inverse", [False, True])
def test_opcheck(backend, inverse):
    device = device_for(backend)
    x, beta, gamma = make_inputs((2, 5, 3, 4), torch.float32, device, "channels_last")
    for t in (x, beta, gamma):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.fastae.gdn_fwd, (x, beta, gamma, inverse, backend, True))
    r = torch.rand_like(x) + 0.5
    grad = torch.randn_like(x)
    torch.library.opcheck(torch.ops.fastae.gdn_bwd, (grad, x.detach(), gamma.detach(), r, inverse, backend, True, True))
    with fastae.ops.backend(backend):
        torch.library.opcheck(torch.ops.fastae.gdn, (x, beta, gamma, inverse))


@pytest.mark.parametrize("backend", backend_params(["cpu", "torch"]))
def test_compiled_fullgraph_equals_eager(backend):
    torch.manual_seed(0)
    layer = GDN(6, inverse=True)
    with torch.no_grad():
        layer.gamma.add_(torch.rand(6, 6) * 0.2)
    x = torch.randn(2, 6, 5, 7)

    def step(fn):
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        out = fn(xg)
        (out * out).sum().backward()
        return [out, xg.grad, layer.beta.grad, layer.gamma.grad]

    with fastae.ops.backend(backend):
        eager = step(layer)
        compiled = step(torch.compile(layer, fullgraph=True))
    for got, want in zip(compiled, eager):
        assert_close(got, want, 1e-5, 1e-5)


def test_autocast_runs_in_the_autocast_dtype():
    x, beta, gamma = make_inputs((1, 4, 3, 3), torch.float32, "cpu", "nchw")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gdn(x, beta, gamma)
    assert out.dtype == torch.bfloat16
    assert_close(out, oracle(x.bfloat16().float(), beta, gamma, False), 2e-2, 2e-2)


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_module_keeps_its_values_and_state_dict(inverse):
    """GDN.forward on the fused op: the same parameters and state_dict keys, and the values of the
    eager formula it replaces to fp32 rounding, on a module whose parameters have moved."""
    torch.manual_seed(0)
    layer = GDN(8, inverse=inverse)
    with torch.no_grad():
        layer.beta.mul_(torch.rand(8) + 0.5)
        layer.gamma.add_(torch.rand(8, 8) * 0.3)
    assert list(layer.state_dict()) == ["beta", "gamma"]
    x = torch.randn(2, 8, 9, 10)
    beta = layer.beta ** 2 - layer.pedestal
    gamma = layer.gamma ** 2 - layer.pedestal
    with torch.no_grad():
        assert_close(layer(x), oracle(x, beta, gamma, inverse), 1e-6, 1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("inverse", [False, True])
def test_torch_backend_is_the_previous_gdn_bit_for_bit(layout, inverse):
    """The torch backend runs the eager formula GDN.forward had before the fused op, operation for
    operation: decoding with it gives a previous file exactly its previous pixels."""
    torch.manual_seed(1)
    layer = GDN(12, inverse=inverse)
    with torch.no_grad():
        layer.gamma.add_(torch.rand(12, 12) * 0.2)
        x = torch.randn(1, 12, 17, 23)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        beta = layer.beta ** 2 - layer.pedestal
        gamma = layer.gamma ** 2 - layer.pedestal
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        previous = (norm.sqrt_() if inverse else norm.rsqrt_()).mul_(x)
        with fastae.ops.backend("torch"):
            assert torch.equal(layer(x), previous)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"x": torch.zeros(2, 3, 4)}, ValueError, r"expected x of shape \[N, C, H, W\], got \[2, 3, 4\]"),
        ({"beta": torch.ones(4)}, ValueError, r"expected beta of shape \[3\] \(x has 3 channels\), got \[4\]"),
        ({"gamma": torch.ones(3, 4)}, ValueError,
         r"expected gamma of shape \[3, 3\] \(x has 3 channels\), got \[3, 4\]"),
        ({"x": torch.zeros(1, 3, 2, 2, dtype=torch.int32)}, TypeError, r"expected x of dtype float32, bfloat16, "),
        ({"gamma": torch.ones(3, 3, dtype=torch.int64)}, TypeError, r"expected gamma of a floating dtype"),
        ({"beta": [1.0, 1.0, 1.0]}, TypeError, r"expected beta to be a Tensor, got list"),
    ],
)
def test_bad_input_is_named(kwargs, error, message):
    args = {"x": torch.zeros(1, 3, 2, 2), "beta": torch.ones(3), "gamma": torch.ones(3, 3)} | kwargs
    with pytest.raises(error, match=message):
        gdn(args["x"], args["beta"], args["gamma"])


def test_auto_keeps_eager_where_the_kernel_is_slower():
    """On the CPU, ``auto`` takes the kernel except for reduced precision with gradients (whose
    backward GEMMs run in fp32), and the oracle for float64."""
    if not fastae.ops.available_backends()["cpu"][0]:
        pytest.skip("no C++ backend")
    from fastae.ops.gdn import _resolve

    x = torch.zeros(1, 2, 2, 2)
    assert _resolve(x, grad=True) == "cpu" and _resolve(x.bfloat16(), grad=False) == "cpu"
    assert _resolve(x.bfloat16(), grad=True) == "torch" and _resolve(x.double(), grad=False) == "torch"
    with fastae.ops.backend("cpu"):
        assert _resolve(x.bfloat16(), grad=True) == "cpu"
