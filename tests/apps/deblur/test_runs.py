"""train.py / test.py with --optform=Deblur as a user runs them: end to end, a refused folder, SIGKILL + resume."""
import csv

import numpy as np
import torch
from PIL import Image

from apps.common.images import embedded_dir, load_rgb
from tests.app_runs import kill_mid_epoch, load, run_app

TINY = ["--ngf", "4", "--n_blocks", "2", "--ndf", "4", "--critic_iters", "2", "--crop_size", "16", "--batchSize", "2",
        "--blur_size", "5", "--print_freq", "1"]
AGP = """version: 1
pruners:
  p:
    class: 'AutomatedGradualPruner'
    initial_sparsity: 0.2
    final_sparsity: 0.5
    weights: ['model.10.conv_block.1.weight', 'model.11.conv_block.6.weight']
policies:
  - pruner: {instance_name: 'p'}
    starting_epoch: 0
    ending_epoch: 2
    frequency: 1
"""


def small_validation_pairs(folder):
    """val/blur + val/sharp: one 48x48 pair (a shifted crop as the 'blurred' image): validating costs nothing."""
    rgb = load_rgb(embedded_dir() / "rocket.jpg")
    for sub, (y, x) in (("sharp", (200, 300)), ("blur", (201, 301))):
        (folder / "val" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb[y:y + 48, x:x + 48]).save(folder / "val" / sub / "rocket.png")


def test_train_then_test_end_to_end(tmp_path):
    (tmp_path / "agp.yaml").write_text(AGP)
    small_validation_pairs(tmp_path)
    r = run_app(tmp_path, "train.py", "--optform=Deblur", "--compress=agp.yaml", "--nEpochs", "2", "--iters_per_epoch",
                "2", "--save", "e2e", "--testdata", "val", *TINY)
    assert r.returncode == 0, r.stderr
    assert "run e2e: best validation PSNR" in r.stdout and "(blurred input" in r.stdout
    ck = load(tmp_path / "checkpoints/e2e/best.pth")
    assert ck["app"] == "Deblur" and "critic" in ck["networks"]
    assert float((ck["model"]["model.10.conv_block.1.weight"] == 0).float().mean()) == 0.5
    assert "val PSNR" in (tmp_path / "logs/e2e/e2e.log").read_text()

    r = run_app(tmp_path, "test.py", "--optform=Deblur", "--model=checkpoints/e2e/best.pth")
    assert r.returncode == 0, r.stderr
    assert "blurred PSNR" in r.stdout and "deblurred PSNR" in r.stdout
    rows = list(csv.DictReader((tmp_path / "results/e2e/metrics.csv").open()))
    assert [row["image"] for row in rows] == ["astronaut", "chelsea", "coffee", "mean"]
    assert all(27 < float(row["blurred_psnr"]) < 40 for row in rows)  # the default test blur, 5-pixel kernels
    img = Image.open(tmp_path / "results/e2e/chelsea_deblurred.png")
    assert img.mode == "RGB" and img.size == (447, 296)  # 'valid' blur: 2 pixels less on each side


def test_a_folder_in_no_layout_is_one_line(tmp_path):
    (tmp_path / "photos/misc").mkdir(parents=True)
    r = run_app(tmp_path, "train.py", "--optform=Deblur", "--traindata", "photos", *TINY)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: 'photos' is not a deblurring data folder: expected GoPro scenes" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    (tmp_path / "agp.yaml").write_text(AGP.replace("ending_epoch: 2", "ending_epoch: 3"))
    small_validation_pairs(tmp_path)
    args = ["--optform=Deblur", "--compress=agp.yaml", "--nEpochs", "3", "--iters_per_epoch", "12", "--dropout", "0.2",
            "--testdata", "val", *TINY]
    r = run_app(tmp_path, "train.py", *args, "--save", "full")
    assert r.returncode == 0, r.stderr

    latest = tmp_path / "checkpoints/killed/latest.pth"
    assert kill_mid_epoch(tmp_path, [*args, "--save", "killed"], latest) < 2

    r = run_app(tmp_path, "train.py", "--optform=Deblur", "--resume", str(latest))
    assert r.returncode == 0, r.stderr
    full, resumed = load(tmp_path / "checkpoints/full/latest.pth"), load(latest)
    assert resumed["epoch"] == 2 and [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in full["networks"]["critic"]["model"].items():
        assert torch.equal(value, resumed["networks"]["critic"]["model"][key]), key
    assert full["scheduler"]["masks"]["masks"].keys() == resumed["scheduler"]["masks"]["masks"].keys()
    np.testing.assert_equal([h["psnr"] for h in full["history"]], [h["psnr"] for h in resumed["history"]])
    assert full["networks"]["critic"]["optimizer"]["state"][0]["step"] == \
        resumed["networks"]["critic"]["optimizer"]["state"][0]["step"]
