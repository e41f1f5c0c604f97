"""fastae.ops.fused_mlp on every backend against the plain-PyTorch oracle: the same layers as
act_i(F.linear(h, w_i, b_i)) one after another, in fp32 from the same values."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import ACTIVATIONS, fused_mlp
from tests._util import assert_close, backend_params, device_for
from tests.test_linear_act import DTYPES, oracle as layer_oracle

# (batch, sizes, activations): batch 0 and 1, widths of 1, 17 and 784, every activation somewhere,
# a grad-from-output layer next to a pre-activation one.
CASES = [
    (0, [17, 5, 3], ["relu", "gelu"]),
    (1, [1, 1], ["sigmoid"]),
    (3, [784, 33, 17, 784], ["relu", "silu", "sigmoid"]),
    (127, [17, 9, 4, 9, 17], ["leaky_relu", "gelu_tanh", "tanh", "none"]),
    (5, [6, 8, 8, 8, 3], ["gelu", "gelu", "relu", "none"]),
]


def make_params(sizes, dtype, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights, biases = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        bound = a**-0.5
        weights.append(((torch.rand(b, a, generator=g) * 2 - 1) * bound).to(device, dtype))
        biases.append(((torch.rand(b, generator=g) * 2 - 1) * bound).to(device, dtype) if bias else None)
    return weights, biases


def oracle(x, weights, biases, acts):
    for w, b, a in zip(weights, biases, acts):
        x = layer_oracle(a, x, w, b)
    return x


def run(backend, x, weights, biases, acts, grad_out):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, *weights, *biases)]
    n = len(weights)
    with fastae.ops.backend(backend):
        out = fused_mlp(leaves[0], leaves[1:1 + n], leaves[1 + n:], acts)
    out.backward(grad_out)
    ref_leaves = [t.detach().float().requires_grad_() if t is not None else None for t in (x, *weights, *biases)]
    ref = oracle(ref_leaves[0], ref_leaves[1:1 + n], ref_leaves[1 + n:], acts)
    ref.backward(grad_out.float())
    grads = [(t.grad, r.grad) for t, r in zip(leaves, ref_leaves) if t is not None]
    return out, ref, grads


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("batch, sizes, acts", CASES)
def test_matches_oracle(backend, dtype, atol, rtol, batch, sizes, acts):
    device = device_for(backend)
    if backend == "triton" and device.type == "cpu" and batch * max(sizes) > 2000 and dtype != torch.float32:
        pytest.skip("the Triton interpreter is slow; large shapes run in fp32 only")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, sizes[0], generator=g).to(device, dtype)
    weights, biases = make_params(sizes, dtype, device)
    grad_out = torch.randn(batch, sizes[-1], generator=g).to(device, dtype)
    out, ref, grads = run(backend, x, weights, biases, acts, grad_out)
    assert out.shape == (batch, sizes[-1]) and out.dtype == dtype and out.device.type == device.type
    assert_close(out, ref, atol, rtol)
    for got, want in grads:
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got, want, atol, rtol)


@pytest.mark.parametrize("backend", backend_params())
def test_leading_dims_no_bias_and_non_contiguous(backend):
    device = device_for(backend)
    x = torch.randn(2, 3, 40, device=device)[..., ::2]  # [2, 3, 20], strided
    weights, biases = make_params([20, 12, 7], torch.float32, device, bias=False)
    biases[1] = torch.randn(7, device=device)
    grad_out = torch.randn(2, 3, 7, device=device)
    out, ref, grads = run(backend, x, weights, biases, ["gelu", "relu"], grad_out)
    assert out.shape == (2, 3, 7)
    assert_close(out, ref, 1e-4, 1e-4)
    for got, want in grads:
        assert_close(got, want, 1e-4, 1e-4)


@pytest.mark.parametrize("backend", backend_params())
def test_gradient_only_where_required(backend):
    device = device_for(backend)
    x = torch.randn(9, 12, device=device)
    weights, biases = make_params([12, 6, 5], torch.float32, device)
    weights[1].requires_grad_()
    biases[0].requires_grad_()
    with fastae.ops.backend(backend):
        fused_mlp(x, weights, biases, ["tanh", "silu"]).sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in (weights[1], biases[0])]
    oracle(x, [weights[0], ref[0]], [ref[1], biases[1]], ["tanh", "silu"]).sum().backward()
    assert x.grad is None and weights[0].grad is None and biases[1].grad is None
    assert_close(weights[1].grad, ref[0].grad, 1e-4, 1e-4)
    assert_close(biases[0].grad, ref[1].grad, 1e-4, 1e-4)


@pytest.mark.parametrize("backend", backend_params())
def test_no_grad_saves_nothing(backend):
    device = device_for(backend)
    x = torch.randn(4, 10, device=device)
    weights, biases = make_params([10, 6, 3], torch.float32, device)
    acts = [ACTIVATIONS.index("gelu"), ACTIVATIONS.index("relu")]
    out, hidden, preacts = torch.ops.fastae.fused_mlp_fwd(x, weights, biases, acts, backend, False)
    assert hidden == [] and preacts == []
    assert_close(out, oracle(x, weights, biases, ["gelu", "relu"]), 1e-4, 1e-4)
    out, hidden, preacts = torch.ops.fastae.fused_mlp_fwd(x, weights, biases, acts, backend, True)
    assert [h.shape for h in hidden] == [(4, 6)]
    assert preacts[0].shape == (4, 6) and preacts[1].numel() == 0  # relu's derivative comes from its output


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("acts", [["relu", "sigmoid"], ["gelu", "none"]])
def test_opcheck(backend, acts):
    device = device_for(backend)
    x = torch.randn(6, 10, device=device, requires_grad=True)
    weights, biases = make_params([10, 7, 4], torch.float32, device)
    for t in (*weights, *biases):
        t.requires_grad_()
    ids = [ACTIVATIONS.index(a) for a in acts]
    torch.library.opcheck(torch.ops.fastae.fused_mlp_fwd, (x, weights, biases, ids, backend, True))
    out, hidden, preacts = torch.ops.fastae.fused_mlp_fwd(x.detach(), [w.detach() for w in weights],
                                                          [b.detach() for b in biases], ids, backend, True)
    torch.library.opcheck(torch.ops.fastae.fused_mlp_bwd,
                          (torch.randn(6, 4, device=device), x.detach(), [w.detach() for w in weights], hidden, out,
                           preacts, ids, backend, True, True, True))
    with fastae.ops.backend(backend):
        torch.library.opcheck(torch.ops.fastae.fused_mlp, (x, weights, biases, acts))


@pytest.mark.parametrize("backend", backend_params(["cpu", "torch", "cuda"]))
def test_compiled_fullgraph_equals_eager(backend):
    device = device_for(backend)
    x = torch.randn(16, 20, device=device)
    weights, biases = make_params([20, 12, 6, 20], torch.float32, device)
    params = [t.requires_grad_() for t in (*weights, *biases)]
    acts = ["gelu", "relu", "sigmoid"]

    def loss(x, *params):
        out = fused_mlp(x, params[:3], params[3:], acts)
        return F.mse_loss(out, x), out

    def step(fn):
        value, out = fn(x, *params)
        return out.detach(), torch.autograd.grad(value, params)

    with fastae.ops.backend(backend):
        eager_out, eager_grads = step(loss)
        out, grads = step(torch.compile(loss, fullgraph=True))
    assert_close(out, eager_out, 1e-5, 1e-5)
    for got, want in zip(grads, eager_grads):
        assert_close(got, want, 1e-5, 1e-5)


def test_double_backward_through_the_oracle():
    x = torch.randn(5, 6, requires_grad=True)
    weights, biases = make_params([6, 4, 3], torch.float32, "cpu")
    w = weights[0].requires_grad_()
    (gx,) = torch.autograd.grad(fused_mlp(x, weights, biases, ["tanh", "gelu"]).pow(2).sum(), x, create_graph=True)
    (gw,) = torch.autograd.grad(gx.pow(2).sum(), w)
    xr = x.detach().requires_grad_()
    (rx,) = torch.autograd.grad(oracle(xr, weights, biases, ["tanh", "gelu"]).pow(2).sum(), xr, create_graph=True)
    (rw,) = torch.autograd.grad(rx.pow(2).sum(), w)
    assert_close(gw, rw, 1e-4, 1e-4)


def test_autocast_runs_in_the_autocast_dtype():
    x = torch.randn(4, 8)
    weights, biases = make_params([8, 6, 3], torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_mlp(x, weights, biases, ["relu", "sigmoid"])
    assert out.dtype == torch.bfloat16
    assert_close(out, oracle(x, weights, biases, ["relu", "sigmoid"]), 2e-2, 2e-2)


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"weights": []}, ValueError, r"expected at least one weight, got none"),
        ({"acts": ["relu"]}, ValueError, r"expected one bias \(or None\) and one activation per weight \(2\), got 2 biases and 1"),
        ({"acts": ["relu", "swish"]}, ValueError, r"unknown activation 'swish'"),
        ({"x": torch.zeros(2, 5)}, ValueError, r"expected x of shape \[..., in\] with in=4, got \[2, 5\]"),
        ({"weights": [torch.zeros(3, 4), torch.zeros(2, 4)]}, ValueError,
         r"expected weights\[1\] to take the 3 outputs of layer 0 with in=3, got \[2, 4\]"),
        ({"biases": [torch.zeros(3), torch.zeros(3)]}, ValueError, r"expected biases\[1\] of shape \[2\], got \[3\]"),
        ({"biases": [torch.zeros(3, dtype=torch.float64), None]}, TypeError,
         r"expected biases\[0\] of dtype torch.float32 like x, got torch.float64"),
        ({"x": torch.zeros(2, 4, dtype=torch.int64)}, TypeError, r"expected x of dtype float32, float16 or bfloat16"),
        ({"weights": [torch.zeros(3, 4), "w"]}, TypeError, r"expected weights\[1\] to be a Tensor, got str"),
        # what the per-call fast check must hand to the detailed one: a later layer, a 0-d x
        ({"weights": [torch.zeros(3, 4), torch.zeros(2, 3, dtype=torch.float16)]}, TypeError,
         r"expected weights\[1\] of dtype torch.float32 like x, got torch.float16"),
        ({"biases": [torch.zeros(1, 3), None]}, ValueError, r"expected biases\[0\] of shape \[3\], got \[1, 3\]"),
        ({"x": torch.tensor(1.0)}, ValueError, r"expected x of shape \[..., in\] with in=4, got \[\]"),
    ],
)
def test_bad_input_is_named(change, error, message):
    args = {"x": torch.zeros(2, 4), "weights": [torch.zeros(3, 4), torch.zeros(2, 3)],
            "biases": [torch.zeros(3), None], "acts": ["relu", "none"]} | change
    with pytest.raises(error, match=message):
        fused_mlp(args["x"], args["weights"], args["biases"], args["acts"])


def test_fused_mlp_module_loads_the_per_layer_state_dict():
    """FusedMLP keeps its layers' parameters and keys: a state dict of the per-layer version loads."""
    torch.manual_seed(0)
    mlp = fastae.nn.FusedMLP([12, 8, 4, 12], activation="gelu", out_activation="sigmoid")
    assert list(mlp.state_dict()) == [f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    x = torch.rand(5, 12)
    ref = x
    for layer in mlp.layers:
        ref = fastae.ops.linear_act(ref, layer.weight, layer.bias, layer.activation)
    assert_close(mlp(x), ref, 1e-5, 1e-5)
    other = fastae.nn.FusedMLP([12, 8, 4, 12], activation="gelu", out_activation="sigmoid")
    other.load_state_dict(mlp.state_dict())
    assert_close(other(x), ref, 1e-5, 1e-5)


@pytest.mark.parametrize("name", ["mlp", "denoising"])
def test_mlp_autoencoder_one_call_loss_equals_the_layered_loss(name):
    """MLPAutoencoder.loss runs encoder and decoder as one fused_mlp call for mse; its terms and
    gradients are those of Autoencoder.loss (encode, then decoder.reconstruction)."""
    from fastae.models import build_model
    from fastae.models.base import Autoencoder

    torch.manual_seed(0)
    model = build_model(name).eval()  # eval: no random corruption, so both see the same input
    x = torch.rand(8, 1, 28, 28)
    terms = model.loss(x)
    terms["loss"].backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = Autoencoder.loss(model, x)
    ref["loss"].backward()
    assert terms.keys() == ref.keys()
    for k in terms:
        assert_close(terms[k], ref[k], 1e-6, 1e-6)
    for got, p in zip(grads, model.parameters()):
        assert_close(got, p.grad, 1e-5, 1e-5)


_GEMM_PATHS = """
import sys, torch
import fastae
from tests.test_fused_mlp import make_params, run
from tests._util import assert_close
from torch.profiler import profile, ProfilerActivity
torch.manual_seed(0)
# 520 rows: the 512->64 and 128->128 GEMMs are over the 8 M multiply-adds below which MKL runs
# them anyway (512->64's weight gradient included, K >= 4N), 64->8 and 8->128 under it
weights, biases = make_params([512, 64, 8, 128, 128], torch.float32, "cpu")
x, grad = torch.rand(520, 512), torch.randn(520, 128)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    out, ref, grads = run("cpu", x, weights, biases, ["relu", "gelu", "relu", "sigmoid"], grad)
assert_close(out, ref, atol=1e-4, rtol=1e-4)
for got, want in grads:
    assert_close(got, want, atol=1e-4, rtol=1e-4)
onednn = sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")
# bf16: every activation on a layer of 520x128x128 (over the 8 M), trained (gelu, gelu_tanh and silu
# keep their pre-activation, so oneDNN adds only the bias) and forward alone (every activation in
# oneDNN's epilogue)
acts = ["relu", "leaky_relu", "gelu", "gelu_tanh", "sigmoid", "tanh", "silu", "none"]
weights, biases = make_params([512] + [128] * 8, torch.bfloat16, "cpu")
x, grad = torch.rand(520, 512).bfloat16(), torch.randn(520, 128).bfloat16()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    out, ref, grads = run("cpu", x, weights, biases, acts, grad)
    with torch.no_grad():
        inference = fastae.ops.fused_mlp(x, weights, biases, acts)
assert_close(out, ref, atol=2e-2, rtol=2e-2)
assert_close(inference, ref, atol=2e-2, rtol=2e-2)
for got, want in grads:
    assert_close(got, want, atol=2e-2, rtol=2e-2)
bf16 = sum(e.count for e in prof.key_averages() if e.key == "mkldnn::_linear_pointwise")
# fp32, forward alone: oneDNN's activations against the oracle within fp32's tolerance (the
# leaky slope, gelu's erf and tanh forms)
weights32, biases32 = [w.float() for w in weights], [b.float() for b in biases]
with torch.no_grad():
    inference = fastae.ops.fused_mlp(x.float(), weights32, biases32, acts)
assert_close(inference, run("torch", x.float(), weights32, biases32, acts, grad.float())[1], atol=1e-4, rtol=1e-4)
print("ok", onednn, bf16)
"""


@pytest.mark.skipif(not fastae.build_info()["loaded"], reason="fastae._C not built")
@pytest.mark.parametrize("onednn", ["0", "1"])
def test_cpu_gemm_paths_match_the_oracle(onednn):
    """The C++ op's GEMMs through MKL (at::addmm / at::mm) and through oneDNN's inner product (the
    choice on non-Intel CPUs, forced here with FASTAE_CPU_ONEDNN=1), read once per process; in
    bf16 oneDNN also applies every activation in its epilogue where no pre-activation is kept."""
    env = {**os.environ, "FASTAE_CPU_ONEDNN": onednn}
    out = subprocess.run([sys.executable, "-c", _GEMM_PATHS], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and out.stdout.split()[0] == "ok", out.stderr[-2000:]
    # forced on: the big forward GEMMs, dX of 128->128 and 512->64's weight gradient (five calls),
    # the small ones on MKL; off: none. bf16: the forward GEMMs (8 layers, trained and forward alone)
    assert [int(v) for v in out.stdout.split()[1:]] == ([5, 16] if onednn == "1" else [0, 0])


# ----------------------------------------------------------------------------------- the Triton fused kernels

TRITON = backend_params(["triton"])


@pytest.mark.parametrize("dims, dtype, fused", [
    ((784, 128, 64, 128, 784), torch.bfloat16, True),
    ((784, 256, 256, 784), torch.float16, False),  # a 256x256 weight is 128 KB: over MAX_WEIGHT_TILE_BYTES
    ((784, 256, 784), torch.float32, True),  # one hidden layer: no hidden-to-hidden weight
    ((784, 257, 784), torch.float32, False),  # wider than MAX_HIDDEN
    ((17, 9, 4, 9, 17), torch.float32, True),
    ((1, 1), torch.float32, False),  # one layer: linear_act's kernels
    ((8, 8, 8), torch.float64, False),
])
def test_fusable_rule(dims, dtype, fused):
    pytest.importorskip("triton")
    from fastae.kernels.fused_mlp import fusable

    assert fusable(dims, dtype) is fused


def _count_fused(monkeypatch):
    from fastae.kernels import fused_mlp as kernels

    calls = []
    for name in ("fused_mlp_fwd", "fused_mlp_bwd"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _real=real, _name=name: (calls.append(_name), _real(*a))[1])
    return calls


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_triton_fused_kernels_run_the_autoencoder(backend, dtype, atol, rtol, monkeypatch):
    """784-128-64-128-784 (the benchmarks' MLP autoencoder) through one forward and one backward
    fused kernel (and the per-layer weight-gradient kernels): the oracle's values within
    linear_act's tolerances, 37 rows (not a multiple of any row block)."""
    calls = _count_fused(monkeypatch)
    device = device_for(backend)
    g = torch.Generator().manual_seed(3)
    sizes = [784, 128, 64, 128, 784]
    x = torch.randn(37, 784, generator=g).to(device, dtype)
    weights, biases = make_params(sizes, dtype, device)
    biases[2] = None
    grad_out = torch.randn(37, 784, generator=g).to(device, dtype)
    out, ref, grads = run(backend, x, weights, biases, ["relu", "gelu", "tanh", "sigmoid"], grad_out)
    assert calls == ["fused_mlp_fwd", "fused_mlp_bwd"]
    assert_close(out, ref, atol, rtol)
    for got, want in grads:
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got, want, atol, rtol)


@pytest.mark.parametrize("backend", TRITON)
def test_triton_fused_kernels_saved_tensors_and_no_grad(backend):
    """What the fused forward saves is what the layered kernels save (hidden outputs; the
    pre-activation only of gelu / gelu_tanh / silu layers), and a forward without saving saves
    nothing and gives the same output."""
    device = device_for(backend)
    x = torch.randn(21, 30, device=device)
    weights, biases = make_params([30, 20, 11, 24, 5], torch.float32, device)
    acts = [ACTIVATIONS.index(a) for a in ("silu", "leaky_relu", "gelu_tanh", "none")]
    from fastae.kernels import fused_mlp as kernels
    from fastae.ops import mlp

    out, hidden, preacts = kernels.fused_mlp_fwd(x, weights, biases, acts, True)
    l_out, l_hidden, l_preacts = mlp._layered_fwd(mlp._triton_layer_fwd)(x, weights, biases, acts, True)
    assert_close(out, l_out, 1e-5, 1e-5)
    assert [h.shape for h in hidden] == [h.shape for h in l_hidden] == [(21, 20), (21, 11), (21, 24)]
    assert [p.shape for p in preacts] == [p.shape for p in l_preacts] == [(21, 20), (0,), (21, 24), (0,)]
    for a, b in zip(hidden + preacts, l_hidden + l_preacts):
        assert_close(a, b, 1e-5, 1e-5)
    bare, h2, p2 = kernels.fused_mlp_fwd(x, weights, biases, acts, False)
    assert h2 == [] and p2 == [] and torch.equal(bare, out)
    grad_out = torch.randn(21, 5, device=device)
    fused = kernels.fused_mlp_bwd(grad_out, x, weights, hidden, out, preacts, acts, False, True, True)
    layered = mlp._layered_bwd(mlp._triton_layer_bwd)(grad_out, x, weights, l_hidden, l_out, l_preacts, acts,
                                                       False, True, True)
    assert fused[0].numel() == 0 and layered[0].numel() == 0  # dx not asked for
    for a, b in zip(fused[1] + fused[2], layered[1] + layered[2]):
        assert_close(a, b, 1e-5, 1e-5)


@pytest.mark.parametrize("backend", TRITON)
def test_triton_wide_hidden_layers_fall_back_to_the_layered_kernels(backend, monkeypatch):
    calls = _count_fused(monkeypatch)
    device = device_for(backend)
    x = torch.randn(3, 10, device=device)
    weights, biases = make_params([10, 260, 10], torch.float32, device)
    out, ref, grads = run(backend, x, weights, biases, ["relu", "none"], torch.randn(3, 10, device=device))
    assert calls == []
    assert_close(out, ref, 1e-4, 1e-4)
    for got, want in grads:
        assert_close(got, want, 1e-4, 1e-4)


# Compiles kernels/fused_mlp.py's kernels for an sm_90 GPU (H100/H200) without one; in its own
# process, since the tests' TRITON_INTERPRET=1 makes every @triton.jit function an interpreted one.
_SM90_COMPILE = r"""
import sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastae.kernels import fused_mlp as kernels

kernel, dtype = sys.argv[1], getattr(torch, sys.argv[2])
dims, acts = (784, 128, 64, 128, 784), (3, 7, 4, 5)
ty = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}[dtype]
n = len(dims) - 1
pads = tuple(kernels._pad(d) for d in dims)
if kernel == "fwd":
    fn = kernels._fwd_kernel
    sig = {"x_ptr": ty, "w_ptrs": (ty,) * n, "b_ptrs": (ty,) * n, "out_ptr": ty, "hid_ptrs": (ty,) * (n - 1),
           "pre_ptrs": (ty,) * n, "M": "i32", "stride_xm": "i32", "stride_xk": "i32"}
    const = {"DIMS": dims, "PADS": pads, "ACTS": acts, "HAS_BIAS": (True,) * n, "SAVE_HID": True,
             "SAVE_PRE": tuple(a not in kernels._FROM_OUTPUT for a in acts), "L": n, "PRECISION": "ieee"}
else:
    fn = kernels._bwd_kernel
    sig = {"go_ptr": ty, "s_ptrs": (ty,) * n, "w_ptrs": (ty,) * n, "g_ptrs": (ty,) * (n - 1), "dx_ptr": ty,
           "M": "i32", "stride_gm": "i32", "stride_gn": "i32"}
    const = {"DIMS": dims, "PADS": pads, "ACTS": acts, "L": n, "NEED_X": True, "PRECISION": "ieee"}
const.update(BLOCK_M=64, BLOCK_K=64, BLOCK_N=64)
sig.update({name: "constexpr" for name in const})
src = ASTSource(fn=fn, signature=sig, constexprs={(list(sig).index(k),): v for k, v in const.items()})
compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3})
print(int(".entry" in compiled.asm["ptx"]), len(compiled.asm["cubin"]), compiled.metadata.shared)
"""


@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
def test_triton_fused_kernels_compile_for_a_gpu(kernel):
    """The interpreter runs the kernels' Python, not Triton's compiler, which is stricter (a
    constexpr bound twice in an unrolled loop, a loop-carried value changing shape): compile them
    for sm_90 (PTX and cubin, no GPU needed) for the autoencoder in bf16, every activation on a
    hidden layer, and check their shared memory fits an H100/H200's 227 KB per block."""
    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia.compiler", reason="this Triton has no CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _SM90_COMPILE, kernel, "bfloat16"], capture_output=True, text=True,
                         env=env, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    entry, cubin, shared = (int(v) for v in out.stdout.split()[-3:])
    assert entry == 1 and cubin > 0
    assert shared <= 227 * 1024
