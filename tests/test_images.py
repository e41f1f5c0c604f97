"""fastae.data's image reader: which files (list_images), their pixels (read_rgb: EXIF orientation,
ICC to sRGB, modes), and that training, compression and eval read the same files the same way."""

import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fastae.codec.folder import compress_folder
from fastae.codec.image import to_rgb_array
from fastae.data import list_images, load_image_folder, open_image, read_rgb
from fastae.train.codec import load_photos

# How viewers show the stored pixels for each EXIF orientation (the TIFF/EXIF definitions: e.g. 6,
# "row 0 is the visual right side, column 0 the visual top", is a quarter turn clockwise).
_ORIENTED = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
             7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1)}


def _pixels(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _with_orientation(path, pixels, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


# ---------------------------------------------------------------------------------------------- which files


def test_list_images_is_what_compress_takes(tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / ".hidden-folder").mkdir()
    for rel in ("b.jpg", "A.PNG", "sub/c.webp", "sub/deeper/d.tif", ".hidden.png", ".hidden-folder/e.png"):
        Image.fromarray(_pixels(4, 5)).save(src / rel)
    (src / "notes.txt").write_text("not an image")
    (src / "photo.fae").write_bytes(b"a compressed file: never an input")
    os.symlink(src / "sub", src / "linked")  # entered once, under its first name in sorted order ("linked")
    os.symlink(src, src / "sub" / "loop")  # a link back up: not entered again
    expected = [src / "A.PNG", src / "b.jpg", src / "linked" / "c.webp", src / "linked" / "deeper" / "d.tif"]
    assert list_images(src) == expected

    class Recorder:
        def compress(self, path):
            return b"fae"

    summary = compress_folder(src, tmp_path / "dst", Recorder, progress=False)
    assert summary.ok and summary.files == 4
    written = sorted(p.relative_to(tmp_path / "dst") for p in (tmp_path / "dst").rglob("*.fae"))
    assert written == sorted(p.relative_to(src).with_suffix(".fae") for p in expected)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        list_images(src / "notes.txt")


# ---------------------------------------------------------------------------------------------- one image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    raw = _pixels(6, 10, orientation)
    path = _with_orientation(tmp_path / "photo.png", raw, orientation)
    want = _ORIENTED[orientation](raw)
    assert np.array_equal(read_rgb(path), want)
    assert np.array_equal(to_rgb_array(path)[0], want)  # the codec's path input: the same reader
    # training reads it upright too: the folder loader (its size check sees the upright size) and the codec trainer
    assert np.array_equal(load_image_folder(tmp_path)[0].permute(1, 2, 0).numpy(), want)
    assert np.array_equal(load_photos(tmp_path, downscale=1, min_side=1)[0].permute(1, 2, 0).numpy(), want)


def test_damaged_exif_keeps_the_pixels_and_a_tag_beside_a_damaged_block_still_turns(tmp_path):
    raw = _pixels(24, 40)
    Image.fromarray(raw).save(tmp_path / "damaged.png", exif=b"Exif\x00\x00garbage")
    with Image.open(tmp_path / "damaged.png") as img:
        with pytest.raises(SyntaxError):
            img.getexif()
    assert np.array_equal(read_rgb(tmp_path / "damaged.png"), raw)
    exif = Image.Exif()
    exif[0x0112], exif[0x8825] = 6, {1: "N", 2: (1.0, 2.0, 3.0)}
    block = bytearray(exif.tobytes())
    at = block.index(bytes.fromhex("00020001"))
    block[at:at + 2] = b"\x00\xbb"  # the GPS block now claims 187 entries
    Image.fromarray(raw).save(tmp_path / "gps.jpg", exif=bytes(block), quality=95)
    with Image.open(tmp_path / "gps.jpg") as img:
        stored = np.asarray(img.convert("RGB"))
    assert np.array_equal(read_rgb(tmp_path / "gps.jpg"), np.rot90(stored, -1))


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
    from PIL import ImageCms

    raw = _pixels(12, 20)
    Image.fromarray(raw).save(tmp_path / "linear.png", icc_profile=_icc_profile("Linear RGB (fastae test)"))
    got = read_rgb(tmp_path / "linear.png")
    assert np.abs(got - _srgb_encode(raw)).max() <= 1.0  # LittleCMS's 8-bit rounding
    assert np.abs(got.astype(int) - raw).max() > 50  # not the stored pixels
    # The name is not trusted: a linear profile called sRGB is converted too.
    Image.fromarray(raw).save(tmp_path / "named.png", icc_profile=_icc_profile("sRGB linear"))
    assert np.array_equal(read_rgb(tmp_path / "named.png"), got)
    # sRGB itself (its pixels kept exactly), a damaged profile, and a grey image's are left alone.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, _icc_profile("sRGB-like", gamma=2.2), b"not a profile"):
        Image.fromarray(raw).save(tmp_path / "kept.png", icc_profile=icc)
        kept = read_rgb(tmp_path / "kept.png")
        if icc == srgb or icc == b"not a profile":
            assert np.array_equal(kept, raw)
        else:  # gamma 2.2 is close to sRGB's curve but not within a level everywhere: converted
            assert 0 < np.abs(kept.astype(int) - raw).max() <= 12
    grey = raw[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png", icc_profile=_icc_profile("Linear RGB (fastae test)"))
    assert np.array_equal(read_rgb(tmp_path / "grey.png")[:, :, 0], grey)


def _mode_files(folder):
    """One small opaque file of each mode Pillow writes, and what read_rgb must give for it."""
    rgb = _pixels(6, 9)
    grey = rgb[:, :, 0]
    deep = (np.arange(54, dtype=np.uint16).reshape(6, 9) * 1213)
    files = {
        "rgb.png": (Image.fromarray(rgb), rgb),
        "grey.png": (Image.fromarray(grey), np.repeat(grey[:, :, None], 3, 2)),
        "bits.png": (Image.fromarray(grey > 127), np.repeat(np.where(grey > 127, 255, 0)[:, :, None], 3, 2)),
        "deep16.png": (Image.fromarray(deep), np.repeat(np.round(deep / 257)[:, :, None], 3, 2)),
        "opaque-rgba.png": (Image.fromarray(np.dstack([rgb, np.full_like(grey, 255)])), rgb),
        "opaque-la.png": (Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA"),
                          np.repeat(grey[:, :, None], 3, 2)),
        "palette.gif": (Image.fromarray(rgb).quantize(16), None),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), None),
        "sideways-linear.png": (Image.fromarray(rgb), None),
    }
    for name, (img, _) in files.items():
        extra = {}
        if name.startswith("sideways"):
            exif = Image.Exif()
            exif[0x0112] = 8
            extra = {"exif": exif, "icc_profile": _icc_profile("Linear RGB (fastae test)")}
        img.save(folder / name, **extra)
    return {name: want for name, (_, want) in files.items()}


def test_read_rgb_gives_the_pixels_the_codec_codes_for_every_opaque_mode(tmp_path):
    """Training (read_rgb) and compression (the codec's path input) see the same pixels of a file."""
    wanted = _mode_files(tmp_path)
    assert [p.name for p in list_images(tmp_path)] == sorted(wanted)
    for path in list_images(tmp_path):
        got = read_rgb(path)
        assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3, path.name
        assert np.array_equal(got, to_rgb_array(path)[0]), path.name
        if wanted[path.name] is not None:
            assert np.array_equal(got, wanted[path.name]), path.name
    upright_linear = Image.fromarray(np.rot90(np.asarray(Image.open(tmp_path / "rgb.png")), 1).copy())
    upright_linear.save(tmp_path / "linear.png", icc_profile=_icc_profile("Linear RGB (fastae test)"))
    converted = read_rgb(tmp_path / "linear.png")  # turned (EXIF 8: a quarter turn anticlockwise) and converted
    assert np.array_equal(read_rgb(tmp_path / "sideways-linear.png"), converted)
    assert np.abs(converted.astype(int) - np.asarray(upright_linear)).max() > 50
    with Image.open(tmp_path / "palette.gif") as img:
        assert np.array_equal(read_rgb(tmp_path / "palette.gif"), np.asarray(img.convert("RGB")))
    folder = load_image_folder(tmp_path, size=(6, 9), crop="resize")  # every file, as read_rgb reads it
    assert len(folder) == len(wanted) + 1  # linear.png too: none skipped


def test_transparency_is_dropped_for_training_and_refused_by_the_codec(tmp_path):
    rgba = np.dstack([_pixels(4, 4), np.full((4, 4), 9, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "see-through.png")
    assert np.array_equal(read_rgb(tmp_path / "see-through.png"), rgba[:, :, :3])
    with pytest.raises(ValueError, match="transparency"):
        to_rgb_array(tmp_path / "see-through.png")


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "fake.png").write_text("not a PNG")
    with pytest.raises(ValueError, match=r"fake.png: not an image fastae can read"):
        read_rgb(tmp_path / "fake.png")
    Image.fromarray(_pixels(64, 64)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:300])
    with pytest.raises(OSError):
        read_rgb(tmp_path / "cut.png")
    Image.fromarray(np.zeros((2, 3), np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ValueError, match=r"float.tif: mode 'F'"):
        read_rgb(tmp_path / "float.tif")
    img = open_image(tmp_path / "whole.png")  # loaded: usable after its file is closed
    assert img.size == (64, 64) and np.asarray(img).shape == (64, 64, 3)


def test_train_and_compress_see_the_same_images_of_a_folder(tmp_path):
    """`fastae train conv --data photos/` and `fastae compress photos/` read the same files, upright."""
    raw = _pixels(8, 12)
    _with_orientation(tmp_path / "a-sideways.jpg", raw, 6)
    Image.fromarray(raw).save(tmp_path / "b-upright.png")
    Image.fromarray(raw).save(tmp_path / ".c-hidden.png")
    (tmp_path / "notes.txt").write_text("about the photos")
    x = load_image_folder(tmp_path, size=8)
    codec_inputs = [to_rgb_array(p)[0] for p in list_images(tmp_path)]
    assert len(x) == len(codec_inputs) == 2
    assert codec_inputs[0].shape == (12, 8, 3) and codec_inputs[1].shape == (8, 12, 3)
    photos = load_photos(tmp_path, downscale=1, min_side=1)
    assert all(torch.equal(p, torch.from_numpy(c).permute(2, 0, 1)) for p, c in zip(photos, codec_inputs))
