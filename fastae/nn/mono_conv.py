"""MonoConv2d and MonoConvTranspose2d: ``nn.Conv2d(1, C, 3, stride=2, padding=1)`` and
``nn.ConvTranspose2d(C, 1, 3, stride=2, padding=1, output_padding)`` on fastae.ops.mono_conv, the
first and last layers of fastae's conv autoencoders on grey images. They are those torch modules
(same constructor arguments, parameters, initialisation and state_dict keys) with another
forward."""

from torch import Tensor, nn

from fastae.ops.mono_conv import mono_conv


class MonoConv2d(nn.Conv2d):
    """``nn.Conv2d(1, out_channels, 3, stride=2, padding=1)`` computed by ``fastae.ops.mono_conv``
    (output channels-last)."""

    def __init__(self, out_channels: int, bias: bool = True, device=None, dtype=None):
        super().__init__(1, out_channels, 3, stride=2, padding=1, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return mono_conv(x, self.weight, self.bias)


class MonoConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(in_channels, 1, 3, stride=2, padding=1, output_padding)`` computed by
    ``fastae.ops.mono_conv(..., transposed=True)``."""

    def __init__(self, in_channels: int, output_padding=0, bias: bool = True, device=None, dtype=None):
        super().__init__(in_channels, 1, 3, stride=2, padding=1, output_padding=output_padding, bias=bias,
                         device=device, dtype=dtype)
        if any(p not in (0, 1) for p in self.output_padding):
            raise ValueError(f"MonoConvTranspose2d: expected output_padding 0 or 1 per side, got {output_padding}")

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if output_size is not None:
            raise ValueError("MonoConvTranspose2d: output_size is fixed by output_padding; pass None")
        size = tuple(2 * s - 1 + p for s, p in zip(x.shape[-2:], self.output_padding))
        return mono_conv(x, self.weight, self.bias, transposed=True, output_size=size)
