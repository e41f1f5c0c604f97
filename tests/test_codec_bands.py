"""Large images run in bands of rows (fastae.codec.bands) with the bytes and pixels of the whole image."""

import numpy as np
import pytest
import torch

from fastae.codec import bands
from tests._codec import photo


def test_large_images_run_in_bands_with_the_same_result(tiny_codec, monkeypatch):
    """Bands of rows (transforms and float64 entropy networks) give the bytes and pixels of the
    whole image at once: each band carries enough rows of its neighbours."""
    rgb = np.tile(photo((40, 56)), (15, 1, 1))[:590, :50].copy()  # 590 rows: several bands below
    whole = tiny_codec.compress(rgb), tiny_codec.decompress(tiny_codec.compress(rgb)), tiny_codec.reconstruct(rgb)
    monkeypatch.setattr(bands, "BAND_PIXELS", 16 * 16 * 8)
    monkeypatch.setattr(bands, "ENTROPY_POSITIONS", 8)
    latents = tiny_codec.encode(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    assert len(bands.image_bands(*latents.values.shape[2:], tiny_codec.model.latent_stride)) > 2
    banded = tiny_codec.compress(rgb)
    assert banded == whole[0]
    assert np.array_equal(tiny_codec.decompress(banded), whole[1]) and np.array_equal(tiny_codec.reconstruct(rgb), whole[2])
    if latents.side is not None:  # the float64 entropy networks were banded too
        counts, by_rows = [], bands.by_rows

        def spy(fn, inputs, *args, **kwargs):
            calls = []
            out = by_rows(lambda *x: calls.append(1) or fn(*x), inputs, *args, **kwargs)
            counts.append(len(calls))
            return out

        monkeypatch.setattr(bands, "by_rows", spy)
        with torch.inference_mode():
            tiny_codec.layout.parameters(latents.side, lambda m, s: latents.values)
        assert min(counts) > 1


@pytest.mark.parametrize("rows, width", [(1, 1), (80, 100), (81, 100), (129, 7), (600, 200)])
def test_image_bands_cover_the_rows_once_and_hold_about_band_pixels(rows, width):
    """One band up to 1.5 x BAND_PIXELS pixels; past it, consecutive bands of at most BAND_PIXELS
    pixels (at least 2 x HALO rows) that cover every latent row exactly once."""
    ls = 16
    got = bands.image_bands(rows, width, ls)
    assert got[0][0] == 0 and got[-1][1] == rows and all(a[1] == b[0] for a, b in zip(got, got[1:]))
    if rows * width * ls * ls <= 1.5 * bands.BAND_PIXELS:
        assert got == [(0, rows)]
    else:
        step = max(2 * bands.HALO, bands.BAND_PIXELS // (width * ls * ls))
        assert len(got) > 1 and all(b - a == step for a, b in got[:-1]) and 0 < got[-1][1] - got[-1][0] <= step


def test_by_rows_puts_the_bands_of_a_row_local_function_together():
    """A function that reads at most ``halo - 1`` rows either side (a 3-row box filter, halo 2), run
    by bands, gives the rows it gives on the whole grid; inputs with 4 rows per grid row and an
    output with 2 are cut and put together at their scale."""
    x = torch.randn(2, 3, 40, 5, dtype=torch.float64)

    def box(t):  # row i: the sum of rows i-1, i and i+1 (zero outside)
        padded = torch.nn.functional.pad(t, (0, 0, 1, 1))
        return padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]

    fn = lambda t: box(t)[:, :, ::2]  # noqa: E731  4 input rows per grid row -> 2 output rows
    parts = [(0, 3), (3, 6), (6, 10)]
    got = bands.by_rows(fn, (x,), parts, halo=2, scale_in=4, scale_out=2)
    assert torch.equal(got, fn(x))
