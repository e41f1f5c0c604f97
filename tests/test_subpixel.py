"""SubpixelConvTranspose2d against the ConvTranspose2d it re-expresses (float64: the same sums)."""

import pytest
import torch
from torch import nn

from fastae.nn import SubpixelConvTranspose2d


def _deconv(cin, cout, bias=True):
    torch.manual_seed(cin * 31 + cout)
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1, bias=bias).double()


@pytest.mark.parametrize("cin,cout,h,w,bias", [(96, 3, 7, 11, True), (5, 7, 1, 1, True), (4, 2, 6, 3, False)])
def test_equals_the_transposed_convolution(cin, cout, h, w, bias):
    layer = _deconv(cin, cout, bias)
    x = torch.randn(2, cin, h, w, dtype=torch.float64)
    want = layer(x)
    got = SubpixelConvTranspose2d(layer)(x)
    assert got.shape == want.shape == (2, cout, 2 * h, 2 * w)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_center_is_added_back_in_float32():
    layer = _deconv(8, 3)
    x = torch.randn(1, 8, 5, 6, dtype=torch.float64)
    fast = SubpixelConvTranspose2d(layer, center=0.5)
    got = fast(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, layer(x).float(), rtol=0, atol=1e-5)


def test_bfloat16_rounding_is_finer_with_the_center():
    # pixels near 1: bf16's step there is 2^-8; centred on 0.5 they are computed near 0.5, step 2^-9
    layer = nn.ConvTranspose2d(4, 3, 5, stride=2, padding=2, output_padding=1)
    with torch.no_grad():
        layer.weight.mul_(0.01)
        layer.bias.fill_(0.9)
    layer, x = layer.bfloat16(), torch.rand(1, 4, 16, 16).bfloat16()
    exact = nn.ConvTranspose2d(4, 3, 5, stride=2, padding=2, output_padding=1).double()
    exact.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    exact = exact(x.double())  # the bf16 weights and inputs, summed in float64
    plain = SubpixelConvTranspose2d(layer)(x).double()
    centred = SubpixelConvTranspose2d(layer, center=0.5)(x).double()
    assert (centred - exact).abs().max() < (plain - exact).abs().max()
    assert (centred - exact).abs().max() <= 2 ** -9


@pytest.mark.parametrize("kwargs", [dict(stride=1, padding=2), dict(stride=2, padding=1, output_padding=1),
                                    dict(stride=2, padding=2, output_padding=1, groups=2)])
def test_other_layers_are_refused_by_name(kwargs):
    layer = nn.ConvTranspose2d(4, 4, 5, **kwargs)
    with pytest.raises(ValueError, match="kernel 5, stride 2, padding 2, output_padding 1"):
        SubpixelConvTranspose2d(layer)
