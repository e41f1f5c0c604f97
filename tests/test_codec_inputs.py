"""The input policy (fastae.codec.image): EXIF orientation, ICC profiles, modes, bit depth, alpha."""

import struct

import numpy as np
import pytest
from PIL import Image

from fastae.codec.image import to_rgb_array
from tests._codec import photo


# How viewers show the stored pixels for each EXIF orientation (the TIFF/EXIF definitions: e.g. 6,
# "row 0 is the visual right side, column 0 the visual top", is a quarter turn clockwise).
_ORIENTED = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
             7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def _with_orientation(path, pixels, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    raw = np.random.default_rng(orientation).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    path = _with_orientation(tmp_path / "photo.png", raw, orientation)
    want = _ORIENTED[orientation](raw)
    assert np.array_equal(to_rgb_array(path)[0], want)
    with Image.open(path) as img:  # a PIL image is taken as its pixels are: its tag may be stale
        assert np.array_equal(to_rgb_array(img)[0], raw)
    assert np.array_equal(to_rgb_array(raw)[0], raw)  # arrays too


def test_codec_codes_a_sideways_photo_upright(tiny_codec, tmp_path):
    raw = photo((24, 40))
    path = _with_orientation(tmp_path / "sideways.png", raw, 6)
    data = tiny_codec.compress(path)
    assert data == tiny_codec.compress(np.rot90(raw, -1).copy())
    assert tiny_codec.decompress(data).shape == (40, 24, 3)
    Image.fromarray(raw).save(tmp_path / "damaged.png", exif=b"Exif\x00\x00garbage")
    with Image.open(tmp_path / "damaged.png") as img:
        with pytest.raises(SyntaxError):
            img.getexif()
    assert np.array_equal(to_rgb_array(tmp_path / "damaged.png")[0], raw)  # damaged EXIF: pixels as stored
    # an orientation tag beside a damaged GPS block (which Pillow cannot write back): still turned
    exif = Image.Exif()
    exif[0x0112], exif[0x8825] = 6, {1: "N", 2: (1.0, 2.0, 3.0)}
    block = bytearray(exif.tobytes())
    at = block.index(bytes.fromhex("00020001"))
    block[at:at + 2] = b"\x00\xbb"  # the GPS block now claims 187 entries
    Image.fromarray(raw).save(tmp_path / "gps.jpg", exif=bytes(block), quality=95)
    with Image.open(tmp_path / "gps.jpg") as img:
        stored = np.asarray(img.convert("RGB"))
    assert np.array_equal(to_rgb_array(tmp_path / "gps.jpg")[0], np.rot90(stored, -1))


def _s15(v):
    return struct.pack(">i", round(v * 65536))


def _xyz(x, y, z):
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def _icc_profile(description, gamma=1.0):
    """A minimal ICC v2 RGB display profile: sRGB's primaries (D50-adapted) with a pure-power
    tone curve of ``gamma``, so gamma 1 is linear-light sRGB."""
    text = description.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 78
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256))
    d50 = _xyz(0.9642, 1.0, 0.8249)
    tags = [(b"desc", desc), (b"wtpt", d50), (b"rXYZ", _xyz(0.4361, 0.2225, 0.0139)),
            (b"gXYZ", _xyz(0.3851, 0.7169, 0.0971)), (b"bXYZ", _xyz(0.1431, 0.0606, 0.7141)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"\0" * 4 + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 28 + d50[8:] + b"\0" * 48)
    return header + struct.pack(">I", len(tags)) + table + data


def _srgb_encode(v):
    v = v / 255
    return 255 * np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def test_icc_profiles_are_converted_to_srgb(tmp_path):
    pytest.importorskip("PIL.ImageCms")
    raw = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(raw).save(tmp_path / "linear.png", icc_profile=_icc_profile("Linear RGB (fastae test)"))
    got = to_rgb_array(tmp_path / "linear.png")[0]
    assert np.abs(got - _srgb_encode(raw)).max() <= 1.0  # LittleCMS's 8-bit rounding
    assert np.abs(got.astype(int) - raw).max() > 50  # not the stored pixels
    in_memory = Image.fromarray(raw)
    in_memory.info["icc_profile"] = _icc_profile("Linear RGB (fastae test)")
    assert np.array_equal(to_rgb_array(in_memory)[0], got)  # PIL images as files
    # The name is not trusted: a linear profile called sRGB is converted too.
    Image.fromarray(raw).save(tmp_path / "named.png", icc_profile=_icc_profile("sRGB linear"))
    assert np.array_equal(to_rgb_array(tmp_path / "named.png")[0], got)
    # sRGB itself (its pixels kept exactly), a damaged profile, and a grey image's are left alone.
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, _icc_profile("sRGB-like", gamma=2.2), b"not a profile"):
        Image.fromarray(raw).save(tmp_path / "kept.png", icc_profile=icc)
        kept = to_rgb_array(tmp_path / "kept.png")[0]
        if icc == srgb or icc == b"not a profile":
            assert np.array_equal(kept, raw)
        else:  # gamma 2.2 is close to sRGB's curve but not within a level everywhere: converted
            assert 0 < np.abs(kept.astype(int) - raw).max() <= 12
    grey = raw[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png", icc_profile=_icc_profile("Linear RGB (fastae test)"))
    assert np.array_equal(to_rgb_array(tmp_path / "grey.png")[0][:, :, 0], grey)


def test_unusual_pillow_inputs_and_decompress_arguments(tiny_codec):
    eight_bit = np.arange(200, dtype=np.int32).reshape(10, 20)
    rgb, channels, depth = to_rgb_array(Image.fromarray(eight_bit))  # mode "I" holding 8-bit values
    assert (channels, depth) == (1, 8) and np.array_equal(rgb[:, :, 0], eight_bit)
    deep = Image.fromarray((eight_bit * 300).astype(np.int32))
    assert to_rgb_array(deep)[2] == 16 and to_rgb_array(deep)[0][0, 1, 0] == round(300 / 257)
    premultiplied = Image.new("RGBA", (4, 3), (10, 20, 30, 255)).convert("RGBa")
    assert to_rgb_array(premultiplied)[0][0, 0].tolist() == [10, 20, 30]
    with pytest.raises(ValueError, match="transparency"):
        to_rgb_array(Image.new("RGBA", (4, 3), (10, 20, 30, 9)).convert("RGBa"))
    with pytest.raises(ValueError, match="at least 1 x 1"):
        tiny_codec.compress(Image.new("RGB", (0, 5)))
    data = tiny_codec.compress(photo((16, 16)))
    with pytest.raises(TypeError, match="a list of .fae files"):
        tiny_codec.decompress_batch(data)
    for bad in (None, 0, 2.5):
        with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
            tiny_codec.decompress(data, max_pixels=bad)
