"""The entropy models (fastae.codec.entropy): likelihoods, integer tables derived at export and read
at load, coding; and the float64 networks (fastae.codec.parameters) that choose the Gaussian's tables."""

import numpy as np
import pytest
import torch

from fastae.codec.api import load_codec
from fastae.codec.entropy import SCALE_BOUND, FactorizedDensity, GaussianConditional, scale_table
from fastae.codec.format import CodecError
from fastae.codec.model_file import export_codec
from fastae.codec.tables import pack_varints
from fastae.models.codec import CODEC_MODELS, HyperpriorCodec
from tests._codec import rewrite_model_file


def test_gaussian_likelihood_matches_normal_cdf_and_sums_to_one():
    gaussian_likelihood = GaussianConditional.likelihood
    torch.manual_seed(0)
    y = torch.randn(1000, dtype=torch.float64) * 5
    means = torch.randn(1000, dtype=torch.float64)
    scales = torch.rand(1000, dtype=torch.float64) * 10 + SCALE_BOUND
    normal = torch.distributions.Normal(means, scales)
    expected = normal.cdf(y + 0.5) - normal.cdf(y - 0.5)
    got = gaussian_likelihood(y, means, scales)
    assert torch.allclose(got, expected.clamp_min(1e-9), rtol=1e-6, atol=1e-12)
    k = torch.arange(-200, 201, dtype=torch.float64)[:, None]
    total = gaussian_likelihood(k, torch.tensor([0.3, -1.7]), torch.tensor([0.05, 20.0])).sum(0)
    assert torch.allclose(total, torch.ones(2, dtype=torch.float64), atol=1e-6)  # 0.05 is lifted to the bound


def test_gaussian_tables_follow_the_discretized_gaussian():
    cdfs, offsets, sizes, scales = (GaussianConditional().derive_tables()[k] for k in ("cdfs", "offsets", "sizes",
                                                                                      "scales"))
    assert torch.equal(scales, scale_table()) and scales.dtype == torch.float64 and len(cdfs) == len(scales)
    assert (offsets <= 0).all() and (sizes[1:] >= sizes[:-1]).all()  # wider Gaussians, wider tables
    for t in (0, 20, 63):
        freq = (cdfs[t, 1:sizes[t]] - cdfs[t, :sizes[t] - 1]).double() / 2 ** 16  # without the escape
        k = torch.arange(int(offsets[t]), int(offsets[t]) + len(freq), dtype=torch.float64)
        pmf = torch.special.ndtr((k + 0.5) / scales[t]) - torch.special.ndtr((k - 0.5) / scales[t])
        assert (freq - pmf).abs().max() < 2e-4, t
        assert pmf.sum() > 1 - 1e-5  # the tails left to the escape are tiny


def test_hyperprior_tables_chosen_in_float64(tmp_path):
    """The decoder picks each latent's table from h_s run in float64, by the file's thresholds
    (files without thresholds: the smallest table scale at or above the predicted scale), and
    the float32 network makes the same choice away from a threshold."""
    torch.manual_seed(0)
    model = HyperpriorCodec(N=8, M=8, lambdas=(0.01, 0.1))
    path = export_codec(model, tmp_path / "hp.safetensors", model_id="hp")
    side = torch.randint(-3, 4, (1, 8, 2, 3), dtype=torch.int32)
    with torch.no_grad():
        means32, scales32 = model.entropy_parameters(side.float())
    s = scales32.double()
    old = rewrite_model_file(path, tmp_path / "old.safetensors", {"tables.gaussian.thresholds": None})
    for weights, rule in ((path, "thresholds"), (old, "next larger")):
        codec = load_codec(quality=1, weights=weights)
        means, scales, _ = codec.layout.parameters(side)
        index = codec.model.gaussian.index(scales)
        assert means.dtype == scales.dtype == torch.float64 and torch.allclose(means.float(), means32, atol=1e-5)
        tables = codec.model.gaussian.tables
        table = tables["scales"]
        bounds = tables["thresholds"] if rule == "thresholds" else table[:-1]
        if rule == "next larger":
            assert torch.equal(tables["thresholds"], table[:-1])
        i = index.long()
        above = bounds[(i - 1).clamp_min(0)]
        below = bounds[i.clamp_max(len(bounds) - 1)]
        assert ((above < s * (1 + 1e-5)) | (i == 0)).all(), rule
        assert ((s * (1 - 1e-5) <= below) | (i == len(table) - 1)).all(), rule


