"""Image files: the embedded photographs every app trains and tests on by default, folders, 8-bit RGB loading.

The embedded default data are real photographs shipped inside the scikit-image wheel (no data set can be
downloaded here), split the same way for every app: test = astronaut, chelsea, coffee; validation =
rocket; training = the other natural photographs.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from apputils.execution_env import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm")
EMBEDDED_TEST = ("astronaut.png", "chelsea.png", "coffee.png")
EMBEDDED_VALIDATION = ("rocket.jpg",)
EMBEDDED_TRAIN = ("motorcycle_left.png", "motorcycle_right.png", "ihc.png", "hubble_deep_field.jpg",
                  "camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png",
                  "cell.png", "page.png", "text.png")
SPLITS = ("train", "validation", "test")


class DataError(UserError, ValueError):
    """A data folder or image that cannot be used; the message says which and how to fix it."""


def embedded_dir() -> Path:
    """The folder of sample photographs inside the installed scikit-image package."""
    return Path(str(resources.files("skimage") / "data"))


def embedded_paths(split: str) -> list[Path]:
    """The embedded photographs of `split` ('train', 'validation' or 'test')."""
    names = {"train": EMBEDDED_TRAIN, "validation": EMBEDDED_VALIDATION, "test": EMBEDDED_TEST}[split]
    folder = embedded_dir()
    paths = [folder / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"the embedded sample images {missing} are missing from {folder}; reinstall "
                        f"scikit-image (pip install --force-reinstall 'scikit-image>=0.24') or pass a data folder")
    return paths


def images_in(folder: Path, expected: str) -> list[Path]:
    """The image files directly in `folder`, sorted; DataError (ending with `expected`) when there are none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{folder}'; {expected}")
    return files


def check_dir(directory: str | Path, expected: str) -> Path:
    """`directory` as a Path; DataError (ending with `expected`) when it is not an existing folder."""
    folder = Path(directory).expanduser()
    if not folder.is_dir():
        raise DataError(f"data folder '{directory}' does not exist or is not a folder; {expected}")
    return folder


def load_rgb(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grey and RGBA images are converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image '{path}': {err}; remove or replace the file") from err
