"""The weights file (fastae.codec.model_file): float16 export, tables stored and read back, bad files."""

import numpy as np
import pytest
import torch

from safetensors.torch import load_file

from fastae.codec.api import load_codec
from fastae.codec.model_file import derive_tables, export_codec, model_hash, read_model_file
from fastae.models.codec import CODEC_MODELS, FactorizedCodec
from tests._codec import photo, rewrite_model_file, tiny_model


def test_codec_rejects_malformed_thresholds(tmp_path):
    path = export_codec(tiny_model("hyperprior"), tmp_path / "hp.safetensors", model_id="hp")
    good = load_file(str(path))["tables.gaussian.thresholds"]
    for bad in (good.float(), good[:-1], good.flip(0), torch.full_like(good, float("nan"))):
        rewrite_model_file(path, tmp_path / "bad.safetensors", {"tables.gaussian.thresholds": bad})
        with pytest.raises(ValueError, match="bad.safetensors: tables.gaussian: .*thresholds must be non-decreasing "
                                             "finite float64"):
            read_model_file(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("kind", sorted(CODEC_MODELS))
def test_float16_export_holds_the_rounded_model_and_codes_with_it(kind, tmp_path):
    """weights_dtype="float16": convolution weights in half precision (2 bytes fewer per weight:
    about half of a real model's file), everything else float32; the loaded model is the float16-rounded model, its tables are
    derived from that model, and files round-trip exactly as with a float32 export."""
    from safetensors import safe_open

    torch.manual_seed(0)
    model = CODEC_MODELS[kind](N=16, M=16, lambdas=(0.01, 0.1))
    if hasattr(model, "ctx"):
        torch.nn.init.normal_(model.ctx.params[-1].weight, std=0.3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    full = export_codec(model, tmp_path / "f32.safetensors", model_id="m")
    half = export_codec(model, tmp_path / "f16.safetensors", model_id="m", weights_dtype="float16")
    with safe_open(str(half), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    convs = {f"model.{n}.weight" for n, mod in model.named_modules() if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))}
    assert convs and all(dtypes[k] == torch.float16 for k in convs)
    assert all(v != torch.float16 for k, v in dtypes.items() if k not in convs)
    saved = 2 * sum(model.state_dict()[k[len("model."):]].numel() for k in convs)  # 2 bytes per conv weight
    assert abs(full.stat().st_size - half.stat().st_size - saved) < 1024
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's model is not rounded

    codec = load_codec(quality=2, weights=half)
    rounded = {k: (v.half().float() if f"model.{k}" in convs else v) for k, v in model.state_dict().items()}
    loaded = codec.model.state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], v) for k, v in rounded.items())
    assert any(not torch.equal(model.state_dict()[k[len("model."):]], rounded[k[len("model."):]]) for k in convs)
    like = CODEC_MODELS[kind](N=16, M=16, lambdas=(0.01, 0.1))
    like.load_state_dict(rounded)
    with safe_open(str(half), "pt") as f:
        for k, v in derive_tables(like).items():
            assert torch.equal(f.get_tensor(k), v), k
    assert codec.hash != load_codec(quality=2, weights=full).hash

    rgb = photo()
    data = codec.compress(rgb)
    assert np.array_equal(codec.decompress(data), codec.reconstruct(rgb))
    assert codec.compress(rgb) == data


def test_float16_export_rejects_bad_dtypes_and_overflow(tmp_path):
    model = FactorizedCodec(N=8, M=8, lambdas=(0.01, 0.1))
    with pytest.raises(ValueError, match="weights_dtype must be one of .*'bfloat16'"):
        export_codec(model, tmp_path / "a.safetensors", weights_dtype="bfloat16")
    with torch.no_grad():
        model.g_a[0].weight[0, 0, 0, 0] = 1e5
    with pytest.raises(ValueError, match=r"g_a\.0\.weight has values outside float16's range"):
        export_codec(model, tmp_path / "b.safetensors", weights_dtype="float16")
    assert not (tmp_path / "b.safetensors").exists()
    export_codec(model, tmp_path / "c.safetensors", weights_dtype="float32")  # float32 holds it


@pytest.mark.parametrize("kind", sorted(CODEC_MODELS))
def test_the_file_holds_the_model_and_the_tables_it_codes_with(kind, tmp_path):
    """Every state_dict tensor as "model.NAME", every entropy model's tables as "tables.NAME.TABLE",
    the hash over all of them; loading reads the tables as stored (a file whose tables are not
    those its weights derive codes with its own, stored ones: nothing is derived at load)."""
    model = tiny_model(kind)
    path = export_codec(model, tmp_path / "m.safetensors", model_id="m")
    tensors = load_file(str(path))
    tables = derive_tables(model)
    assert set(tensors) == {f"model.{k}" for k in model.state_dict()} | set(tables)
    assert {k.split(".")[1] for k in tables} == {"q1", "q2"} | ({"gaussian"} if kind != "factorized" else set())
    loaded, model_id, hash_ = read_model_file(path)
    assert model_id == "m" and hash_ == model_hash(tensors) == load_codec(quality=1, weights=path).hash
    # q1's tables swapped for q2's (of the same channels): a valid file whose q1 tables no weights derive
    other = {f"tables.q1.{k}": tensors[f"tables.q2.{k}"] for k in ("cdfs", "offsets", "sizes")}
    assert not torch.equal(other["tables.q1.cdfs"], tensors["tables.q1.cdfs"])
    swapped = rewrite_model_file(path, tmp_path / "swapped.safetensors", other)
    loaded, _, swapped_hash = read_model_file(swapped)
    assert torch.equal(loaded.priors[0].tables["cdfs"], tensors["tables.q2.cdfs"]) and swapped_hash != hash_
    codec = load_codec(quality=1, weights=swapped)
    rgb = photo()
    data = codec.compress(rgb)
    assert np.array_equal(codec.decompress(data), codec.reconstruct(rgb))


def test_a_file_without_an_entropy_models_tables_is_refused(tmp_path):
    path = export_codec(tiny_model("factorized"), tmp_path / "m.safetensors", model_id="m")
    rewrite_model_file(path, tmp_path / "bad.safetensors", {"tables.q2.sizes": None})
    with pytest.raises(ValueError, match=r"bad.safetensors: tables.q2: FactorizedDensity: the tables lack \['sizes'\]"):
        load_codec(quality=1, weights=tmp_path / "bad.safetensors")

