"""A stride-2 transposed convolution computed as a convolution and a pixel shuffle (sub-pixel
convolution): the same sums of the same products, for inference.

``ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)`` writes output pixel
(2i + a, 2j + b) from the inputs around (i, j) only: with a = 0 from kernel taps 4, 2, 0 at input
rows i - 1, i, i + 1, with a = 1 from taps 3, 1 at rows i, i + 1 (likewise for columns). So it is a
3x3 convolution (padding 1) with 4 * cout output channels, channel 4c + 2a + b holding phase
(a, b) of channel c, followed by ``pixel_shuffle(2)``. It does 36/25 of the multiply-adds, but
where cout is small the convolution runs far faster than the transposed one (oneDNN, bf16, a
2-core Xeon with AMX, 96 -> 3 channels at 256 x 384: 15.7 ms transposed, 6.3 ms as a convolution
and shuffle), which is why the codec's bf16 synthesis runs its last layer so. The result differs
from the transposed convolution's by the order of the sums only.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SubpixelConvTranspose2d(nn.Module):
    """``layer`` (a ``ConvTranspose2d`` with kernel 5, stride 2, padding 2, output_padding 1, no
    groups or dilation) as a 3x3 convolution and a pixel shuffle; its weights are derived once,
    in float64, from the layer's at construction (a snapshot, not tied to later updates).

    ``center``: outputs expected around this value (e.g. 0.5 for pixels in [0, 1]) are computed
    as ``output - center`` in the input's precision and returned as float32 plus ``center``. In
    bfloat16 the step near 1.0 is 2^-8, one 8-bit pixel level; around 0 it is finer (measured on
    4 Kodak images, the codec's bf16 decode at quality 8: 0.024 dB below the fp32 decode without
    it, 0.016 dB with 0.5)."""

    def __init__(self, layer: nn.ConvTranspose2d, center: float = 0.0):
        super().__init__()
        if not isinstance(layer, nn.ConvTranspose2d) or layer.kernel_size != (5, 5) or layer.stride != (2, 2) \
                or layer.padding != (2, 2) or layer.output_padding != (1, 1) or layer.groups != 1 \
                or layer.dilation != (1, 1):
            raise ValueError(f"SubpixelConvTranspose2d: expected a ConvTranspose2d with kernel 5, stride 2, padding "
                             f"2, output_padding 1, groups 1 and dilation 1, got {layer!r}")
        w = layer.weight.detach().double()  # [cin, cout, 5, 5]
        cin, cout = w.shape[:2]
        taps = {0: (4, 2, 0), 1: (None, 3, 1)}  # per phase: the kernel tap read at input offset -1, 0, +1
        weight = torch.zeros(cout, 2, 2, cin, 3, 3, dtype=torch.float64, device=w.device)
        for a in (0, 1):
            for b in (0, 1):
                for u, ty in enumerate(taps[a]):
                    for v, tx in enumerate(taps[b]):
                        if ty is not None and tx is not None:
                            weight[:, a, b, :, u, v] = w[:, :, ty, tx].t()
        dtype = layer.weight.dtype
        self.register_buffer("weight", weight.reshape(4 * cout, cin, 3, 3).to(dtype))
        self.center = float(center)
        bias = torch.zeros(cout, dtype=dtype, device=w.device) if layer.bias is None else layer.bias.detach()
        self.register_buffer("bias", (bias.double() - self.center).to(dtype).repeat_interleave(4))

    def forward(self, x: Tensor) -> Tensor:
        y = F.pixel_shuffle(F.conv2d(x, self.weight, self.bias, padding=1), 2)
        return y.float() + self.center if self.center else y
