"""FusedLinear / FusedMLP: nn.Linear compatibility and torch.compile."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastae
from fastae.nn import FusedLinear, FusedMLP
from tests._util import assert_close, backend_params, device_for


def test_fused_linear_is_state_dict_compatible_with_nn_linear():
    torch.manual_seed(0)
    ref = nn.Linear(20, 7)
    fused = FusedLinear(20, 7, activation="sigmoid")
    assert fused.state_dict().keys() == ref.state_dict().keys()
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(4, 20)
    assert_close(fused(x), torch.sigmoid(ref(x)), 1e-5, 1e-5)
    ref.load_state_dict(FusedLinear(20, 7).state_dict())  # and back


def test_fused_linear_init_matches_nn_linear():
    torch.manual_seed(3)
    ref = nn.Linear(50, 30, bias=False)
    torch.manual_seed(3)
    fused = FusedLinear(50, 30, bias=False)
    assert fused.bias is None and "bias" not in fused.state_dict()
    assert torch.equal(fused.weight, ref.weight)


def test_fused_mlp_layers():
    mlp = FusedMLP([784, 128, 64], activation="gelu", out_activation="sigmoid")
    assert [(m.in_features, m.out_features, m.activation) for m in mlp.layers] == [
        (784, 128, "gelu"), (128, 64, "sigmoid")]
    assert FusedMLP([3, 2]).layers[0].activation == "none"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: FusedLinear(0, 3), r"expected in_features to be a positive int, got 0"),
        (lambda: FusedLinear(True, 3), r"expected in_features to be a positive int, got True"),
        (lambda: FusedLinear(3, 2, activation="swish"), r"unknown activation 'swish'"),
        (lambda: FusedMLP([5]), r"expected at least two sizes \(in and out\), got \[5\]"),
        (lambda: FusedMLP([5, 3], out_activation="softmax"), r"unknown activation 'softmax'"),
    ],
)
def test_bad_config_is_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_dtype_the_op_refuses_is_refused_at_construction():
    with pytest.raises(TypeError, match="dtype must be float32, float16 or bfloat16"):
        FusedLinear(3, 2, dtype=torch.float64)
    assert FusedLinear(3, 2, dtype=torch.bfloat16).weight.dtype == torch.bfloat16


def _train_grads(model, x):
    model.zero_grad()
    out = model(x)
    F.mse_loss(out, x[:, : out.shape[1]]).backward()
    return [out] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", backend_params(["cpu", "torch", "cuda"]))
def test_compiled_fullgraph_mlp_equals_eager(backend):
    device = device_for(backend)
    torch.manual_seed(0)
    model = FusedMLP([40, 24, 8, 24, 40], activation="gelu", out_activation="sigmoid").to(device)
    x = torch.rand(16, 40, device=device)
    with fastae.ops.backend(backend):
        eager = _train_grads(model, x)
        compiled = _train_grads(torch.compile(model, fullgraph=True), x)
    for got, want in zip(compiled, eager):
        assert_close(got, want, 1e-5, 1e-5)
