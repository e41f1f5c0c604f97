"""Integer models (config "integer": true): the hyper-synthesis and the checkerboard context in
integer arithmetic (fastae.nn.integer) wired through fastae.codec.parameters, the integer weights
stored in the model file, and their guarantees: the encoder's integers are the decoder's whatever
the transforms' precision, thread count or integer-kernel backend; identical bytes at 1 and 2 threads."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import fastae
from fastae import cli
from fastae.codec.api import load_codec
from fastae.codec.model_file import export_codec, read_model_file
from fastae.codec.parameters import IntegerParameters, _real
from fastae.nn.integer import scale_table_index
from fastae.train.entropy import _pool, integer_model, latent_rate
from tests._codec import photo, rewrite_model_file, tiny_model
from tests._util import backend_params


def _float_model(kind):
    """A tiny float model whose latents span several integers (gains raised from the untrained ones)."""
    model = tiny_model(kind).eval()
    with torch.no_grad():
        model.log_gain.add_(2.5)
        model.log_inv_gain.sub_(2.5)
    return model


@pytest.fixture(scope="module", params=["checkerboard", "hyperprior"])
def integer_file(request, tmp_path_factory):
    """A tiny integer model converted from a float one (scales calibrated on fixture crops), exported."""
    model = _float_model(request.param)
    photos = [torch.from_numpy(photo((96, 152))).permute(2, 0, 1).contiguous()]
    pool = _pool(model, photos, 4, 64, torch.Generator().manual_seed(0), progress=False)
    model = integer_model(model, pool)
    return export_codec(model, tmp_path_factory.mktemp("int") / "int.safetensors", model_id="tiny-int")


def test_the_file_marks_the_model_integer_and_stores_its_integers(integer_file):
    model, _, _ = read_model_file(integer_file)
    assert model.integer and model.config["integer"] is True
    tensors = load_file(str(integer_file))
    w = tensors["integer.h_s.layers.0.weight"]
    assert w.dtype == torch.int8 and w.shape == model.h_s.layers[0].weight.shape and int(w.abs().max()) == 127
    assert tensors["integer.h_s.layers.2.bound"].dtype == torch.int32
    if model.kind == "checkerboard":
        assert tensors["integer.ctx.context.weight"].dtype == torch.int8
    # the coding path computes with the stored integers, not with integers derived anew
    layer = model.h_s.layers[0]
    assert torch.equal(layer.integer_layer().bias, tensors["integer.h_s.layers.0.bias"])


def test_the_stored_integers_are_what_codes(integer_file, tmp_path):
    """Another integer bias in the file: another hash, other latents' parameters; a missing
    integer tensor is an error naming it."""
    base = load_codec(quality=2, weights=integer_file)
    bias = load_file(str(integer_file))["integer.h_s.layers.2.bias"]
    changed = rewrite_model_file(integer_file, tmp_path / "changed.safetensors",
                                 {"integer.h_s.layers.2.bias": bias + 4096})
    other = load_codec(quality=2, weights=changed)
    assert other.hash != base.hash
    side = torch.randint(-3, 4, (1, *base.latent_shapes(64, 64)[1]), dtype=torch.int32)
    zeros = lambda m, s: torch.zeros_like(m)  # noqa: E731
    assert not torch.equal(base.layout.parameters(side, zeros)[0], other.layout.parameters(side, zeros)[0])
    broken = rewrite_model_file(integer_file, tmp_path / "broken.safetensors", {"integer.h_s.layers.1.mult": None})
    with pytest.raises(ValueError, match=r"integer\.h_s\.layers\.1: IntegerConvTranspose2d: expected integer "
                                         r"tensors .*got \['bias', 'bound', 'shift', 'weight'\]"):
        read_model_file(broken)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_round_trip_and_thread_counts(integer_file, precision):
    """compress at 1 and 2 threads: the same bytes; decompress at 1 and 2: the same pixels, which
    are the encoder's reconstruction (for each precision of the transforms)."""
    rgb = photo((72, 100))
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            codec = load_codec(quality=2, weights=integer_file, precision=precision)
            data = codec.compress(rgb)
            out[threads] = data, codec.decompress(data)
    finally:
        torch.set_num_threads(before)
    assert out[1][0] == out[2][0]
    assert np.array_equal(out[1][1], out[2][1])
    assert np.array_equal(out[1][1], load_codec(quality=2, weights=integer_file, precision=precision).reconstruct(rgb))


