"""Embedded default data, folder layouts, anti-aliased degradation and deterministic crops."""
import numpy as np
import pytest
from PIL import Image

from apps.sr.data import (
    EMBEDDED_TEST,
    EMBEDDED_TRAIN,
    EMBEDDED_VALIDATION,
    DataError,
    degrade,
    embedded_dir,
    get_testing_set,
    get_training_set,
    get_validation_set,
    image_paths,
)


def test_embedded_splits_are_disjoint_real_files():
    names = [set(EMBEDDED_TRAIN), set(EMBEDDED_VALIDATION), set(EMBEDDED_TEST)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set(EMBEDDED_TEST) == {"astronaut.png", "chelsea.png", "coffee.png"}
    assert "retina.jpg" not in EMBEDDED_TEST
    for split in ("train", "validation", "test"):
        assert all(p.is_file() and p.parent == embedded_dir() for p in image_paths(split, None))


def test_degrade_sizes_and_antialiasing():
    # a one-pixel checkerboard: an anti-aliased x2 downscale is flat grey, a point-sampled one is black/white
    board = (np.indices((64, 66)).sum(0) % 2 * 255).astype(np.uint8)
    s = degrade(np.repeat(board[..., None], 3, axis=2)[:63], 2)
    assert s.hr.shape == (62, 66, 3) and s.lr.shape == (31, 33, 3) and s.bicubic.shape == s.hr.shape
    inner = s.lr[3:-3, 3:-3].astype(float)
    assert abs(inner.mean() - 127.5) < 3 and inner.std() < 3


def test_test_set_samples():
    ts = get_testing_set(3)
    assert [ts[i]["name"] for i in range(len(ts))] == ["astronaut", "chelsea", "coffee"]
    item = ts[0]
    h, w = item["hr"].shape[1:]
    assert h % 3 == 0 and w % 3 == 0 and item["lr"].shape[1:] == (h // 3, w // 3)
    assert item["bicubic"].shape == item["hr"].shape and item["cbcr"].shape == (2, h, w)
    assert 16 / 255 - 1e-6 <= float(item["hr"].min()) and float(item["hr"].max()) <= 235 / 255 + 1e-6


def test_training_crops_are_deterministic_per_epoch():
    ds = get_training_set(2, crop_size=17, length=4, seed=5)
    a = ds[1]
    assert a["hr"].shape == (1, 16, 16) and a["lr"].shape == (1, 8, 8)
    assert (ds[1]["hr"] == a["hr"]).all()
    ds.set_epoch(1)
    assert not (ds[1]["hr"] == a["hr"]).all()
    other = get_training_set(2, crop_size=17, length=4, seed=5)
    assert (other[1]["hr"] == a["hr"]).all()


def _write(folder, names, size=(40, 36)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / n)


def test_bsds300_and_flat_layouts(tmp_path):
    _write(tmp_path / "bsds/images/train", ["a.jpg", "b.jpg"])
    _write(tmp_path / "bsds/images/test", ["c.jpg"])
    assert [p.name for p in image_paths("train", tmp_path / "bsds")] == ["a.jpg", "b.jpg"]
    assert [p.name for p in image_paths("validation", tmp_path / "bsds")] == ["c.jpg"]
    _write(tmp_path / "flat", [f"{i:02d}.png" for i in range(12)])
    assert len(image_paths("train", tmp_path / "flat")) == 11
    assert [p.name for p in image_paths("validation", tmp_path / "flat")] == ["11.png"]
    assert len(get_testing_set(2, tmp_path / "flat")) == 12
    assert len(get_validation_set(2, tmp_path / "bsds")) == 1


def test_bad_folders_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        get_testing_set(2, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        get_testing_set(2, tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image"):
        get_testing_set(2, tmp_path / "bad")
    _write(tmp_path / "small", ["s.png"], size=(10, 10))
    with pytest.raises(DataError, match="smaller than --crop_size"):
        get_training_set(2, tmp_path / "small", crop_size=32)