@pytest.mark.slow
def test_gaussian_thresholds_pick_the_table_that_codes_in_fewest_bits():
    """Brute force over all 64 integer tables: for predicted scales across the whole range, the
    table the thresholds choose has the least expected code length under the discretized Gaussian
    of that scale (symbol bits from the table's frequencies, escapes as escape symbol + varint bytes)."""
    tables = GaussianConditional().derive_tables()
    cdfs, offsets, sizes, scales, thresholds = (tables[k] for k in ("cdfs", "offsets", "sizes", "scales", "thresholds"))
    assert thresholds.dtype == torch.float64 and thresholds.shape == (len(scales) - 1,)
    assert ((scales[:-1] <= thresholds) & (thresholds <= scales[1:])).all()
    support = torch.arange(-2048, 2049, dtype=torch.float64)

    def expected_bits(t, s):
        lo, size = int(offsets[t]), int(sizes[t])
        freq = (cdfs[t, 1:size + 1] - cdfs[t, :size]).double()
        inside = (support >= lo) & (support < lo + size - 1)
        bits = torch.full_like(support, float(16 - torch.log2(freq[-1])))  # the escape symbol
        bits[inside] = 16 - torch.log2(freq[(support[inside] - lo).long()])
        escaped = support[~inside].long().tolist()
        bits[~inside] += torch.tensor([8.0 * len(pack_varints(torch.tensor([v]))) for v in escaped],
                                      dtype=torch.float64)
        pmf = torch.special.ndtr((support + 0.5) / s) - torch.special.ndtr((support - 0.5) / s)
        return float((pmf * bits).sum())

    gen = torch.Generator().manual_seed(1)
    picks = torch.exp(torch.empty(40, dtype=torch.float64).uniform_(float(scales[0].log()), float(scales[-1].log()),
                                                                     generator=gen))
    chosen = torch.searchsorted(thresholds, picks)
    for s, t in zip(picks.tolist(), chosen.tolist()):
        if (thresholds - s).abs().min() < 1e-3 * s:
            continue  # at a threshold the two tables cost the same
        costs = [expected_bits(k, s) for k in range(max(t - 3, 0), min(t + 4, len(scales)))]
        assert expected_bits(t, s) <= min(costs) + 1e-12, (s, t)
        assert abs(scales[t].log() - np.log(s)) < scales[1].log() - scales[0].log()  # a neighbour of s


@pytest.mark.parametrize("kind", sorted(CODEC_MODELS))
def test_a_model_fresh_from_training_refuses_to_code_until_its_tables_are_loaded(kind):
    """No table is derived behind the caller's back: coding needs the tables that export derives
    and a weights file stores (there is no update() to forget). Once loaded, they code."""
    from tests._codec import tiny_model

    model = tiny_model(kind)
    values = torch.zeros(model.N, 2, 3, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="FactorizedDensity has no integer tables: .*export_codec"):
        model.priors[0].compress(values)
    with pytest.raises(RuntimeError, match="has no integer tables"):
        model.priors[0].decompress(b"", b"", (model.N, 2, 3))
    if kind != "factorized":
        with pytest.raises(RuntimeError, match="GaussianConditional has no integer tables"):
            model.gaussian.index(torch.ones(3))
    for entropy_model in model.entropy_models().values():
        entropy_model.load_tables(entropy_model.derive_tables())
    assert torch.equal(model.priors[0].decompress(*model.priors[0].compress(values), (model.N, 2, 3)), values)


def test_factorized_density_codes_with_tables_of_its_probabilities():
    """Tables of a density whose channels have other widths: each channel's frequencies follow its
    pmf (to the coder's 16-bit resolution), values round-trip (escapes beyond the tables too), and
    the coded size of values drawn from the density is within 2% + 8 bytes of their entropy."""
    torch.manual_seed(0)
    density = FactorizedDensity(3)
    with torch.no_grad():  # channel c about 3^c wider
        for c in range(3):
            density.matrices[0][c] += -1.1 * c
    density.load_tables(density.derive_tables())
    tables = density.tables
    support = torch.arange(-2048, 2049)
    pmf = density.pmf(support)
    for c in range(3):
        lo, size = int(tables["offsets"][c]), int(tables["sizes"][c])
        freq = (tables["cdfs"][c, 1:size] - tables["cdfs"][c, :size - 1]).double() / 2 ** 16
        assert (freq - pmf[c, lo + 2048:lo + 2048 + size - 1]).abs().max() < 2e-4, c
    assert tables["sizes"][2] > tables["sizes"][0]
    gen = torch.Generator().manual_seed(1)
    values = torch.stack([support[torch.multinomial(pmf[c].float(), 4000, replacement=True, generator=gen)]
                          for c in range(3)])
    values[:, :3] = torch.tensor([5000, -7000, 1 << 19])  # far outside every table: escaped
    stream, escapes = density.compress(values)
    assert torch.equal(density.decompress(stream, escapes, (3, 4000)), values.to(torch.int32))
    probabilities = pmf.gather(1, (values[:, 3:] + 2048)).clamp_min(1e-300)
    entropy_bytes = -torch.log2(probabilities).sum().item() / 8
    assert len(stream) <= 1.02 * entropy_bytes + 8
    with pytest.raises(CodecError, match="corrupt"):
        density.decompress(stream[:-2], escapes, (3, 4000))