@pytest.mark.parametrize("writer", ["float32", "bfloat16"])
def test_the_encoders_integers_are_the_decoders_under_either_precision(integer_file, writer):
    """The latents (and hyper-latents) the encoder coded under one precision are those each decoder
    reads, under either precision; the means added to them are the same float64 values."""
    codecs = {p: load_codec(quality=2, weights=integer_file, precision=p) for p in ("float32", "bfloat16")}
    x = torch.from_numpy(photo((72, 100))).permute(2, 0, 1)[None]
    latents = codecs[writer].encode(x)
    data = codecs[writer].compress(photo((72, 100)))
    for reader in codecs.values():
        _, read, y_hat = reader._read(data, 1 << 30)
        assert torch.equal(read.values, latents.values) and torch.equal(read.side, latents.side)
    y32 = codecs["float32"]._read(data, 1 << 30)[2]
    assert torch.equal(y32, codecs["bfloat16"]._read(data, 1 << 30)[2])


@pytest.mark.parametrize("backend", backend_params(["torch", "cpu", "triton"]))
def test_the_entropy_parameters_are_the_same_integers_on_every_backend(integer_file, backend):
    """The means and scales of every latent from the integer kernels of each backend: those of the
    torch oracle, bit for bit (the anchors' values given as the decoder has them)."""
    model, _, _ = read_model_file(integer_file)
    params = IntegerParameters(model, "cpu")
    g = torch.Generator().manual_seed(3)
    side = torch.randint(-6, 7, (2, model.N, 3, 4), generator=g, dtype=torch.int32)
    values = torch.randint(-5, 6, (2, model.M, 12, 16), generator=g, dtype=torch.int32)
    with fastae.ops.backend("torch"):
        want = params(side, lambda m, s: values)
    with fastae.ops.backend(backend):
        got = params(side, lambda m, s: values)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_the_table_index_is_an_integer_function_of_the_integer_scales(integer_file):
    """GaussianConditional.index of the float64 scales the parameters return is scale_table_index
    of the integer scales, at and around every threshold."""
    model, _, _ = read_model_file(integer_file)
    thresholds = model.gaussian.tables["thresholds"]
    limits = torch.floor(thresholds * 4096).long()
    s = torch.cat([limits - 1, limits, limits + 1, torch.randint(-100, 1 << 20, (1000,))]).int()
    assert torch.equal(model.gaussian.index(_real(s)), scale_table_index(s, thresholds))


def test_qat_lowers_the_rate_of_the_integer_networks():
    """A few fine-tuning steps of the integer networks on a fixed pool of latents lower their rate
    on that pool (rounding, no noise), the transforms untouched."""
    model = _float_model("checkerboard")
    photos = [torch.from_numpy(photo((96, 152))).permute(2, 0, 1).contiguous()]
    pool = _pool(model, photos, 4, 64, torch.Generator().manual_seed(0), progress=False)
    model = integer_model(model, pool)
    g_a = {k: v.clone() for k, v in model.g_a.state_dict().items()}
    params = list(model.h_s.parameters()) + list(model.ctx.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    with torch.no_grad():
        before = latent_rate(model, pool, 2, noise=False).item()
    torch.manual_seed(0)
    for step in range(30):
        loss = latent_rate(model, pool, 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = latent_rate(model, pool, 2, noise=False).item()
    assert after < before
    assert all(torch.equal(v, model.g_a.state_dict()[k]) for k, v in g_a.items())


def test_cli_entropy_only_integer(tmp_path, capsys):
    """`fastae train codec --entropy-only --integer --init FILE` writes an integer model file that
    codes; the options it does not read are refused, and --init is required."""
    src = tmp_path / "photos"
    src.mkdir()
    Image.fromarray(photo((96, 152))).save(src / "a.png")
    init = export_codec(_float_model("checkerboard"), tmp_path / "float.safetensors", model_id="tiny")
    base = ["train", "codec", "--data", str(src), "--steps", "3", "--crop", "64", "--batch-size", "2",
            "--pool", "4", "--downscale", "1", "--model-id", "tiny-int"]
    assert cli.main([*base, "--out", str(tmp_path / "run"), "--entropy-only", "--integer", "--init", str(init)]) == 0
    weights = tmp_path / "run" / "codec.safetensors"
    assert str(weights) in capsys.readouterr().out
    model, model_id, _ = read_model_file(weights)
    assert model.integer and model_id == "tiny-int"
    codec = load_codec(quality=2, weights=weights)
    assert np.array_equal(codec.decompress(codec.compress(photo((40, 56)))), codec.reconstruct(photo((40, 56))))
    assert cli.main([*base, "--out", str(tmp_path / "r2"), "--entropy-only", "--integer"]) == 2
    assert "--entropy-only needs --init" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "r3"), "--entropy-only", "--init", str(init),
                     "--kind", "hyperprior"]) == 2
    assert "--kind does not apply to --entropy-only" in capsys.readouterr().err
    assert cli.main([*base, "--out", str(tmp_path / "r4"), "--integer"]) == 2
    assert "pass --entropy-only" in capsys.readouterr().err
