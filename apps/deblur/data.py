"""Deblurring data: (blurred, sharp) RGB pairs as 3xHxW tensors of 8-bit values / 255.

Embedded default (no data option): the scikit-image photographs, split as in every app (test =
astronaut, chelsea, coffee; validation = rocket; training = the other photographs; apps.common.images),
blurred by synthetic camera-shake kernels (apps.deblur.kernels, Boracchi & Foi's random trajectories as
in DeblurGAN) plus slight Gaussian noise, then rounded to 8 bits like a real photograph. Blurring is a
'valid' convolution: the sharp target is the image minus (blur_size - 1) / 2 pixels at each border, so
no border is invented. Training pairs are made on the fly: sample i of epoch e draws its photograph,
crop, flips and kernel from a generator seeded with (seed, e, i), so the stream does not depend on the
number of loader workers and a resumed run sees what it would have seen. Validation and test images
are blurred once, with kernels fixed by EVAL_SEED and the file name: every run and every release scores
on the same blurred images (for a given blur size and noise).

Folders (`--traindata` / `--testdata`) hold real pairs, in any of DeblurGAN's layouts:
- GoPro: scene folders, each with blur/ and sharp/ holding the same file names (GOPRO_Large/train);
- paired: blur/ and sharp/ folders holding the same file names;
- side by side: images with the blurred half on the left and the sharp half on the right (A|B);
- any of these inside train/ and test/ (GOPRO_Large, DeblurGAN's aligned root): train and validate
  on train/, test on test/.
Test uses all pairs; training holds the last tenth of the scenes (of the pairs, without scenes; at
least one) out for validation. Pairs are read from disk when used, so large sets need no memory.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from apps.common.images import IMAGE_EXTENSIONS, DataError, check_dir, embedded_paths, images_in, load_rgb

from .kernels import shake_kernel

log = logging.getLogger(__name__)

#: Kernel size (pixels) of the synthetic blur; paths are 30-100% of it long (apps.deblur.kernels).
DEFAULT_BLUR_SIZE = 15
#: Standard deviation of the Gaussian noise added to synthetic blurred images, in 8-bit levels.
DEFAULT_NOISE = 1.0
#: Seed of the validation / test kernels (with each file's name): the same blurred images in every run.
EVAL_SEED = 2012
EXPECTED = ("expected GoPro scenes (<scene>/blur/ and <scene>/sharp/), blur/ and sharp/ folders with the "
            "same file names, or side-by-side images (blurred left | sharp right), optionally inside "
            "train/ and test/")
_MISSING = f"{EXPECTED}; or leave the option out to use the embedded photographs"
#: Left and right halves of a side-by-side pair show the same scene: their correlation is far above this.
SIDE_BY_SIDE_MIN_CORRELATION = 0.5


@dataclass(frozen=True)
class Pair:
    """A blurred / sharp image pair on disk: two files, or one side-by-side file (`sharp` None)."""

    name: str
    blur: Path
    sharp: Path | None = None


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """(blurred, sharp) HxWx3 uint8 images of `pair`."""
    if pair.sharp is None:
        both = load_rgb(pair.blur)
        w = both.shape[1] // 2
        return both[:, :w], both[:, w:2 * w]
    blur, sharp = load_rgb(pair.blur), load_rgb(pair.sharp)
    if blur.shape != sharp.shape:
        raise DataError(f"'{pair.blur}' ({blur.shape[1]}x{blur.shape[0]}) and '{pair.sharp}' "
                        f"({sharp.shape[1]}x{sharp.shape[0]}) differ in size; a blurred image and its sharp "
                        "image must be the same size")
    return blur, sharp


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the image."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read image '{path}': {err}; remove or replace the file") from err


def pair_size(pair: Pair) -> tuple[int, int]:
    """(height, width) of the sharp image of `pair`, from file headers."""
    w, h = _image_size(pair.sharp or pair.blur)
    return (h, w) if pair.sharp is not None else (h, w // 2)


def _same_names(blur_dir: Path, sharp_dir: Path, prefix: str) -> list[Pair]:
    blurs = {p.name: p for p in images_in(blur_dir, EXPECTED)}
    sharps = {p.name: p for p in images_in(sharp_dir, EXPECTED)}
    unmatched = sorted(set(blurs) ^ set(sharps))
    if unmatched:
        raise DataError(f"'{blur_dir}' and '{sharp_dir}' must hold the same file names; {len(unmatched)} are in "
                        f"only one of them ({', '.join(unmatched[:3])}{', ...' if len(unmatched) > 3 else ''})")
    return [Pair(f"{prefix}{Path(n).stem}", blurs[n], sharps[n]) for n in sorted(blurs)]


def _check_side_by_side(path: Path) -> None:
    both = load_rgb(path)
    if both.shape[1] % 2:
        raise DataError(f"'{path}' is {both.shape[1]} pixels wide, not a side-by-side pair of two equal halves; "
                        f"{EXPECTED}")
    grey = both.astype(np.float64).mean(axis=2)
    w = grey.shape[1] // 2
    left, right = grey[:, :w].ravel(), grey[:, w:].ravel()
    corr = float(np.corrcoef(left, right)[0, 1]) if left.std() > 0 and right.std() > 0 else 0.0
    if not corr > SIDE_BY_SIDE_MIN_CORRELATION:
        raise DataError(f"'{path.parent}' holds images that are not side-by-side pairs: the left and right halves "
                        f"of '{path.name}' do not show the same scene (correlation {corr:.2f}); {EXPECTED}")


def _scenes(folder: Path) -> list[list[Pair]]:
    """The pairs of a folder in one of the layouts, grouped by scene (one group without scenes)."""
    if (folder / "blur").is_dir() and (folder / "sharp").is_dir():
        return [_same_names(folder / "blur", folder / "sharp", "")]
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    scenes = [d for d in subdirs if (d / "blur").is_dir() and (d / "sharp").is_dir()]
    if scenes:
        return [_same_names(d / "blur", d / "sharp", f"{d.name}_") for d in scenes]
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if images:
        _check_side_by_side(images[0])
        return [[Pair(p.stem, p) for p in images]]
    found = ", ".join(d.name + "/" for d in subdirs[:4]) or "no images or folders"
    raise DataError(f"'{folder}' is not a deblurring data folder: {EXPECTED}; it holds {found}")


def _flat(scenes: list[list[Pair]]) -> list[Pair]:
    return [p for scene in scenes for p in scene]


def pair_paths(split: str, directory: str | Path) -> list[Pair]:
    """The pairs of `split` ('train', 'validation' or 'test') in `directory` (see the module docstring)."""
    folder = check_dir(directory, _MISSING)
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        if split == "test":
            return _flat(_scenes(folder / "test"))
        scenes = _scenes(folder / "train")
    else:
        scenes = _scenes(folder)
        if split == "test":
            return _flat(scenes)
    if len(scenes) > 1:
        k = max(1, len(scenes) // 10)
        return _flat(scenes[-k:] if split == "validation" else scenes[:-k])
    pairs = scenes[0]
    if len(pairs) == 1:
        log.warning("'%s' holds a single pair: training and validating on the same pair", folder)
        return pairs
    k = max(1, len(pairs) // 10)
    return pairs[-k:] if split == "validation" else pairs[:-k]


# synthetic blur --------------------------------------------------------------------------------------

def blur_valid(sharp: np.ndarray, kernel: np.ndarray, noise: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Blur an HxWx3 uint8 image by `kernel` (a 'valid' convolution), add Gaussian noise of `noise` 8-bit
    levels, round to uint8; returns (blurred, the sharp pixels it covers), both (H-k+1)x(W-k+1)x3.

    The convolution runs as a float64 FFT product (exact to ~1e-12 of a level, the same on any CPU up to
    that, so the rounded 8-bit images do not depend on the machine's vector units).
    """
    k = kernel.shape[0]
    h, w = sharp.shape[0] - k + 1, sharp.shape[1] - k + 1
    if h < 1 or w < 1:
        raise DataError(f"an image of {sharp.shape[1]}x{sharp.shape[0]} pixels is smaller than the {k}x{k} blur kernel")
    shape = (sharp.shape[0], sharp.shape[1])  # circular convolution of this size is exact on the valid part
    spectrum = np.fft.rfft2(sharp.astype(np.float64), s=shape, axes=(0, 1))
    blurred = np.fft.irfft2(spectrum * np.fft.rfft2(kernel, s=shape)[..., None], s=shape, axes=(0, 1))
    blurred = blurred[k - 1:, k - 1:]
    if noise > 0:
        blurred = blurred + noise * rng.standard_normal(blurred.shape)
    c = k // 2
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8), sharp[c:c + h, c:c + w]


