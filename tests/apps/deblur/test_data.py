"""Deblurring data: the embedded photographs with fixed synthetic blur, DeblurGAN's folder layouts, refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from apps.common.images import EMBEDDED_TEST, EMBEDDED_VALIDATION, DataError, embedded_dir, load_rgb
from apps.deblur.data import (
    EXPECTED,
    DeblurImageSet,
    blur_valid,
    get_testing_set,
    get_training_set,
    get_validation_set,
    pair_paths,
)
from apps.deblur.kernels import shake_kernel
from apps.sr.data import image_paths


def _photo(y: int, x: int, h: int = 40, w: int = 48) -> np.ndarray:
    return load_rgb(embedded_dir() / "astronaut.png")[y:y + h, x:x + w]


def _blurred(sharp: np.ndarray) -> np.ndarray:
    out, _ = blur_valid(np.pad(sharp, ((2, 2), (2, 2), (0, 0)), mode="reflect"),
                        shake_kernel(np.random.default_rng(0), 5), 1.0, np.random.default_rng(1))
    return out


def _pairs(folder, names, offset=0):
    (folder / "blur").mkdir(parents=True)
    (folder / "sharp").mkdir()
    for i, name in enumerate(names):
        sharp = _photo(30 * (i + offset), 20 * (i + offset))
        Image.fromarray(sharp).save(folder / "sharp" / name)
        Image.fromarray(_blurred(sharp)).save(folder / "blur" / name)


def _side_by_side(folder, names):
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        sharp = _photo(30 * i, 20 * i)
        Image.fromarray(np.concatenate([_blurred(sharp), sharp], axis=1)).save(folder / name)


def test_embedded_splits_are_srs_and_eval_blur_is_fixed():
    test = get_testing_set(blur_size=9)
    assert [s["name"] for s in test] == [n.split(".")[0] for n in EMBEDDED_TEST]
    assert [p.name for p in image_paths("test", None)] == list(EMBEDDED_TEST)  # the same split as SR
    val = get_validation_set(blur_size=9)
    assert len(val) == 1 and val[0]["name"] == EMBEDDED_VALIDATION[0].split(".")[0]
    again = get_testing_set(blur_size=9)
    for a, b in zip(test, again, strict=True):  # every run scores the same blurred images
        assert torch.equal(a["blur"], b["blur"]) and torch.equal(a["sharp"], b["sharp"])
    s = test[0]
    assert s["blur"].shape == s["sharp"].shape == (3, 504, 504)  # 'valid' blur: 4 pixels less on each side
    assert not torch.equal(s["blur"], s["sharp"]) and float((s["blur"] * 255 % 1).abs().max()) < 1e-4  # 8-bit


def test_stronger_blur_lowers_the_blurred_inputs_score():
    from apps.deblur.evaluation import rgb8

    def error(size):
        s = get_validation_set(blur_size=size)[0]
        return float(((rgb8(s["blur"]) - rgb8(s["sharp"])) ** 2).mean())

    assert error(5) < error(11) < error(21)


def test_blur_valid_is_a_convolution_of_the_covered_pixels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 37, 3)).astype(np.uint8)
    k = shake_kernel(rng, 7)
    blurred, sharp = blur_valid(img, k, 0.0, rng)
    x = torch.from_numpy(img.transpose(2, 0, 1)).double()[:, None]
    ref = F.conv2d(x, torch.from_numpy(k[::-1, ::-1].copy())[None, None])[:, 0].numpy().transpose(1, 2, 0)
    assert blurred.shape == sharp.shape == (24, 31, 3)
    assert np.array_equal(blurred, np.clip(np.rint(ref), 0, 255).astype(np.uint8))
    assert np.array_equal(sharp, img[3:27, 3:34])


def test_training_samples_are_fixed_by_seed_epoch_and_index():
    a = get_training_set(crop_size=24, length=4, seed=3, blur_size=7)
    b = get_training_set(crop_size=24, length=4, seed=3, blur_size=7)
    s = a[2]
    assert s["blur"].shape == s["sharp"].shape == (3, 24, 24)
    assert torch.equal(s["blur"], b[2]["blur"]) and torch.equal(s["sharp"], b[2]["sharp"])
    a.set_epoch(1)
    assert not torch.equal(a[2]["sharp"], s["sharp"])
    with pytest.raises(DataError, match="smaller than --crop_size 600"):
        get_training_set(crop_size=600, blur_size=7)


def test_paired_folders_hold_out_a_tenth_and_crops_stay_aligned(tmp_path):
    names = [f"{i:02d}.png" for i in range(10)]
    _pairs(tmp_path / "data", names)
    train, val, test = (pair_paths(s, tmp_path / "data") for s in ("train", "validation", "test"))
    assert [p.name for p in val] == ["09"] and len(train) == 9 and len(test) == 10
    assert train[0].blur == tmp_path / "data/blur/00.png" and train[0].sharp == tmp_path / "data/sharp/00.png"
    for name in names:  # blurred == sharp: aligned crops with the same flips are equal
        (tmp_path / "data/blur" / name).write_bytes((tmp_path / "data/sharp" / name).read_bytes())
    ds = get_training_set(tmp_path / "data", crop_size=16, length=8, seed=0)
    crops = [ds[i] for i in range(8)]
    assert all(c["blur"].shape == (3, 16, 16) and torch.equal(c["blur"], c["sharp"]) for c in crops)
    assert len({c["sharp"].sum().item() for c in crops}) == 8  # random windows


def test_gopro_scenes_hold_out_whole_scenes_and_roots_split_train_test(tmp_path):
    root = tmp_path / "GOPRO_Large"
    for i in range(3):
        _pairs(root / "train" / f"GOPR{i:04d}", ["000001.png", "000002.png"], offset=i)
    _side_by_side(root / "test", ["a.png", "b.png"])
    train, val = pair_paths("train", root), pair_paths("validation", root)
    assert [p.name for p in val] == ["GOPR0002_000001", "GOPR0002_000002"]  # the last scene
    assert len(train) == 4 and {p.name.split("_")[0] for p in train} == {"GOPR0000", "GOPR0001"}
    test = get_testing_set(root)
    assert [s["name"] for s in test] == ["a", "b"]
    s = test[0]
    assert s["blur"].shape == s["sharp"].shape == (3, 40, 48)  # the halves of a side-by-side image


@pytest.mark.parametrize(("make", "expect"), [
    (lambda d: (d / "notes").mkdir(parents=True), "is not a deblurring data folder: expected GoPro scenes"),
    (lambda d: _side_by_side_unrelated(d), "not side-by-side pairs: the left and right halves"),
    (lambda d: _odd_width(d), "not a side-by-side pair of two equal halves"),
    (lambda d: _mismatched(d), "must hold the same file names; 1 are in only one of them (b.png)"),
])
def test_folders_in_no_layout_are_refused_with_one_line(tmp_path, make, expect):
    folder = tmp_path / "data"
    make(folder)
    with pytest.raises(DataError) as err:
        get_training_set(folder, crop_size=8)
    assert expect in str(err.value) and "\n" not in str(err.value)
    if "deblurring data folder" in expect:
        assert EXPECTED in str(err.value)


def test_a_missing_folder_names_the_layouts():
    with pytest.raises(DataError, match="does not exist .*expected GoPro scenes"):
        get_testing_set("nowhere")


def _side_by_side_unrelated(folder):
    folder.mkdir(parents=True)
    Image.open(embedded_dir() / "chelsea.png").convert("RGB").crop((0, 0, 300, 200)).save(folder / "x.png")


def _odd_width(folder):
    folder.mkdir(parents=True)
    Image.fromarray(_photo(0, 0, 20, 31)).save(folder / "x.png")


def _mismatched(folder):
    _pairs(folder, ["a.png"])
    Image.fromarray(_photo(0, 0)).save(folder / "sharp" / "b.png")


def test_pairs_of_different_sizes_are_refused(tmp_path):
    _pairs(tmp_path / "d", ["a.png"])
    Image.fromarray(_photo(0, 0, 30, 30)).save(tmp_path / "d/blur/a.png")
    with pytest.raises(DataError, match="differ in size"):
        DeblurImageSet(pairs=pair_paths("test", tmp_path / "d"))[0]
