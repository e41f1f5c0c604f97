"""The ``codec`` suite: images/s and MB/s (raw RGB) of the image codec's batched encode / decode
transforms and of whole-file compress / decompress (entropy coding included), per batch size; the
rANS entropy coder in symbols/s, beside constriction's ANS coder when it is installed."""

import torch
import torch.nn.functional as F

from fastae.bench.cases import Case, Prepared, Target

KODAK_SIZE = (512, 768)  # Kodak images, landscape (portrait ones are transposed)


def _synthetic_images(n, height, width, seed=0):
    """Smooth random RGB images, uint8 [n, 3, H, W]: low-frequency colour fields plus a little noise."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    low = torch.rand(n, 3, max(height // 32, 1), max(width // 32, 1), generator=g)
    x = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    x = x + 0.03 * torch.randn(n, 3, height, width, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _folder_images(folder, n, height, width):
    """n images from ``folder`` (cycled), portrait ones transposed, centre-cropped to H x W, uint8 [n, 3, H, W]."""
    import numpy as np

    from fastae.data import list_images, read_rgb

    paths = list_images(folder)
    if not paths:
        raise FileNotFoundError(f"--images {folder}: no images found")
    out = []
    for i in range(n):
        a = read_rgb(paths[i % len(paths)])
        if a.shape[0] > a.shape[1]:
            a = a.transpose(1, 0, 2)
        if a.shape[0] < height or a.shape[1] < width:
            raise ValueError(f"--images: {paths[i % len(paths)]} is smaller than {height} x {width}")
        top, left = (a.shape[0] - height) // 2, (a.shape[1] - width) // 2
        out.append(torch.from_numpy(np.ascontiguousarray(a[top:top + height, left:left + width])).permute(2, 0, 1))
    return torch.stack(out)


def _load_bench_codec(device, weights, notes):
    """The codec to measure: ``weights`` if given, else the shipped default model; None (with a
    note) when there is none."""
    from fastae.codec import DEFAULT_MODEL
    from fastae.codec.api import load_codec
    from fastae.codec.model_file import shipped_models

    if weights is None:
        if DEFAULT_MODEL not in shipped_models():
            notes.add(f"codec: no shipped codec model ({DEFAULT_MODEL} is not in fastae/codec/weights/): the "
                      "image codec rows are skipped; the entropy coder is still measured (--codec-weights FILE "
                      "measures a codec file written by `fastae train codec`)")
            return None
        codec = load_codec(quality=1, device=device)
    else:
        codec = load_codec(quality=1, weights=weights, device=device)
    return codec.with_quality(min(4, codec.model.qualities))


def codec_cases(device, quick, weights, images, notes) -> list:
    device = torch.device(device)
    cuda = device.type == "cuda"
    cases = _entropy_coder_cases(notes)
    codec = _load_bench_codec(device, weights, notes)
    if codec is None:
        return cases
    height, width = KODAK_SIZE if (cuda or not quick) else (256, 384)
    runs = [(device, [1, 8] if quick else [1, 8, 32])] if cuda else [(device, [1, 2] if quick else [1, 4])]
    if cuda and not quick:
        runs.append((torch.device("cpu"), [1]))
    source = f"images from {images}" if images else "synthetic smooth images"
    notes.add(f"codec: model {codec.model_id} (hash {codec.hash.hex()}), quality {codec.quality}, {source}; "
              "MB/s counts raw RGB bytes (H x W x 3) per second; compress = encode + entropy coding to .fae bytes, "
              "decompress = .fae bytes to uint8 images on the CPU")
    references = [name for name in CLASSIC if _reference_missing(name) is None]
    if references:
        notes.add("codec: the classic codecs of one image (batch 1) through Pillow in the same run: "
                  + "; ".join(f"{name} {CLASSIC[name]}" for name in references))
    for name in CLASSIC:
        if name not in references:
            notes.add(f"codec: no {name} rows: {_reference_missing(name)}")
    for dev, batches in runs:
        dev_codec = codec if dev == device else _load_bench_codec(dev, weights, notes)
        codecs = {f"fastae-{dev.type}": dev_codec}  # the default precision (bfloat16 where native)
        if dev_codec.precision != "float32":  # and the exact float32 path beside it
            codecs[f"fastae-{dev.type}-float32"] = dev_codec.with_precision("float32")
        for batch in batches:
            for op in ("compress", "decompress", "encode", "decode"):
                target = None
                if dev.type == "cuda" and batch > 1 and op in ("encode", "decode") and (height, width) == KODAK_SIZE:
                    target = Target("≥500 images/s", lambda row: row["rates"]["images/s"] >= 500)
                classic = references if batch == 1 and op in ("compress", "decompress") and dev == device else []
                cases.append(Case(
                    "codec", f"codec {op} batch {batch} {height}x{width} q{codec.quality}", (*codecs, *classic),
                    _codec_setup(codecs, op, batch, height, width, images, classic),
                    rates={"images/s": batch, "MB/s": batch * height * width * 3 / 1e6}, target=target,
                    device=dev))
    return cases


# The classic codecs timed beside fastae (issue 23's settings): Pillow's save arguments of each.
CLASSIC = {"webp": {"quality": 75, "method": 6}, "avif": {"quality": 60, "speed": 6, "subsampling": "4:4:4"},
           "jxl": {"quality": 75, "effort": 7}}
_FORMATS = {"webp": "WEBP", "avif": "AVIF", "jxl": "JXL"}


def _reference_missing(name):
    """None when Pillow can write and read ``name`` here, else why not (fastae.codec.eval's check)."""
    from fastae.codec.eval import _available

    return _available(name)


def _classic_step(name, op, rgb):
    """(step, bits per pixel) of one image through Pillow."""
    import io

    from PIL import Image

    def encode():
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=_FORMATS[name], **CLASSIC[name])
        return buf.getvalue()

    data = encode()

    def decode():
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    return (encode if op == "compress" else decode), 8 * len(data) / (rgb.shape[0] * rgb.shape[1])


