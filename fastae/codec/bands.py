"""Bands of rows: large images run the codec's networks band by band, so that memory stays near
what one band needs instead of growing with the image.

The analysis and synthesis transforms run on bands of about BAND_PIXELS pixels (about 400 bytes
per pixel of a band), each computed with HALO latent rows of its neighbours on either side, which
covers the transforms' reach (under 2 latent rows: four 5x5 layers of stride 2), so a band's rows
are those of the whole image up to float rounding. The float64 entropy networks
(fastae.codec.parameters) run on bands of about ENTROPY_POSITIONS latent positions: float64
convolutions on the CPU unfold their input (im2col), and a 5x5 convolution of M=160 channels holds
32 kB per latent position, 125 bytes per pixel of the image.

The band layouts decide nothing about the file: bytes and pixels are those of the whole image
at once.
"""

BAND_PIXELS = 1 << 21
HALO = 3
ENTROPY_POSITIONS = 1 << 13


def image_bands(rows: int, width: int, latent_stride: int) -> list:
    """(first, end) latent rows of the bands of a latent grid ``rows`` x ``width``: one band unless
    the image has more than 1.5 x BAND_PIXELS pixels."""
    ls = latent_stride
    if rows * width * ls * ls <= 1.5 * BAND_PIXELS:
        return [(0, rows)]
    step = max(2 * HALO, BAND_PIXELS // (width * ls * ls))
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def entropy_bands(grid, halo: int, positions: int) -> list:
    """The bands of an entropy network's input ``grid`` [B, C, R, W]: about ``positions`` of its
    positions (the batch counted) each; one band when they would be barely fewer."""
    rows, width = grid.shape[2], grid.shape[0] * grid.shape[3]
    step = max(2 * halo, positions // max(width, 1))
    if rows <= step + 2 * halo:
        return [(0, rows)]
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def by_rows(fn, inputs, bands, halo: int, scale_in: int = 1, scale_out: int = 1):
    """``fn(*inputs)`` computed band by band and the bands' rows put together. ``bands``: (first,
    end) rows of a grid, each computed with ``halo`` rows of its neighbours either side; an input
    has ``scale_in`` rows per grid row (``None`` passes through), the output ``scale_out``. ``fn``
    must map rows to rows and see fewer than ``halo`` grid rows either side of each output row."""
    if len(bands) == 1:
        return fn(*inputs)
    rows = bands[-1][1]
    out = None
    for a, b in bands:
        lo, hi = max(a - halo, 0), min(b + halo, rows)
        part = fn(*(None if t is None else t[:, :, lo * scale_in:hi * scale_in] for t in inputs))
        part = part[:, :, (a - lo) * scale_out:(b - lo) * scale_out]
        if out is None:
            out = part.new_empty((part.shape[0], part.shape[1], rows * scale_out, part.shape[3]))
        out[:, :, a * scale_out:b * scale_out] = part
    return out
