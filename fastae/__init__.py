"""fastae: autoencoders on fused kernels.

    import fastae
    y = fastae.ops.linear_act(x, weight, bias, activation="gelu")
    mlp = fastae.nn.FusedMLP([784, 128, 64], activation="relu")
    codec = fastae.load_codec(quality=4); data = codec.compress("photo.png")
"""

__version__ = "0.1.0"

from fastae._malloc import keep_freed_memory  # noqa: E402
from fastae._native import build_info  # noqa: E402
from fastae import codec, nn, ops  # noqa: E402
from fastae.codec import CodecError  # noqa: E402
from fastae.pillow import register_pillow  # noqa: E402  (importing it registers .fae with Pillow)


def __getattr__(name):  # fastae.load_codec is fastae.codec.api.load_codec, imported when first used
    if name == "load_codec":
        from fastae.codec.api import load_codec

        return load_codec
    raise AttributeError(f"module 'fastae' has no attribute {name!r}")


__all__ = ["__version__", "CodecError", "build_info", "codec", "keep_freed_memory", "load_codec", "nn", "ops",
           "register_pillow"]
