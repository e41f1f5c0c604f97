"""Convolutional autoencoder, and the conv encoder/decoder it shares with ConvVAE."""

import math

import torch
from torch import Tensor, nn

from fastae.nn import FusedLinear, MonoConv2d, MonoConvTranspose2d
from fastae.ops.mono_conv import half_size
from fastae.ops import ACTIVATIONS, reconstruction_loss
from fastae.models.base import LOSSES, Autoencoder, full_precision


def _channels_last(layers: nn.Sequential) -> nn.Sequential:
    """``layers`` with their convolution weights channels-last, so that oneDNN's convolutions read
    and write channels-last activations from the first layer on (measured on the 2-core Xeon, the
    conv AE's train step against NCHW weights: 1.26x in bf16 at batch 4096, about even in fp32 and
    at batch 256; docs/training.md). Values agree up to the order of the sums. fastae's checkpoints
    save the weights ``.contiguous()``; a state_dict of either layout loads into it."""
    return layers.to(memory_format=torch.channels_last)


def conv_sizes(height: int, width: int, n: int) -> list:
    """Spatial sizes through n ``Conv2d(kernel 3, stride 2, padding 1)``: ``[(H, W), (H1, W1), …, (Hn, Wn)]``."""
    sizes = [(height, width)]
    for _ in range(n):
        sizes.append(tuple(half_size(s) for s in sizes[-1]))
    return sizes


class ConvEncoder(nn.Module):
    """``[B, C·H·W]`` -> ``[B, C, H, W]`` -> ``Conv2d(k3, s2, p1) + ReLU`` per entry of channels ->
    flattened ``[B, features]``, ``features = channels[-1]·Hn·Wn``."""

    def __init__(self, input_shape, channels):
        super().__init__()
        self.input_shape = tuple(input_shape)
        layers = []
        for c_in, c_out in zip((input_shape[0], *channels[:-1]), channels):
            conv = MonoConv2d(c_out) if c_in == 1 else nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            layers += [conv, nn.ReLU(inplace=True)]
        self.convs = _channels_last(nn.Sequential(*layers))
        self.features = channels[-1] * math.prod(conv_sizes(*input_shape[1:], len(channels))[-1])

    def forward(self, x: Tensor) -> Tensor:
        # The flatten reads NCHW order, so the last conv's channels-last output is made contiguous
        # before its ReLU rather than after: the ReLU's backward then reads a gradient and an output
        # of one layout (threshold_backward with one NCHW and one channels-last operand measured 3-4x
        # slower on the AMD EPYC; the train step in bf16 at batch 256: 31.4 -> 30.5 ms).
        h = self.convs[:-1](x.reshape(x.shape[0], *self.input_shape))
        return self.convs[-1](h.contiguous()).flatten(1)


class ConvDecoder(nn.Module):
    """The ConvEncoder's mirror: code ``[B, latent]`` -> ``FusedLinear`` + ReLU -> ``[B, channels[-1], Hn, Wn]``
    -> ``ConvTranspose2d(k3, s2, p1)`` per entry of channels, reversed, ReLU between and sigmoid at
    the end -> ``[B, *input_shape]``. Each output_padding (0 or 1) undoes the rounding of the
    matching encoder conv, so odd and even sizes come back exactly."""

    def __init__(self, input_shape, channels, latent: int):
        super().__init__()
        sizes = conv_sizes(*input_shape[1:], len(channels))
        self.code_shape = (channels[-1], *sizes[-1])
        self.linear = FusedLinear(latent, math.prod(self.code_shape), "relu")
        outs = (input_shape[0], *channels[:-1])
        layers = []
        for i in reversed(range(len(channels))):
            # A stride-2 transposed conv makes 2·n - 1 + output_padding out of n.
            padding = tuple(big - 2 * small + 1 for big, small in zip(sizes[i], sizes[i + 1]))
            if outs[i] == 1:
                deconv = MonoConvTranspose2d(channels[i], output_padding=padding)
            else:
                deconv = nn.ConvTranspose2d(channels[i], outs[i], 3, stride=2, padding=1, output_padding=padding)
            layers += [deconv, nn.ReLU(inplace=True) if i else nn.Sigmoid()]
        self.deconvs = _channels_last(nn.Sequential(*layers))

    def forward(self, z: Tensor) -> Tensor:
        return self.deconvs(self.linear(z).reshape(z.shape[0], *self.code_shape))

    def reconstruction(self, z: Tensor, x: Tensor, kind: str, reduction: str):
        """Loss of decoding z against x (any shape of B·C·H·W values) and the reconstruction
        ``[B, C, H, W]``. kind: ``mse`` or ``bce`` (on the sigmoid output)."""
        x_hat = self(z)
        with full_precision(z.device):
            return reconstruction_loss(x_hat, x.reshape(x_hat.shape).float(), kind, reduction), x_hat


def conv_parts(model: Autoencoder, channels):
    """ConvEncoder and ConvDecoder for ``model.input_shape`` (C, H, W) and ``model.latent``;
    ValueError, in model's name, for another input shape or bad channels."""
    if len(model.input_shape) != 3:
        raise model._error(f"expected input_shape (channels, height, width), got {list(model.input_shape)}")
    channels = model._check_sizes("channels", channels)
    return ConvEncoder(model.input_shape, channels), ConvDecoder(model.input_shape, channels, model.latent)


class ConvAutoencoder(Autoencoder):
    """Strided conv encoder (``ConvEncoder``) + ``FusedLinear`` to the code (``latent_activation``),
    mirrored by ``ConvDecoder`` with a sigmoid output. input_shape: (C, H, W), any sizes.
    loss: ``mse`` or ``bce``, averaged over pixels."""

    name = "conv"

    def __init__(self, input_shape=(1, 28, 28), channels=(32, 64), latent: int = 32,
                 latent_activation: str = "none", loss: str = "mse"):
        super().__init__(input_shape, latent)
        self._check_choice("latent_activation", latent_activation, ACTIVATIONS)
        self.loss_kind = self._check_choice("loss", loss, LOSSES)
        trunk, decoder = conv_parts(self, channels)
        self.encoder = nn.Sequential(trunk, FusedLinear(trunk.features, latent, latent_activation))
        self.decoder = decoder
