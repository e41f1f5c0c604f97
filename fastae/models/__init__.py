"""The autoencoder model zoo, one interface (``Autoencoder``) for all.

    from fastae.models import build_model
    model = build_model("vae", input_shape=(1, 28, 28), latent=2)
    terms = model.loss(x)            # {"loss", "recon", "kl", "mse"}
    rebuilt = build_model(model.name, **model.config)

The codec networks (``CodecModel`` and its kinds FactorizedCodec, HyperpriorCodec,
CheckerboardCodec) are built from their config by ``build_codec``; fastae.codec codes images with them.
"""

from fastae.models.aae import AdversarialAutoencoder
from fastae.models.base import Autoencoder
from fastae.models.codec import CheckerboardCodec, CodecModel, FactorizedCodec, HyperpriorCodec, build_codec
from fastae.models.conv import ConvAutoencoder
from fastae.models.mlp import DenoisingAutoencoder, MLPAutoencoder, SparseAutoencoder
from fastae.models.vae import VAE, ConvVAE

MODELS = {cls.name: cls for cls in (MLPAutoencoder, SparseAutoencoder, DenoisingAutoencoder, ConvAutoencoder,
                                    VAE, ConvVAE, AdversarialAutoencoder)}


def build_model(name: str, **config) -> Autoencoder:
    """The model called ``name`` in MODELS, built with ``config`` (its constructor's keyword arguments)."""
    if name not in MODELS:
        raise ValueError(f"build_model: unknown model {name!r}; expected one of {list(MODELS)}")
    return MODELS[name](**config)


__all__ = ["MODELS", "AdversarialAutoencoder", "Autoencoder", "CheckerboardCodec", "CodecModel", "ConvAutoencoder",
           "ConvVAE", "DenoisingAutoencoder", "FactorizedCodec", "HyperpriorCodec", "MLPAutoencoder", "SparseAutoencoder",
           "VAE", "build_codec", "build_model"]
