"""LatentCodec: the codes of any fastae autoencoder in a .fae file."""

import pytest
import torch

from fastae.codec.format import CodecError, read_header


def test_latent_codec_round_trip_on_mnist_ae():
    from fastae.codec import LatentCodec
    from fastae.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 28, 28), hidden=[32], latent=8)
    x = torch.rand(50, 1, 28, 28)
    lc = LatentCodec(model, step=0.01)
    data = lc.compress(x)
    header = read_header(data)
    assert header.model_id == "latent:mlp" and header.latent_shapes == ((50, 8),)
    model.eval()
    with torch.no_grad():
        z = model.encode(x)
    z_hat = lc.decompress(data, decode=False)
    assert z_hat.shape == (50, 8)
    assert (z_hat - z).abs().max() <= 0.005 + 1e-6  # half a step
    assert torch.equal(z_hat, torch.round(z / 0.01) * 0.01)
    with torch.no_grad():
        assert torch.allclose(lc.decompress(data), model.decode(z_hat))
    # fewer bits than the float32 codes, and deterministic
    assert len(data) < z.numel() * 4 and lc.compress(x) == data
    other = LatentCodec(build_model("mlp", input_shape=(1, 28, 28), hidden=[32], latent=8), step=0.01)
    with pytest.raises(CodecError, match="model hash mismatch"):
        other.decompress(data)
    with pytest.raises(CodecError):
        lc.decompress(data[:-3])
    with pytest.raises(ValueError, match="larger step"):
        LatentCodec(model, step=1e-6).compress(x)
    with pytest.raises(ValueError, match="step"):
        LatentCodec(model, step=0)


def test_latent_codec_codes_that_round_to_one_value_and_bad_codes():
    from fastae.codec import LatentCodec
    from fastae.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(1, 28, 28), hidden=[32], latent=8)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        z = model.eval().encode(x)
    lc = LatentCodec(model, step=100.0)  # every code rounds to 0
    assert torch.round(z / 100.0).unique().numel() == 1
    assert torch.equal(lc.decompress(lc.compress(x), decode=False), torch.zeros_like(z))
    one = LatentCodec(build_model("mlp", input_shape=(1, 28, 28), hidden=[32], latent=1), step=0.01)
    assert one.decompress(one.compress(x[:1]), decode=False).shape == (1, 1)
    with pytest.raises(ValueError, match="non-empty batch"):
        lc.compress(x[:0])
    with pytest.raises(ValueError, match="not all finite"):
        lc.compress(torch.full_like(x, float("nan")))
