"""fastae.ops.linear_bce_loss against BCE-with-logits of F.linear, and its memory bound."""

import pytest
import torch
import torch.nn.functional as F

import fastae
from fastae.ops import linear_bce_loss
from fastae.ops import loss as ops_loss
from tests._util import assert_close, backend_params, device_for


def oracle(h, w, b, t, reduction):
    loss = F.binary_cross_entropy_with_logits(F.linear(h, w, b), t, reduction="sum" if reduction == "batch" else reduction)
    return loss / h.shape[0] if reduction == "batch" else loss


def inputs(batch, in_f, out_f, dtype, device, bias=True):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(batch, in_f, generator=g)
    w = torch.randn(out_f, in_f, generator=g) * in_f**-0.5
    b = torch.randn(out_f, generator=g) * 0.1 if bias else None
    t = (torch.rand(batch, out_f, generator=g) > 0.5).float()
    return [None if v is None else v.to(device, dtype) for v in (h, w, b, t)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("reduction", ["mean", "sum", "batch"])
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 3e-2, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_matches_oracle_across_chunks(monkeypatch, backend, reduction, dtype, atol, rtol, bias):
    monkeypatch.setattr(ops_loss, "LINEAR_BCE_CHUNK_ELEMENTS", 7 * 19)  # 7 rows a chunk: 5 chunks, the last short
    device = device_for(backend)
    h, w, b, t = inputs(31, 13, 19, dtype, device, bias)
    leaves = [v.clone().requires_grad_() if v is not None else None for v in (h, w, b)]
    with fastae.ops.backend(backend):
        loss = linear_bce_loss(*leaves, t, reduction)
    refs = [v.float().requires_grad_() if v is not None else None for v in (h, w, b)]
    ref = oracle(*refs, t.float(), reduction)
    assert loss.dtype == dtype
    assert_close(loss, ref, atol, rtol)
    (loss * 2).backward()
    (ref * 2).backward()
    for leaf, r in zip(leaves, refs):
        if leaf is not None:
            assert leaf.grad.dtype == dtype
            assert_close(leaf.grad, r.grad, atol, rtol)


def test_never_holds_all_logits(monkeypatch):
    """Every logits block the op makes has at most LINEAR_BCE_CHUNK_ELEMENTS elements."""
    monkeypatch.setattr(ops_loss, "LINEAR_BCE_CHUNK_ELEMENTS", 4096)
    made, linear = [], F.linear

    def recording_linear(*args):
        out = linear(*args)
        made.append(out.numel())
        return out

    monkeypatch.setattr(ops_loss.F, "linear", recording_linear)
    h, w, b, t = inputs(300, 16, 100, torch.float32, "cpu")
    h.requires_grad_()
    loss = linear_bce_loss(h, w, b, t)
    monkeypatch.undo()
    assert max(made) <= 4096 and sum(made) == 300 * 100
    assert_close(loss, oracle(h, w, b, t, "mean"), 1e-5, 1e-5)


@pytest.mark.parametrize("backend", backend_params())
def test_opcheck(backend):
    h, w, b, t = inputs(9, 5, 4, torch.float32, device_for(backend))
    for v in (h, w, b):
        v.requires_grad_()
    torch.library.opcheck(torch.ops.fastae.linear_bce_loss_fwd, (h, w, b, t, 1, backend, True))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"reduction": "none"}, ValueError, r"unknown reduction 'none'; expected one of \('mean', 'sum', 'batch'\)"),
        ({"t": torch.zeros(4, 5)}, ValueError, r"expected target of shape \[4, 3\], got \[4, 5\]"),
        ({"w": torch.zeros(3, 6)}, ValueError, r"expected h of shape \[batch, in\] and weight of shape \[out, in\]"),
        ({"b": torch.zeros(2)}, ValueError, r"expected bias of shape \[3\], got \[2\]"),
        ({"w": torch.zeros(3, 2, dtype=torch.float64)}, TypeError, r"expected weight of dtype torch.float32"),
    ],
)
def test_bad_input_is_named(kwargs, error, message):
    args = {"h": torch.zeros(4, 2), "w": torch.zeros(3, 2), "b": torch.zeros(3), "t": torch.zeros(4, 3),
            "reduction": "mean"} | kwargs
    with pytest.raises(error, match=message):
        linear_bce_loss(args["h"], args["w"], args["b"], args["t"], args["reduction"])


def test_autocast_runs_the_product_in_the_autocast_dtype():
    h, w, b, t = inputs(8, 5, 4, torch.float32, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_bce_loss(h, w, b, t)
    assert loss.dtype == torch.bfloat16
    assert_close(loss, oracle(h, w, b, t, "mean"), 2e-2, 2e-2)