def _codec_setup(codecs, op, batch, height, width, images, classic=()):
    """Each fastae implementation (``codecs``: impl -> Codec) and each classic codec of ``classic``
    on the same images."""
    def setup():
        import numpy as np

        x = (_folder_images(images, batch, height, width) if images
             else _synthetic_images(batch, height, width))
        impls, extra = {}, {}
        for impl, codec in codecs.items():
            impls[impl], bpp = _fastae_step(codec, op, x)
            if bpp is not None:
                extra[impl] = {"bpp": bpp}
        rgb = np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())
        for name in classic:
            impls[name], bpp = _classic_step(name, op, rgb)
            extra[name] = {"bpp": bpp}
        return Prepared(impls, extra=extra)

    return setup


def _fastae_step(codec, op, x):
    """(step or why it cannot run, bits per pixel of the files or None) of one op on the images x."""
    import numpy as np

    height, width = x.shape[-2:]
    files = codec.compress_batch(x) if op in ("compress", "decompress") else None
    bpp = None if files is None else 8 * sum(map(len, files)) / (len(files) * height * width)
    batch = x.shape[0]
    if op == "compress":
        if batch == 1:
            rgb = np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())
            return (lambda: codec.compress(rgb)), bpp  # the public API, image by image
        if files[0] != codec.compress(np.ascontiguousarray(x[0].permute(1, 2, 0).numpy())):
            return "Codec.compress_batch does not match Codec.compress", bpp
        return (lambda: codec.compress_batch(x)), bpp
    if op == "decompress":
        if batch == 1:
            return (lambda: codec.decompress(files[0])), bpp
        mine = codec.decompress_batch(files[:1])[0].cpu().permute(1, 2, 0).numpy()
        if not np.array_equal(mine, codec.decompress(files[0])):
            return "Codec.decompress_batch does not match Codec.decompress", bpp
        return (lambda: codec.decompress_batch(files).cpu()), bpp
    if op == "encode":
        xd = x.to(codec.device)
        return (lambda: codec.encode(xd)), None
    latents = codec.encode(x.to(codec.device))
    return (lambda: codec.decode(latents)), None


# ---------------------------------------------------------------------------------------------- entropy coder

CODER_CHANNELS, CODER_LENGTH = 160, 48 * 32  # one Kodak-sized latent


