"""Adversarial autoencoder: a deterministic autoencoder whose codes a discriminator pushes toward N(0, I)."""

import torch
from torch import Tensor

from fastae.nn import FusedMLP
from fastae.ops import reconstruction_loss
from fastae.models.base import full_precision
from fastae.models.mlp import MLPAutoencoder


def _bce_logits(logits: Tensor, label: float) -> Tensor:
    """Mean BCE-with-logits of logits against a constant label."""
    logits = logits.float()
    with full_precision(logits.device):
        return reconstruction_loss(logits, torch.full_like(logits, label), "bce_logits", "mean")


class AdversarialAutoencoder(MLPAutoencoder):
    """MLPAutoencoder with a linear code (no activation) plus a discriminator
    ``FusedMLP([latent, *disc_hidden, 1])`` (``activation`` hidden, one logit) telling prior samples
    z ~ N(0, I) from codes. Three phases, each with its own optimizer:

    * ``ae`` (encoder + decoder): the reconstruction loss (``mse`` or ``bce``), term ``recon``;
    * ``disc`` (discriminator): BCE-with-logits of D(prior sample) against 1 (term ``real``) plus
      of D(encode(x)), detached, against 0 (term ``fake``);
    * ``gen`` (encoder): BCE-with-logits of D(encode(x)) against 1.

    Every phase's dict also has ``mse`` of the reconstruction.
    """

    name = "aae"

    def __init__(self, input_shape=(1, 28, 28), hidden=(512,), latent: int = 8, activation: str = "relu",
                 loss: str = "mse", disc_hidden=(256, 256)):
        super().__init__(input_shape, hidden, latent, activation, "none", loss)
        disc_hidden = self._check_sizes("disc_hidden", disc_hidden)
        self.discriminator = FusedMLP([latent, *disc_hidden, 1], activation)

    def phases(self) -> list:
        return [("ae", [*self.encoder.parameters(), *self.decoder.parameters()]),
                ("disc", list(self.discriminator.parameters())),
                ("gen", list(self.encoder.parameters()))]

    def loss(self, x: Tensor, phase: str = "ae") -> dict:
        if phase == "ae":
            return super().loss(x, phase)
        self._check_phase(phase)
        z = self.encode(x)
        with torch.no_grad():  # the reconstruction only feeds the mse term here
            x_hat = self.decode(z)
        if phase == "disc":
            z = z.detach()
            real = _bce_logits(self.discriminator(torch.randn_like(z)), 1.0)
            fake = _bce_logits(self.discriminator(z), 0.0)
            return self._terms(x, x_hat, real + fake, real=real, fake=fake)
        return self._terms(x, x_hat, _bce_logits(self.discriminator(z), 1.0))
