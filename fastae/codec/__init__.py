"""Image and latent compression: learned codecs, the .fae file format, dataset tools.

    import fastae
    codec = fastae.load_codec(quality=4)
    data = codec.compress("photo.png")        # bytes of a .fae file
    rgb = codec.decompress(data)              # H x W x 3 uint8
    fastae.codec.read_header(data)            # what the file says about itself

See fastae/codec/format.py for the file format and fastae/codec/image.py for the input policy.
"""

from fastae.codec.format import CodecError, Header, read_header

DEFAULT_MODEL = "fastae-checkerboard-v4"  # the shipped model load_codec and the CLI use unless told otherwise

_LAZY = {"load_codec": "fastae.codec.image", "export_codec": "fastae.codec.image", "Codec": "fastae.codec.image",
         "Latents": "fastae.codec.image", "LatentCodec": "fastae.codec.latent"}


def __getattr__(name):  # the codec pulls in Pillow and the model zoo: load it when first used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastae.codec' has no attribute {name!r}")


__all__ = ["DEFAULT_MODEL", "CodecError", "Header", "read_header", *_LAZY]
