"""Write the "other photographs" evaluation set: real colour photographs that ship inside
scikit-image and scikit-learn (so they install offline), none of them in fastae's training photos
or in Kodak, center-cropped to at most 768x768, as PNG.

    pip install scikit-image scikit-learn
    python experiments/other_photos.py /tmp/other-photos
    fastae eval --data /tmp/other-photos --references webp jpeg avif heic jxl --output other.json

11 images: skimage's astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry,
retina, rocket, stereo_motorcycle (left and right views), and sklearn's china and flower.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 768


def photos() -> dict:
    import skimage.data as d
    from sklearn.datasets import load_sample_images

    out = {name: getattr(d, name)() for name in ("astronaut", "chelsea", "coffee", "hubble_deep_field",
                                                  "immunohistochemistry", "retina", "rocket")}
    out["motorcycle_left"], out["motorcycle_right"], _ = d.stereo_motorcycle()
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images):
        out[Path(name).stem] = image
    return out


def center_crop(a: np.ndarray, side: int = MAX_SIDE) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return a[top:top + side, left:left + side, :3]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit(f"usage: python {Path(__file__).name} OUT_DIR")
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, image in sorted(photos().items()):
        Image.fromarray(np.ascontiguousarray(center_crop(image))).save(out / f"{name}.png")
        print(out / f"{name}.png")


if __name__ == "__main__":
    main()