def eval_rng(name: str) -> np.random.Generator:
    """The generator of a validation / test image's kernel and noise: fixed by EVAL_SEED and the name."""
    return np.random.default_rng([EVAL_SEED, zlib.crc32(name.encode("utf-8"))])


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)).astype(np.float32) / 255.0)


def _flip(rng: np.random.Generator, *images: np.ndarray) -> list[np.ndarray]:
    """The same random horizontal / vertical flips of every image."""
    horizontal, vertical = rng.random() < 0.5, rng.random() < 0.5
    out = []
    for im in images:
        if horizontal:
            im = im[:, ::-1]
        if vertical:
            im = im[::-1]
        out.append(np.ascontiguousarray(im))
    return out


class _Epochs(Dataset):
    """A training set of `length` random samples per epoch, sample i of epoch e seeded by (seed, e, i)."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the samples of `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))


class SyntheticBlurTrainingSet(_Epochs):
    """Random crops of sharp photographs, flipped, blurred by a fresh camera-shake kernel each."""

    def __init__(self, paths: list[Path], crop_size: int, length: int, seed: int = 0,
                 blur_size: int = DEFAULT_BLUR_SIZE, noise: float = DEFAULT_NOISE):
        super().__init__(length, seed)
        self.crop, self.blur_size, self.noise = crop_size, blur_size, noise
        self.images = [load_rgb(p) for p in paths]
        need = crop_size + blur_size - 1
        small = [p.name for p, im in zip(paths, self.images, strict=True) if min(im.shape[:2]) < need]
        if small:
            raise DataError(f"training images {small} are smaller than --crop_size {crop_size} plus the blur "
                            f"kernel ({blur_size}); use a smaller --crop_size or --blur_size")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        img = self.images[int(rng.integers(len(self.images)))]
        side = self.crop + self.blur_size - 1
        top = int(rng.integers(img.shape[0] - side + 1))
        left = int(rng.integers(img.shape[1] - side + 1))
        (region,) = _flip(rng, img[top:top + side, left:left + side])
        blurred, sharp = blur_valid(region, shake_kernel(rng, self.blur_size), self.noise, rng)
        return {"blur": _tensor(blurred), "sharp": _tensor(sharp)}


class PairedTrainingSet(_Epochs):
    """Random aligned crops of real blurred / sharp pairs, with the same flips for both."""

    def __init__(self, pairs: list[Pair], crop_size: int, length: int, seed: int = 0):
        super().__init__(length, seed)
        self.pairs, self.crop = pairs, crop_size
        small = [p.name for p in pairs if min(pair_size(p)) < crop_size]
        if small:
            raise DataError(f"training pairs {small[:3]} are smaller than --crop_size {crop_size}; use a smaller "
                            f"--crop_size or remove them")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        blur, sharp = load_pair(self.pairs[int(rng.integers(len(self.pairs)))])
        top = int(rng.integers(sharp.shape[0] - self.crop + 1))
        left = int(rng.integers(sharp.shape[1] - self.crop + 1))
        window = (slice(top, top + self.crop), slice(left, left + self.crop))
        blur, sharp = _flip(rng, blur[window], sharp[window])
        return {"blur": _tensor(blur), "sharp": _tensor(sharp)}


class DeblurImageSet(Dataset):
    """Whole blurred / sharp images (validation, test): synthetic ones made once, folder pairs read when used."""

    def __init__(self, pairs: list[Pair] | None = None, paths: list[Path] | None = None,
                 blur_size: int = DEFAULT_BLUR_SIZE, noise: float = DEFAULT_NOISE):
        self.pairs = pairs or []
        self.synthetic: list[tuple[str, np.ndarray, np.ndarray]] = []
        for path in paths or []:
            rng = eval_rng(path.name)
            blurred, sharp = blur_valid(load_rgb(path), shake_kernel(rng, blur_size), noise, rng)
            self.synthetic.append((path.stem, blurred, sharp))

    def __len__(self) -> int:
        return len(self.synthetic) + len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if index < len(self.synthetic):
            name, blur, sharp = self.synthetic[index]
        else:
            pair = self.pairs[index - len(self.synthetic)]
            name, (blur, sharp) = pair.name, load_pair(pair)
        return {"blur": _tensor(blur), "sharp": _tensor(sharp), "name": name}


def get_training_set(directory: str | Path | None = None, *, crop_size: int = 64, length: int = 1600,
                     seed: int = 0, blur_size: int = DEFAULT_BLUR_SIZE, noise: float = DEFAULT_NOISE) -> Dataset:
    """Training pairs: synthetic blur of the embedded photographs (None) or real pairs of `directory`."""
    if directory is None:
        return SyntheticBlurTrainingSet(embedded_paths("train"), crop_size, length, seed, blur_size, noise)
    return PairedTrainingSet(pair_paths("train", directory), crop_size, length, seed)


def get_validation_set(directory: str | Path | None = None, *, blur_size: int = DEFAULT_BLUR_SIZE,
                       noise: float = DEFAULT_NOISE) -> DeblurImageSet:
    """Whole validation images (None: the embedded validation photograph, blurred by its fixed kernel)."""
    if directory is None:
        return DeblurImageSet(paths=embedded_paths("validation"), blur_size=blur_size, noise=noise)
    return DeblurImageSet(pairs=pair_paths("validation", directory))


def get_testing_set(directory: str | Path | None = None, *, blur_size: int = DEFAULT_BLUR_SIZE,
                    noise: float = DEFAULT_NOISE) -> DeblurImageSet:
    """Whole test images (None: the embedded test photographs, blurred by their fixed kernels)."""
    if directory is None:
        return DeblurImageSet(paths=embedded_paths("test"), blur_size=blur_size, noise=noise)
    return DeblurImageSet(pairs=pair_paths("test", directory))