def test_gaussian_conditional_codes_each_latent_with_its_table():
    """Latents drawn from Gaussians of many scales, each coded with the table its scale chooses,
    round-trip; coding them all with the narrowest table costs far more (the index matters)."""
    gaussian = GaussianConditional()
    gaussian.load_tables(gaussian.derive_tables())
    gen = torch.Generator().manual_seed(0)
    scales = torch.exp(torch.empty(5000, dtype=torch.float64).uniform_(np.log(0.2), np.log(200), generator=gen))
    values = torch.round(torch.randn(5000, dtype=torch.float64, generator=gen) * scales).to(torch.int32)
    index = gaussian.index(scales)
    assert index.dtype == torch.int32 and index.min() >= 0 and index.max() <= 63
    stream, escapes = gaussian.compress(values, index)
    assert torch.equal(gaussian.decompress(stream, escapes, index), values)
    narrow = gaussian.compress(values, torch.zeros_like(index))
    assert len(narrow[0]) + len(narrow[1]) > 2 * (len(stream) + len(escapes))


def test_entropy_models_name_missing_and_malformed_tables():
    density = FactorizedDensity(2)
    tables = density.derive_tables()
    with pytest.raises(ValueError, match=r"FactorizedDensity: the tables lack \['sizes'\]"):
        density.load_tables({k: v for k, v in tables.items() if k != "sizes"})
    with pytest.raises(ValueError, match="entropy tables: expected int32 cdfs"):
        density.load_tables({**tables, "cdfs": tables["cdfs"].long()})
    gaussian = GaussianConditional()
    tables = gaussian.derive_tables()
    with pytest.raises(ValueError, match=r"the tables lack \['scales'\]"):
        gaussian.load_tables({k: v for k, v in tables.items() if k != "scales"})
    with pytest.raises(ValueError, match="scales must be increasing positive float64"):
        gaussian.load_tables({**tables, "scales": tables["scales"].flip(0)})



def _index_cases(thresholds):
    g = torch.Generator().manual_seed(0)
    grid = torch.randint(0, 2 ** 21, (50000,), generator=g).double() * 2.0 ** -12  # the integer networks' scales
    real = torch.rand(50000, generator=g, dtype=torch.float64) * 300
    edges = torch.cat([thresholds, torch.nextafter(thresholds, torch.full_like(thresholds, -1.0)),
                       torch.nextafter(thresholds, torch.full_like(thresholds, 1e9)),
                       torch.tensor([0.0, -1.0, 1e-300, 2.0 ** -12, 1e300, float("inf"), float("-inf"),
                                     float("nan")], dtype=torch.float64)])
    return {"grid": grid, "real": real, "edges": edges}


@pytest.mark.parametrize("shape", [(-1,), (2, 5, -1)])
def test_index_is_searchsorted_of_the_thresholds(shape):
    """GaussianConditional.index (fastae._C's grid lookup on the CPU where built, else searchsorted)
    counts the thresholds below each scale exactly as searchsorted does: on the integer networks'
    grid, on arbitrary reals, at the thresholds and one ulp either side, and for 0, +-inf and NaN."""
    gaussian = GaussianConditional()
    gaussian.load_tables(gaussian.derive_tables())
    thresholds = gaussian.tables["thresholds"]
    for name, scales in _index_cases(thresholds).items():
        scales = scales[:scales.numel() // 10 * 10].reshape(shape)
        want = torch.searchsorted(thresholds, scales.contiguous()).to(torch.int32)
        got = gaussian.index(scales)
        assert got.dtype == torch.int32 and got.shape == scales.shape
        assert torch.equal(got, want), name


def test_index_of_thresholds_closer_than_its_grid_step():
    """Thresholds closer together than the lookup grid's step (2^-12) are counted by searchsorted."""
    gaussian = GaussianConditional()
    tables = gaussian.derive_tables()
    tables["thresholds"] = tables["thresholds"].clone()
    tables["thresholds"][5] = tables["thresholds"][4] + 2.0 ** -14
    gaussian.load_tables(tables)
    thresholds = gaussian.tables["thresholds"]
    scales = torch.cat([thresholds, thresholds + 2.0 ** -15, torch.rand(1000, dtype=torch.float64) * 10])
    assert torch.equal(gaussian.index(scales), torch.searchsorted(thresholds, scales).to(torch.int32))