def coder_data():
    """The entropy coder benchmark's input: 160 Laplacian-like tables and one Kodak-sized latent of
    symbols: (symbols int32 [160, 1536], cdfs [160, K], table index int32 [160])."""
    import numpy as np

    from fastae.codec.tables import tables_from_pmf

    rng = np.random.default_rng(0)
    support = np.arange(-300, 301)
    scales = np.geomspace(0.3, 20, CODER_CHANNELS)
    pmf = np.exp(-np.abs(support)[None] / scales[:, None])
    cdfs, _, sizes = tables_from_pmf(pmf, support)
    symbols = np.empty((CODER_CHANNELS, CODER_LENGTH), np.int32)
    for c in range(CODER_CHANNELS):
        p = np.diff(cdfs[c])[:sizes[c]] / 65536
        symbols[c] = rng.choice(sizes[c], CODER_LENGTH, p=p / p.sum())
    return symbols, cdfs, np.arange(CODER_CHANNELS, dtype=np.int32)


def _constriction():
    try:
        import constriction
    except ImportError:
        return None
    return constriction


def _entropy_coder_cases(notes):
    """Per channel (a row of 1,536 symbols per table, as a factorized model codes) and per latent
    (245,760 rows of one symbol, each with its own table index, as a hyperprior model codes)."""
    from fastae.codec import rans

    native = rans.native_available()
    impl = "fastae-rans" if native else "python-rans"
    if not native:
        notes.add("codec: fastae._C is not loaded; the entropy coder rows are the pure-Python rANS")
    per_channel = (impl, "constriction") if _constriction() else (impl,)
    if len(per_channel) == 1:
        notes.add("codec: constriction is not installed (pip install 'fastae[bench]'): no constriction rows")
    n = CODER_CHANNELS * CODER_LENGTH
    cases = []
    for layout, impls in (("per-channel", per_channel), ("per-latent", (impl,))):
        shape = f"{CODER_CHANNELS}x{CODER_LENGTH}" if layout == "per-channel" else f"{n}x1"
        for op in ("encode", "decode"):
            cases.append(Case("codec", f"entropy coder {op} {shape} symbols", impls,
                              _coder_setup(op, layout, impl), rates={"Msymbols/s": n / 1e6}))
    return cases


def _coder_setup(op, layout, impl):
    def setup():
        import numpy as np

        from fastae.codec import rans

        symbols, cdfs, index = coder_data()
        length = CODER_LENGTH
        if layout == "per-latent":
            symbols, index, length = symbols.reshape(-1, 1), np.repeat(index, CODER_LENGTH).astype(np.int32), 1
        stream = rans.encode(symbols, cdfs, index)
        impls = {}
        if np.array_equal(np.asarray(rans.decode(stream, cdfs, index, length)), symbols):
            impls[impl] = ((lambda: rans.encode(symbols, cdfs, index)) if op == "encode"
                           else (lambda: rans.decode(stream, cdfs, index, length)))
        else:
            impls[impl] = "rans.decode does not give back the encoded symbols"
        extra = {impl: {"bits_per_symbol": len(stream) * 8 / symbols.size}}
        if layout == "per-channel" and _constriction():
            impls["constriction"], extra["constriction"] = _constriction_step(op, symbols, cdfs)
        return Prepared(impls, extra=extra)

    return setup


def _constriction_step(op, symbols, cdfs):
    """constriction's stack ANS coder on the same 16-bit tables, one categorical model per channel:
    (step or the reason it cannot run, {"bits_per_symbol": …})."""
    import numpy as np

    constriction = _constriction()
    sizes = (cdfs < 65536).sum(1)  # a table's size: its entries below the total
    models = [constriction.stream.model.Categorical(np.diff(cdfs[c])[:sizes[c]] / 65536.0, perfect=False)
              for c in range(len(symbols))]

    def encode():
        coder = constriction.stream.stack.AnsCoder()
        for c in range(len(symbols) - 1, -1, -1):
            coder.encode_reverse(symbols[c], models[c])
        return coder.get_compressed()

    def decode():
        coder = constriction.stream.stack.AnsCoder(compressed)
        return [coder.decode(models[c], symbols.shape[1]) for c in range(len(symbols))]

    compressed = encode()
    extra = {"bits_per_symbol": compressed.nbytes * 8 / symbols.size}
    if not all(np.array_equal(d, s) for d, s in zip(decode(), symbols)):
        return "constriction does not decode the symbols it encoded", extra
    return (encode if op == "encode" else decode), extra
