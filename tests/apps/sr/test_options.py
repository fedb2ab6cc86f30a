"""SR options: run names, never overwriting a run, and what a resumed run keeps."""
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


def test_an_existing_run_is_archived_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints/demo").mkdir(parents=True)
    (tmp_path / "checkpoints/demo/best.pth").write_text("earlier run")
    TrainOptions().parse(["--optform=SR", "--save", "demo"])
    archived = list((tmp_path / "checkpoints").glob("demo_archived_*/best.pth"))
    assert len(archived) == 1 and archived[0].read_text() == "earlier run"
    assert not (tmp_path / "checkpoints/demo").exists()


def test_resume_keeps_checkpoint_options_but_allows_more_epochs(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    _ckpt(tmp_path / "c.pth")
    opt = TrainOptions().parse(["--optform=SR", "--resume", "c.pth", "--lr", "0.5", "--nEpochs", "9"])
    assert opt.upscale_factor == 3 and opt.lr == 0.01 and opt.save == "old"
    assert opt.nEpochs == 9 and opt.print_freq == 7
    assert "--lr 0.5 ignored" in caplog.text


def test_bad_values_are_refused(capsys):
    for argv in (["--optform=SR", "--lr", "-1"], ["--optform=SR", "--model", "VDSR"],
                 ["--optform=SR", "--upscale_factor", "x"]):
        with pytest.raises(SystemExit) as exc:
            TrainOptions().parse(argv)
        assert exc.value.code == 2
    with pytest.raises(UserError, match="not a usable run name"):
        TrainOptions().parse(["--optform=SR", "--save", "a/b"])


def test_test_options_take_scale_and_run_from_the_checkpoint(tmp_path):
    _ckpt(tmp_path / "c.pth")
    opt = TestOptions().parse(["--optform=SR", f"--model={tmp_path / 'c.pth'}"])
    assert opt.upscale_factor == 3 and opt.save == "old" and opt.sense_type == "element" and not opt.reports
    assert torch.load(tmp_path / "c.pth", weights_only=True)["epoch"] == 1
