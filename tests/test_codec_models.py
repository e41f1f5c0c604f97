"""The codec networks (fastae.models.codec): training forward, the checkerboard context, bad settings."""

import numpy as np
import pytest
import torch

import fastae
from fastae.codec.model_file import export_codec
from fastae.models.codec import CODEC_MODELS, CheckerboardCodec, FactorizedCodec, HyperpriorCodec, checkerboard


def test_hyperprior_forward_rate_and_entropy_parameters():
    torch.manual_seed(0)
    model = HyperpriorCodec(N=8, M=12, lambdas=(0.01, 0.1))
    x = torch.rand(2, 3, 64, 128)
    out = model(x, 1)
    assert out["x_hat"].shape == x.shape
    assert out["likelihoods"].shape == (2, 12, 4, 8) and out["z_likelihoods"].shape == (2, 8, 1, 2)
    bits = -(out["likelihoods"].log().sum() + out["z_likelihoods"].log().sum()) / np.log(2)
    assert torch.allclose(out["bpp"], bits / (2 * 64 * 128))
    terms = model.rd_loss(x, 2)
    terms["loss"].backward()
    assert all(p.grad is not None for name, p in model.named_parameters()
               if name.startswith(("g_a.", "g_s.", "h_a.", "h_s.", "priors.1.")))
    with pytest.raises(ValueError, match="kind"):
        fastae.models.codec.build_codec({"kind": "context", "N": 8, "M": 8})


def test_checkerboard_context_reads_only_decoded_anchors():
    """What the decoder can compute: the anchors' means and scales depend on z alone, the others'
    on z and the anchors within two latents; no latent's depends on a non-anchor."""
    torch.manual_seed(0)
    model = CheckerboardCodec(N=8, M=6, lambdas=(0.01, 0.1))
    torch.nn.init.normal_(model.ctx.params[-1].weight, std=0.3)
    z_hat = torch.randn(1, 8, 2, 2).round()
    y = torch.randn(1, 6, 8, 8) * 3
    mask = checkerboard(8, 8)
    assert mask[0, 0, 0, 0] and not mask[0, 0, 0, 1] and mask[0, 0, 1, 1] and mask.sum() == 32
    with torch.no_grad():
        base = torch.cat(model.entropy_parameters(z_hat, y), 1)
        for (i, j) in ((3, 4), (3, 3)):  # a non-anchor, then an anchor
            moved = y.clone()
            moved[0, :, i, j] += 5.0
            diff = (torch.cat(model.entropy_parameters(z_hat, moved), 1) - base).abs().amax(1)[0]
            if mask[0, 0, i, j]:
                near = torch.zeros(8, 8, dtype=torch.bool)
                near[max(i - 2, 0):i + 3, max(j - 2, 0):j + 3] = True
                assert (diff[near & ~mask[0, 0]] > 0).any()
                assert (diff[~near | mask[0, 0]] == 0).all()
            else:
                assert (diff == 0).all()


def test_checkerboard_warm_started_from_a_hyperprior_codes_as_it():
    """Its context's correction starts at zero: the same rate and image as the hyperprior it starts
    from, and the correction gets a gradient from the first step."""
    torch.manual_seed(0)
    hp = HyperpriorCodec(N=8, M=8, lambdas=(0.01, 0.1))
    cb = CheckerboardCodec(N=8, M=8, lambdas=(0.01, 0.1))
    assert set(cb.load_state_dict(hp.state_dict(), strict=False).missing_keys) == \
        {k for k in cb.state_dict() if k.startswith("ctx.")}
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        a, b = hp(x, 2, noise=False), cb(x, 2, noise=False)
    assert torch.equal(a["x_hat"], b["x_hat"]) and torch.allclose(a["bpp"], b["bpp"], rtol=1e-6)
    terms = cb.rd_loss(x, 1)
    terms["loss"].backward()
    assert cb.ctx.params[-1].weight.grad.abs().sum() > 0  # the correction learns from the first step


