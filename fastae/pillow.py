""".fae as a Pillow format: ``Image.open("x.fae")`` decodes, ``im.save("x.fae", quality=4)`` encodes.

Registered when ``fastae`` is imported (``fastae.register_pillow()`` does it again, harmlessly), so
anything that opens images through Pillow reads .fae files and bytes — a Hugging Face ``datasets``
Image column of .fae bytes included::

    import fastae
    from PIL import Image
    Image.open("photo.png").save("photo.fae", quality=4)   # fastae.load_codec(quality=4)
    im = Image.open("photo.fae")      # reads the header only: im.size, im.mode ("RGB" or "L")
    im.load()                         # decodes, with the shipped model the file names

``Image.open`` decodes with the shipped model whose id and hash the file's header names; a codec
of your own (``load_codec(weights=...)``) is made known with :func:`add_codec`. Saving takes
``quality`` (default 4), ``model`` (a shipped model) or ``codec`` (a loaded ``Codec``).
"""

import threading

from PIL import Image, ImageFile

FORMAT = "FAE"
EXTENSION = ".fae"
MIME = "image/x-fae"
_HEADER_BYTES = 1024  # more than any version 1 header: model id 64, 8 latents x 17, 16 streams x 4
_codecs = {}  # (model id, hash) -> Codec used to decode
_lock = threading.Lock()


def _accept(prefix: bytes) -> bool:
    from fastae.codec.format import MAGIC

    return prefix[:4] == MAGIC


def add_codec(codec) -> None:
    """Decode the files of ``codec``'s model (its hash) with ``codec`` (one of your own weights)."""
    with _lock:
        _codecs[bytes(codec.hash)] = codec


def codec_for(header):
    """The codec that decodes a file of ``header``: one given to :func:`add_codec`, else the shipped
    model of that id (made once per process). ``fastae.CodecError`` when neither has the file's hash."""
    from fastae.codec.format import CodecError

    key = bytes(header.model_hash)
    with _lock:
        if key in _codecs:
            return _codecs[key]
    from fastae.codec.api import load_codec
    from fastae.codec.model_file import shipped_models

    if header.model_id not in shipped_models():
        made_by = "an unknown model" if header.model_id is None else f"model {header.model_id!r}"
        raise CodecError(f"the file was made with {made_by} (hash {header.model_hash.hex()}), which is not "
                         f"shipped in this package: fastae.pillow.add_codec(load_codec(weights=FILE)) first")
    codec = load_codec(model=header.model_id)
    if codec.hash != header.model_hash:
        raise CodecError(f"model hash mismatch: the file was made with model {header.model_id!r} (hash "
                         f"{header.model_hash.hex()}), the shipped one has hash {codec.hash.hex()}")
    add_codec(codec)
    return codec


def decode(data):
    """The pixels of the .fae bytes ``data``: uint8 H x W x 3, or H x W for a grey image."""
    from fastae.codec.format import read_header

    array = codec_for(read_header(data)).decompress(data)
    return array[:, :, 0] if array.shape[2] == 1 else array


class FaeImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "fastae learned image codec"

    def _open(self):
        from fastae.codec.format import CodecError, _parse_header

        prefix = self.fp.read(_HEADER_BYTES)
        try:
            header, _ = _parse_header(prefix)
        except CodecError as e:
            raise SyntaxError(f"not a readable .fae file: {e}") from None
        self.fae_header = header
        self._mode = "L" if header.channels == 1 else "RGB"
        self._size = (header.width, header.height)
        self.info["fae_model"], self.info["fae_quality"] = header.model_id, header.quality
        self.tile = [ImageFile._Tile("fae", (0, 0) + self.size, 0, None)]


class _FaeDecoder(ImageFile.PyDecoder):
    _pulls_fd = True  # the codec reads the whole file at once

    def decode(self, buffer):
        self.fd.seek(0)
        array = decode(self.fd.read())
        self.set_as_raw(array.tobytes(), self.mode)
        return -1, 0


def _save(im, fp, filename):
    from fastae.codec import DEFAULT_MODEL
    from fastae.codec.api import load_codec

    options = im.encoderinfo
    codec = options.get("codec")
    if codec is None:
        codec = load_codec(quality=options.get("quality", 4), model=options.get("model", DEFAULT_MODEL))
    elif "quality" in options:
        codec = codec.with_quality(options["quality"])
    fp.write(codec.compress(im))


def webdataset_decoder(key, data):
    """A ``webdataset`` decode handler: a ``.fae`` member decoded to a uint8 tensor [C, H, W]
    (``wds.WebDataset(urls).decode(fastae.pillow.webdataset_decoder)``); None for other members."""
    if not key.lower().endswith("fae"):
        return None
    import numpy as np
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.atleast_3d(decode(data)).transpose(2, 0, 1)))


def register_pillow() -> None:
    """Register the .fae format with Pillow (open, save, the extension and the MIME type)."""
    Image.register_open(FORMAT, FaeImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)
    Image.register_decoder("fae", _FaeDecoder)


register_pillow()
__all__ = ["EXTENSION", "FORMAT", "MIME", "FaeImageFile", "add_codec", "codec_for", "decode", "register_pillow",
           "webdataset_decoder"]
