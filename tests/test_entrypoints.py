"""train.py / test.py as a user runs them: end to end on the embedded photographs, errors, SIGKILL + resume."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from tests.app_runs import AGP, TINY, entry_main, kill_mid_epoch, load, run_app, small_validation_set


def test_train_then_test_end_to_end(tmp_path):
    small_validation_set(tmp_path)
    (tmp_path / "agp.yaml").write_text(AGP)
    r = run_app(tmp_path, "train.py", "--optform=SR", "--compress=agp.yaml", "--nEpochs", "2", "--save", "e2e", *TINY)
    assert r.returncode == 0, r.stderr
    for path in ("checkpoints/e2e/latest.pth", "checkpoints/e2e/best.pth", "logs/e2e/e2e.log"):
        assert (tmp_path / path).is_file(), path
    assert list((tmp_path / "logs/e2e").glob("events.out.tfevents.*"))
    assert "checkpoints/e2e/best.pth" in r.stdout and "val PSNR" in (tmp_path / "logs/e2e/e2e.log").read_text()
    ck = load(tmp_path / "checkpoints/e2e/latest.pth")
    assert ck["epoch"] == 1 and ck["schedule"]["pruners"]["p"]["final_sparsity"] == 0.5
    assert float((ck["model"]["mid_part.1.weight"] == 0).float().mean()) == pytest.approx(0.5, abs=0.01)

    r = run_app(tmp_path, "test.py", "--optform=SR", "--model=checkpoints/e2e/best.pth")
    assert r.returncode == 0, r.stderr
    for name in ("astronaut", "chelsea", "coffee", "mean", "bicubic PSNR"):
        assert name in r.stdout
    rows = list(csv.DictReader((tmp_path / "results/e2e/metrics.csv").open()))
    assert [row["image"] for row in rows] == ["astronaut", "chelsea", "coffee", "mean"]
    assert all(20 < float(row["bicubic_psnr"]) < 40 for row in rows)
    img = Image.open(tmp_path / "results/e2e/astronaut_x2_sr.png")
    assert img.mode == "RGB" and img.size == (512, 512)
    assert (tmp_path / "results/e2e/astronaut_x2_bicubic.png").is_file()


@pytest.mark.parametrize(("script", "args", "expect"), [
    ("train.py", ["--optform=Colorize"], "valid apps: "),
    ("train.py", ["--optform=SR", "--compress=bad.yaml", "--nEpochs", "1", *TINY],
     "bad.yaml, line 6 at 'pruners.p.final_sparsty'"),
])
def test_user_errors_are_one_clear_line(tmp_path, script, args, expect):
    small_validation_set(tmp_path)
    (tmp_path / "bad.yaml").write_text(AGP.replace("final_sparsity: 0.5", "final_sparsty: 0.5"))
    r = run_app(tmp_path, script, *args)
    assert r.returncode == 2
    assert expect in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """Run the entry points' main() here (no interpreter start-up), then drop the log handlers they add."""
    import logging

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    before = list(root.handlers)
    yield tmp_path
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)


@pytest.mark.parametrize(("script", "args", "expect"), [
    ("test", ["--lr", "1"], "first argument must be --optform"),
    ("test", ["--optform=SR", "--model=missing.pth"], "does not exist"),
    ("train", ["--optform=SR", "--compress=missing.yaml"], "does not exist"),
    ("train", ["--optform=SR", "--traindata=nowhere"], "data folder 'nowhere' does not exist"),
    ("train", ["--optform=SR", "--device", "cuda"], "--device cuda was given but no CUDA device is available"),
])
def test_more_user_errors_in_process(in_process, capsys, monkeypatch, script, args, expect):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CUDA case is refused on a GPU machine too
    assert entry_main(script)(args) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err


def test_help_is_complete():
    from apps.sr.options import TestOptions, TrainOptions

    text = TrainOptions().parser.format_help()
    for opt in ("--upscale_factor", "--batchSize", "--testBatchSize", "--nEpochs", "--lr", "--seed", "--traindata",
                "--testdata", "--compress", "--resume", "--model", "--device", "--threads", "--logdir", "--save",
                "--checkpoint_dir", "--print_freq", "--iters_per_epoch"):
        assert opt in text
    text = TestOptions().parser.format_help()
    assert "--reports" in text and "--sense_type" in text and "--results_dir" in text


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    small_validation_set(tmp_path)
    (tmp_path / "agp.yaml").write_text(AGP.replace("ending_epoch: 2", "ending_epoch: 3"))
    args = ["--optform=SR", "--compress=agp.yaml", "--nEpochs", "3", "--iters_per_epoch", "40", "--crop_size", "16",
            "--batchSize", "4", "--testdata", "val"]
    r = run_app(tmp_path, "train.py", *args, "--save", "full")
    assert r.returncode == 0, r.stderr

    latest = tmp_path / "checkpoints/killed/latest.pth"
    assert kill_mid_epoch(tmp_path, [*args, "--save", "killed"], latest) < 2

    r = run_app(tmp_path, "train.py", "--optform=SR", "--resume", str(latest))
    assert r.returncode == 0, r.stderr
    full, resumed = load(tmp_path / "checkpoints/full/latest.pth"), load(latest)
    assert resumed["epoch"] == 2 and [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert full["scheduler"]["masks"]["masks"].keys() == resumed["scheduler"]["masks"]["masks"].keys()
    np.testing.assert_equal([h["psnr"] for h in full["history"]], [h["psnr"] for h in resumed["history"]])
    assert full["optimizer"]["state"][0]["step"] == resumed["optimizer"]["state"][0]["step"]
