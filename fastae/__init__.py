"""fastae: autoencoders on fused kernels.

    import fastae
    y = fastae.ops.linear_act(x, weight, bias, activation="gelu")
    mlp = fastae.nn.FusedMLP([784, 128, 64], activation="relu")
    codec = fastae.load_codec(quality=4); data = codec.compress("photo.png")
"""

__version__ = "0.1.0"

from fastae._native import build_info  # noqa: E402
from fastae import codec, nn, ops  # noqa: E402
from fastae.codec import CodecError  # noqa: E402


def load_codec(quality=None, model: str = codec.DEFAULT_MODEL, device="cpu", weights=None, refine: int = 0,
               side_search: bool = True):
    """The pretrained image codec shipped in the package, at ``quality`` 1..8 (None: 4, or a custom
    model's highest if it has fewer; ``refine``: steps of encoder-side latent refinement, 0 = off;
    ``side_search``: see fastae.codec.image.load_codec); see fastae.codec."""
    from fastae.codec.image import load_codec as _load

    return _load(quality=quality, model=model, device=device, weights=weights, refine=refine,
                 side_search=side_search)


__all__ = ["__version__", "CodecError", "build_info", "codec", "load_codec", "nn", "ops"]
