"""The codec's weights file: one safetensors file holding a model and its integer tables.

    export_codec(model, "codec.safetensors", model_id="my-codec-v1")   # tables derived here, once
    model, model_id, model_hash = read_model_file("codec.safetensors")   # tables read back, checked
    shipped_models()                                                     # the files in fastae/codec/weights/

The file holds every tensor of the model's state_dict as "model.NAME" and the integer tables of
each of its entropy models (``model.entropy_models()``) as "tables.ENTROPY_MODEL.TABLE" (e.g.
"tables.q1.cdfs", "tables.gaussian.thresholds"), with the metadata "model_id" and "config" (JSON:
``build_codec`` rebuilds the model from it). An integer model (config "integer": true) also holds
the integer form of each integer layer of its entropy networks as "integer.LAYER.PART" (int8
"weight", int32 "bias", "mult", "shift", "bound": ``_IntegerConv.derive_integers``), derived at
export like the tables; coding computes with those integers, not with the float weights beside them
(which stay for fine-tuning). The model hash that every .fae file carries is the
first 8 bytes of SHA-256 over all of them, so a file decodes only with the weights and tables that
wrote it.
"""

import copy
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from fastae._io import atomic_path, read_safetensors, safetensors_metadata
from fastae.codec import DEFAULT_MODEL
from fastae.codec.format import check_model_id
from fastae.models.codec import CodecModel, build_codec
from fastae.nn.integer import _IntegerConv

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_DTYPES = ("float32", "float16")


def model_hash(tensors: dict) -> bytes:
    """First 8 bytes of SHA-256 over every tensor (sorted by name: name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:8]


def derive_tables(model: CodecModel) -> dict:
    """{"tables.ENTROPY_MODEL.TABLE": tensor} of every entropy model of ``model``, derived from its weights."""
    return {f"tables.{name}.{key}": value for name, entropy_model in model.entropy_models().items()
            for key, value in entropy_model.derive_tables().items()}


def integer_layers(model: CodecModel) -> dict:
    """{state-dict name: layer} of the integer layers (fastae.nn.integer) of an integer model."""
    return {name: module for name, module in model.named_modules() if isinstance(module, _IntegerConv)}


def derive_integers(model: CodecModel) -> dict:
    """{"integer.LAYER.PART": tensor} of every integer layer of ``model`` (``_IntegerConv.derive_integers``)."""
    return {f"integer.{name}.{key}": value for name, layer in integer_layers(model).items()
            for key, value in layer.derive_integers().items()}


def _conv_weight_names(model: CodecModel) -> list:
    """State-dict names of the weights of every convolution (nearly all of a codec's parameters)."""
    return [f"{name}.weight" for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, _IntegerConv))]


def export_codec(model: CodecModel, path, model_id: str = DEFAULT_MODEL, weights_dtype: str = "float32",
                 tables: dict = None) -> Path:
    """Write ``model`` with its derived integer tables to one safetensors file (atomically).

    ``weights_dtype="float16"`` stores the convolution weights in half precision (half the file;
    the other parameters, the gains, GDN and entropy models, stay float32). The file then holds
    exactly the model it describes: the weights are rounded to float16 first and the tables
    derived from the rounded model, and loading widens them to float32 without another rounding,
    so the encoder and the decoder compute with the same numbers as with a float32 file.

    ``tables``: {"tables.MODEL.NAME" / "integer.LAYER.PART": tensor}, every table and integer layer
    as a codec file holds them, stored instead of the derived ones (same names, shapes and dtypes,
    else ValueError). For a model whose entropy networks are those of another file (an encoder-only
    fine-tune): the float64 scales and thresholds derived on another CPU can differ from the file's
    in the last bit (libm and SIMD paths differ), and that file's tables are the ones its decoders use.
    """
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"export_codec: weights_dtype must be one of {WEIGHTS_DTYPES}, got {weights_dtype!r}")
    check_model_id(model_id)
    model = model.cpu().eval()
    half = set()
    if weights_dtype == "float16":
        model = copy.deepcopy(model)
        state = model.state_dict()
        for name in _conv_weight_names(model):
            w = state[name]
            if not torch.isfinite(w.half()).all():
                raise ValueError(f"export_codec: {name} has values outside float16's range (largest "
                                 f"|w| {w.abs().max().item():.4g}, float16 reaches 65504); export it as float32")
            with torch.no_grad():
                w.copy_(w.half().float())
            half.add(name)
    tensors = {f"model.{k}": (v.half() if k in half else v).detach().contiguous()
               for k, v in model.state_dict().items()}
    derived = {**derive_tables(model), **derive_integers(model)}
    if tables is not None:
        wrong = sorted(set(derived) ^ set(tables)) or [k for k in derived if tables[k].shape != derived[k].shape
                                                       or tables[k].dtype != derived[k].dtype]
        if wrong:
            raise ValueError(f"export_codec: tables must hold the model's {len(derived)} tables and integer layers "
                             f"with their shapes and dtypes; {wrong[0]} is missing, extra or of another shape or dtype")
        derived = {k: tables[k].contiguous() for k in derived}
    tensors.update(derived)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"model_id": model_id, "config": json.dumps(model.config)})
    return path


def read_model_file(path) -> tuple:
    """(model on the CPU with its entropy models' tables loaded, model id, model hash) of a file
    written by ``export_codec``. FileNotFoundError or ValueError (naming the file) for anything else."""
    path = Path(path)
    if path.is_dir() and (path / "codec.safetensors").is_file():
        raise FileNotFoundError(f"codec weights {path} is a folder: pass the codec file in it, "
                                f"{path / 'codec.safetensors'}")
    if not path.is_file():
        raise FileNotFoundError(f"codec weights {path} not found")
    meta = safetensors_metadata(path)
    if "model_id" not in meta or "config" not in meta:
        raise ValueError(f"{path} is not a fastae codec file (its metadata lacks model_id/config)")
    tensors = read_safetensors(path)
    model = build_codec(json.loads(meta["config"]))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, entropy_model in model.entropy_models().items():
        prefix = f"tables.{name}."
        try:
            entropy_model.load_tables({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except ValueError as e:
            raise ValueError(f"{path}: tables.{name}: {e}") from None
    for name, layer in integer_layers(model).items():
        prefix = f"integer.{name}."
        try:
            layer.load_integers({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except ValueError as e:
            raise ValueError(f"{path}: integer.{name}: {e}") from None
    return model, meta["model_id"], model_hash(tensors)


def shipped_models() -> list:
    """The ids of the models shipped in the package (fastae/codec/weights/ID.safetensors)."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))
