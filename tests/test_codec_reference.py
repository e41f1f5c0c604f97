"""With precision="float32" the codec writes the bytes and decodes the pixels it did before
fastae/codec/image.py was split (and before the transforms could run in bfloat16 or on the fused GDN).
fastae-checkerboard-v4 has left the package (fastae-checkerboard-v8 replaced it); its weights file
is kept here, in tests/data/codec, and its old files decode with it (``load_codec(weights=...)``).

tests/data/codec holds three photo crops (from ../shared/data/photos-train), the state dicts of two
tiny models (a factorized and a hyperprior one, seed 0, their gains raised so that their latents
span several integers) and the .fae files that the code of main e495598 wrote for each crop with
fastae-checkerboard-v4 at qualities 1, 4 and 8 and with the tiny models at 1 and 2;
reference.json has the sha256 of each file, of its decoded pixels and of its decoded latents, and
of the same for a 2100 x 1650 image (tiled from a crop) that is coded in bands.

Integers are the same on every machine: an old file decodes to the same latents anywhere. Bytes
and pixels come from float32 transforms, whose rounding depends on the CPU's instruction set and
torch's kernels: they are compared on a machine like the one that wrote them (same torch, same CPU
capability, the same number of threads).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fastae.codec.api import load_codec
from fastae.codec.format import pack, unpack
from fastae.codec.model_file import export_codec
from fastae.models.codec import build_codec
from tests._codec import cpu_vendor

DATA = Path(__file__).parent / "data" / "codec"
REF = json.loads((DATA / "reference.json").read_text())
OLD = "fastae-checkerboard-v4"  # the model of the reference files, no longer shipped
OLD_WEIGHTS = DATA / f"{OLD}.safetensors"

same_machine = pytest.mark.skipif(
    (torch.__version__, torch.backends.cpu.get_cpu_capability()) != (REF["torch"], REF["cpu_capability"]),
    reason=f"bytes and pixels of float transforms are compared on the machine kind that wrote them: torch "
           f"{REF['torch']}, CPU capability {REF['cpu_capability']}")


# The tiny models' tables (derived at export from float likelihoods) and the banded image's float64
# entropy networks round differently on another CPU vendor's kernels (measured: an Intel Xeon gives
# other tables for the tiny models and other bytes for the banded image; the shipped model's files
# and pixels of whole images are the same there).
same_cpu = pytest.mark.skipif(cpu_vendor() != REF["cpu_vendor"],
                              reason=f"written on a {REF['cpu_vendor']} CPU, this one is {cpu_vendor()}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _latents_sha(codec, data) -> str:
    """sha256 of the int32 latents (then hyper-latents) that ``codec`` decodes from ``data``."""
    _, latents, _ = codec._read(data, 1 << 30)
    h = hashlib.sha256(latents.values.to(torch.int32).contiguous().numpy().tobytes())
    if latents.side is not None:
        h.update(latents.side.to(torch.int32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _image(name) -> np.ndarray:
    with Image.open(DATA / name) as img:
        return np.asarray(img.convert("RGB")).copy()


@pytest.fixture(autouse=True)
def _threads():
    """The references were written with REF["threads"] threads (a convolution's rounding may depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(REF["threads"])
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    """(model, quality) -> codec: v4 from its weights file, and the tiny models exported from their state dicts."""
    out = {(OLD, q): load_codec(quality=q, weights=OLD_WEIGHTS, precision="float32") for q in (1, 4, 8)}
    folder = tmp_path_factory.mktemp("reference")
    for name, spec in REF["models"].items():
        if name == OLD:
            continue
        model = build_codec(spec["config"])
        model.load_state_dict(load_file(str(DATA / spec["weights"])))
        weights = export_codec(model, folder / f"{name}.safetensors", model_id=name)
        out.update({(name, q): load_codec(quality=q, weights=weights, precision="float32") for q in (1, 2)})
    return out


def _codec(codecs, model, quality):
    return codecs[model, quality]


def test_the_old_model_keeps_its_hash(codecs):
    assert _codec(codecs, OLD, 1).hash.hex() == REF["models"][OLD]["hash"]


@same_machine
@same_cpu
def test_tiny_models_export_with_the_same_tables(codecs):
    """The hash covers the weights and the integer tables derived at export: the same tables as before."""
    for name, spec in REF["models"].items():
        if name != OLD:
            assert codecs[name, 1].hash.hex() == spec["hash"], name


FILES = [pytest.param(entry, id=Path(entry["fae"]).stem) for entry in REF["files"]]


@pytest.mark.parametrize("entry", [p for p in FILES if p.values[0]["model"] == OLD])
def test_old_files_of_the_old_model_decode_to_the_same_latents(codecs, entry):
    codec = _codec(codecs, entry["model"], entry["quality"])
    data = (DATA / entry["fae"]).read_bytes()
    assert _sha(data) == entry["fae_sha256"]
    assert _latents_sha(codec, data) == entry["latents_sha256"]


def _as_version_1(data: bytes, codec) -> bytes:
    """The version 1 file of the same streams (the reference files are version 1; fastae writes 2)."""
    import dataclasses

    header, streams = unpack(data)
    assert header.version == 2 and header.model_hash == codec.hash
    return pack(dataclasses.replace(header, version=1, model_id=codec.model_id,
                                    latent_shapes=codec.latent_shapes(header.height, header.width)), streams)


@same_machine
@pytest.mark.parametrize("entry", FILES)
def test_same_bytes_and_pixels_as_before(codecs, entry):
    """The same streams as before (the file repacked as version 1 is byte for byte the old one),
    and the old file decodes to the same latents and pixels."""
    if entry["model"] != OLD and cpu_vendor() != REF["cpu_vendor"]:
        pytest.skip(f"the tiny models' tables were derived on a {REF['cpu_vendor']} CPU, this one is {cpu_vendor()}")
    codec = _codec(codecs, entry["model"], entry["quality"])
    old = (DATA / entry["fae"]).read_bytes()
    new = codec.compress(_image(entry["image"]))
    assert _sha(_as_version_1(new, codec)) == entry["fae_sha256"]
    assert len(new) < len(old)  # the version 2 header is smaller
    assert _sha(np.ascontiguousarray(codec.decompress(new)).tobytes()) == entry["pixels_sha256"]
    assert _latents_sha(codec, old) == entry["latents_sha256"]
    assert _sha(np.ascontiguousarray(codec.decompress(old)).tobytes()) == entry["pixels_sha256"]


@pytest.mark.slow
@same_machine
@same_cpu
@pytest.mark.parametrize("entry", REF["banded"], ids=lambda e: e["model"])
def test_a_banded_image_gives_the_same_bytes_and_pixels(codecs, entry):
    """2100 x 1650 pixels: more than 1.5 x BAND_PIXELS, so the transforms and the float64 entropy
    networks run in bands of rows."""
    codec = _codec(codecs, entry["model"], entry["quality"])
    big = np.tile(_image("tiger.png"), (35, 30, 1))[:entry["height"], :entry["width"]].copy()
    data = _as_version_1(codec.compress(big), codec)
    assert (len(data), _sha(data)) == (entry["fae_bytes"], entry["fae_sha256"])
    assert _latents_sha(codec, data) == entry["latents_sha256"]
    assert _sha(np.ascontiguousarray(codec.decompress(data)).tobytes()) == entry["pixels_sha256"]
