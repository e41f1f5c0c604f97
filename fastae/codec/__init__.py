"""Image and latent compression: learned codecs, the .fae file format, dataset tools.

    import fastae
    codec = fastae.load_codec(quality=4)
    data = codec.compress("photo.png")        # bytes of a .fae file
    rgb = codec.decompress(data)              # H x W x 3 uint8
    fastae.codec.read_header(data)            # what the file says about itself

The modules, by subject: api (load_codec, Codec: bytes <-> images), image (the input policy),
layouts (what each model kind writes), entropy (the entropy models: FactorizedDensity,
GaussianConditional), parameters (how the table-choosing networks are computed: float64),
model_file (export_codec, the weights file), bands (large images), format (.fae), rans and tables
(the integer coder), refine (encoder-side search), latent (LatentCodec), folder and eval (tools).
"""

from fastae.codec.format import CodecError, Header, read_header

DEFAULT_MODEL = "fastae-checkerboard-v8"  # the shipped model load_codec and the CLI use unless told otherwise

_LAZY = {"load_codec": "fastae.codec.api", "Codec": "fastae.codec.api", "Latents": "fastae.codec.api",
         "export_codec": "fastae.codec.model_file", "LatentCodec": "fastae.codec.latent",
         "FactorizedDensity": "fastae.codec.entropy", "GaussianConditional": "fastae.codec.entropy"}


def __getattr__(name):  # the codec pulls in Pillow and the model zoo: load it when first used
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastae.codec' has no attribute {name!r}")


__all__ = ["DEFAULT_MODEL", "CodecError", "Header", "read_header", *_LAZY]
