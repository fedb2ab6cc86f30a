"""SR options: run names and folders, no side effects when parsing, and what a resumed run keeps."""
from pathlib import Path

import pytest
import torch

from apps.sr.models import C2SRCNN
from apps.sr.options import TestOptions, TrainOptions
from apputils.checkpoint import save_checkpoint
from apputils.execution_env import UserError


def _ckpt(path, **options):
    base = {"optform": "SR", "model": "C2SRCNN", "upscale_factor": 3, "lr": 0.01, "nEpochs": 5, "save": "old",
            "compress": None, "print_freq": 7}
    base.update(options)
    save_checkpoint({"format": 1, "app": "SR", "arch": {"name": "C2SRCNN", "kwargs": {"upscale_factor": 3}},
                     "model": C2SRCNN(upscale_factor=3).state_dict(), "epoch": 1, "options": base, "run": "old"},
                    path)


def test_defaults_and_generated_run_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = TrainOptions().parse(["--optform=SR"])
    assert opt.model == "C2SRCNN" and opt.upscale_factor == 2 and opt.save.startswith("C2SRCNN_x2_dense_")
    assert opt.given == ["optform"]


def test_parsing_changes_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints/demo").mkdir(parents=True)
    (tmp_path / "checkpoints/demo/best.pth").write_text("earlier run")
    opt = TrainOptions().parse(["--optform=SR", "--save", "demo"])
    assert opt.checkpoint_dir == "checkpoints"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        ["checkpoints", "checkpoints/demo", "checkpoints/demo/best.pth"]


def test_resume_keeps_checkpoint_options_but_allows_more_epochs(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints/old").mkdir(parents=True)
    _ckpt(tmp_path / "checkpoints/old/c.pth")
    opt = TrainOptions().parse(["--optform=SR", "--resume", "checkpoints/old/c.pth", "--lr", "0.5", "--nEpochs", "9"])
    assert opt.upscale_factor == 3 and opt.lr == 0.01 and opt.save == "old" and opt.checkpoint_dir == "checkpoints"
    assert opt.nEpochs == 9 and opt.print_freq == 7
    assert "--lr 0.5 ignored" in caplog.text
    _ckpt(tmp_path / "checkpoints/old/l1.pth", loss="l1")
    opt = TrainOptions().parse(["--optform=SR", "--resume", "checkpoints/old/l1.pth"])
    assert opt.loss == "l1"  # a run fine-tuned with l1 resumes with l1; older checkpoints (no loss) keep mse
    assert TrainOptions().parse(["--optform=SR", "--resume", "checkpoints/old/c.pth"]).loss == "mse"


def test_bad_values_are_refused(capsys):
    for argv in (["--optform=SR", "--lr", "-1"], ["--optform=SR", "--model", "VDSR"],
                 ["--optform=SR", "--upscale_factor", "x"], ["--optform=SR", "--loss", "huber"]):
        with pytest.raises(SystemExit) as exc:
            TrainOptions().parse(argv)
        assert exc.value.code == 2
    with pytest.raises(UserError, match=r"--save '/data/runs/x' is not a run name.*--checkpoint_dir /data/runs "
                                        r"--save demo"):
        TrainOptions().parse(["--optform=SR", "--save", "/data/runs/x"])


def test_checkpoint_dir_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="--checkpoint_dir '.*file' is a file, not a folder"):
        TrainOptions().parse(["--optform=SR", "--checkpoint_dir", str(tmp_path / "file")])
    with pytest.raises(UserError, match="--results_dir '.*file' is a file"):
        TestOptions().parse(["--optform=SR", "--model=x.pth", "--results_dir", str(tmp_path / "file")])


def test_a_resumed_run_continues_in_the_folder_of_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "disk2/runs/old").mkdir(parents=True)
    _ckpt(tmp_path / "disk2/runs/old/latest.pth", checkpoint_dir="checkpoints")  # moved after it was written
    opt = TrainOptions().parse(["--optform=SR", "--resume", "disk2/runs/old/latest.pth"])
    assert (opt.checkpoint_dir, opt.save) == (str(Path("disk2/runs")), "old")
    opt = TrainOptions().parse(["--optform=SR", "--resume", "disk2/runs/old/latest.pth", "--checkpoint_dir", "ck"])
    assert (opt.checkpoint_dir, opt.save) == ("ck", "old")
    _ckpt(tmp_path / "c.pth")  # a checkpoint outside any run folder: the run goes on where it is
    opt = TrainOptions().parse(["--optform=SR", "--resume", "c.pth"])
    assert Path(opt.checkpoint_dir) / opt.save == tmp_path.resolve()


def test_test_options_take_scale_and_run_from_the_checkpoint(tmp_path):
    _ckpt(tmp_path / "c.pth")
    opt = TestOptions().parse(["--optform=SR", f"--model={tmp_path / 'c.pth'}"])
    assert opt.upscale_factor == 3 and opt.save == "old" and opt.sense_type == "element" and not opt.reports
    assert torch.load(tmp_path / "c.pth", weights_only=True)["epoch"] == 1
