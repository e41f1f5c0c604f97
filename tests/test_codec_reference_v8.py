"""Files of the shipped model, fastae-checkerboard-v8, written once (tests/data/codec/reference-v8.json,
3 crops at qualities 1, 4 and 8, precision="float32"): its entropy networks are integer networks,
so a file decodes to the same latents on every machine, at any thread count and transforms'
precision; bytes and pixels come from float transforms and are compared on a machine kind whose
hashes are recorded (the writer's, a 2-core Intel Xeon, and "other_machines": one pixel hash differs
on an AMD EPYC of the same torch and CPU capability)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastae.codec import DEFAULT_MODEL
from fastae.codec.api import load_codec
from tests._codec import cpu_vendor

DATA = Path(__file__).parent / "data" / "codec"
REF = json.loads((DATA / "reference-v8.json").read_text())
FILES = [pytest.param(e, id=Path(e["fae"]).stem) for e in REF["files"]]

def _this_machine():
    """The record of the machine kind this is (torch, CPU capability, CPU vendor): the writer's, or
    one of "other_machines" (each with its own files' hashes), or None."""
    kind = (torch.__version__, torch.backends.cpu.get_cpu_capability(), cpu_vendor())
    for machine in [REF, *REF.get("other_machines", [])]:
        if (machine["torch"], machine["cpu_capability"], machine["cpu_vendor"]) == kind:
            return machine
    return None


MACHINE = _this_machine()
same_machine = pytest.mark.skipif(
    MACHINE is None,
    reason="bytes and pixels of float transforms are compared on a machine kind whose hashes are recorded: "
           + "; ".join(f"torch {m['torch']}, CPU capability {m['cpu_capability']}, {m['cpu_vendor']}"
                       for m in [REF, *REF.get("other_machines", [])]))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _latents_sha(codec, data) -> str:
    _, latents, _ = codec._read(data, 1 << 30)
    h = hashlib.sha256(latents.values.to(torch.int32).contiguous().numpy().tobytes())
    h.update(latents.side.to(torch.int32).contiguous().numpy().tobytes())
    return h.hexdigest()


def test_the_reference_model_is_the_shipped_one():
    assert REF["model"] == DEFAULT_MODEL
    assert load_codec(quality=1).hash.hex() == REF["hash"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("entry", FILES)
def test_files_decode_to_the_same_latents_anywhere(entry, precision, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        codec = load_codec(quality=entry["quality"], precision=precision)
        data = (DATA / entry["fae"]).read_bytes()
        assert _sha(data) == entry["fae_sha256"]
        assert _latents_sha(codec, data) == entry["latents_sha256"]
    finally:
        torch.set_num_threads(before)


@same_machine
@pytest.mark.parametrize("entry", FILES)
def test_same_bytes_and_pixels_on_the_machine_kind_that_wrote_them(entry):
    want = entry if MACHINE is REF else MACHINE["files"][entry["fae"]]
    before = torch.get_num_threads()
    torch.set_num_threads(MACHINE["threads"])
    try:
        codec = load_codec(quality=entry["quality"], precision="float32")
        with Image.open(DATA / entry["image"]) as img:
            image = np.asarray(img.convert("RGB")).copy()
        assert _sha(codec.compress(image)) == want["fae_sha256"]
        data = (DATA / entry["fae"]).read_bytes()
        assert _sha(np.ascontiguousarray(codec.decompress(data)).tobytes()) == want["pixels_sha256"]
    finally:
        torch.set_num_threads(before)