@pytest.mark.parametrize("make, message", [
    (lambda: FactorizedCodec(N=0, M=8), "N must be a positive integer"),
    (lambda: HyperpriorCodec(N=8, M=-1), "M must be a positive integer"),
    (lambda: FactorizedCodec(N=8.5, M=8), "N must be a positive integer"),
    (lambda: FactorizedCodec(N=8, M=8, channels=0), "channels must be a positive integer"),
    (lambda: FactorizedCodec(N=8, M=8, lambdas="0.1"), "lambdas must be a sequence"),
    (lambda: FactorizedCodec(N=8, M=8, lambdas=[0.1, float("inf")]), "positive, finite and increasing"),
    (lambda: export_codec(FactorizedCodec(N=8, M=8, lambdas=(0.1,)), "/nonexistent/x.safetensors", model_id="é"),
     "model id must be 1..64 ASCII"),
    (lambda: export_codec(FactorizedCodec(N=8, M=8, lambdas=(0.1,)), "/nonexistent/x.safetensors", model_id="x" * 65),
     "model id must be 1..64 ASCII"),
])
def test_codec_models_name_bad_settings(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("kind", sorted(CODEC_MODELS))
def test_codec_forward_names_bad_images(kind):
    model = CODEC_MODELS[kind](N=8, M=8, lambdas=(0.1,))
    with pytest.raises(ValueError, match=rf"multiples of {model.stride}"):
        model(torch.rand(1, 3, model.stride + model.stride // 2, model.stride), 1)
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        model(torch.rand(3, 64, 64), 1)
    assert model(torch.rand(1, 3, model.stride, model.stride), 1)["x_hat"].shape == (1, 3, model.stride, model.stride)


def test_fastae_models_exports_the_codec_networks():
    import fastae.models as models

    assert {models.FactorizedCodec, models.HyperpriorCodec, models.CheckerboardCodec} == set(CODEC_MODELS.values())
    assert all(issubclass(cls, models.CodecModel) for cls in CODEC_MODELS.values())
    assert {kind: cls.kind for kind, cls in CODEC_MODELS.items()} == {k: k for k in ("factorized", "hyperprior",
                                                                                     "checkerboard")}
    assert models.build_codec is fastae.models.codec.build_codec


def test_saved_configs_and_checkpoints_keep_loading():
    """What checkpoints and weights files hold stays readable: a config (the one of a run started
    before the codec's split, widths included) rebuilds the model with the same config, kind and
    state_dict names as the model that wrote it (tests/data/codec holds state dicts written then),
    and the parameters keep their order, which a checkpoint's optimizer state is mapped by."""
    from safetensors.torch import load_file

    from tests._codec import DATA

    config = {"N": 192, "M": 320, "lambdas": [0.0018 * 1.5 ** i for i in range(10)], "channels": 3,
              "widths": [96, 128, 192], "kind": "checkerboard"}
    model = fastae.models.codec.build_codec(config)
    assert type(model) is CheckerboardCodec and model.config == config and model.widths == (96, 128, 192)
    for kind in ("factorized", "hyperprior"):
        saved = load_file(str(DATA / f"tiny-{kind}.safetensors"))
        tiny = fastae.models.codec.build_codec({"kind": kind, "N": 8, "M": 8, "lambdas": [0.01, 0.1]})
        tiny.load_state_dict(saved)  # strict: the same names and shapes
        assert tiny.config == ({"N": 8, "M": 8, "lambdas": [0.01, 0.1], "channels": 3}
                               | ({} if kind == "factorized" else {"kind": kind}))
    blocks = []
    for name, _ in model.named_parameters():
        if not blocks or blocks[-1] != name.split(".")[0]:
            blocks.append(name.split(".")[0])
    assert blocks == ["log_gain", "log_inv_gain", "g_a", "g_s", "priors", "h_a", "h_s", "ctx"]
    assert {k for k in model.state_dict() if k.startswith("ctx.")} == {
        f"ctx.{k}" for k in ("context.weight", "context.bias", "params.0.weight", "params.0.bias", "params.2.weight",
                             "params.2.bias")}
