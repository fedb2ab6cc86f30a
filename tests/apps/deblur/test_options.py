"""Deblur options: presets, run names, refusals, what a resumed run and a test keep from the checkpoint."""
import pytest

from apps.deblur.options import TestOptions, TrainOptions
from apps.deblur.solver import arch_of, generator_kwargs, lr_factor
from apputils.checkpoint import save_checkpoint
from apputils.execution_env import UserError


def test_defaults_presets_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    opt = TrainOptions().parse(["--optform=Deblur"])
    assert opt.model == "DeblurGAN-CPU" and opt.gan == "wgan-gp" and opt.content_weight == 100
    assert opt.critic_iters == 5 and opt.gp_weight == 10 and opt.blur_size == 15
    assert opt.lr == 1e-4 and opt.ndf == 16  # DeblurGAN's LR with the critic; the CPU critic's width
    assert TrainOptions().parse(["--optform=Deblur", "--gan", "off"]).lr == 1e-3
    assert opt.save.startswith("DeblurGAN-CPU_dense_")
    assert generator_kwargs(opt) == {"ngf": 16, "n_blocks": 9, "dropout": 0.0, "norm": "instance"}
    paper = TrainOptions().parse(["--optform=Deblur", "--model", "DeblurGAN", "--norm", "batch", "--n_blocks", "6"])
    assert paper.ndf == 64
    assert arch_of(paper) == {"name": "ResnetGenerator",
                              "kwargs": {"ngf": 64, "n_blocks": 6, "dropout": 0.5, "norm": "batch"}}


@pytest.mark.parametrize(("argv", "expect"), [
    (["--perceptual_weights", "vgg.pth"], "--perceptual_weights: 'vgg.pth' does not exist"),
    (["--decay_epochs", "9"], "--decay_epochs 9 must be between 0 and --nEpochs 8"),
    (["--compress", "none.yaml"], "see schedules/deblur/"),
])
def test_bad_files_and_values_are_refused(tmp_path, monkeypatch, argv, expect):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=expect):
        TrainOptions().parse(["--optform=Deblur", *argv])


@pytest.mark.parametrize("argv", [["--gan", "lsgan"], ["--dropout", "1"], ["--noise", "-1"], ["--norm", "group"],
                                  ["--warmup_iters", "-1"], ["--warmup_iters", "2.5"]])
def test_invalid_values_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit):
        TrainOptions().parse(["--optform=Deblur", *argv])
    assert "error:" in capsys.readouterr().err


def test_resume_and_test_take_the_checkpoints_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = {"optform": "Deblur", "model": "DeblurGAN-CPU", "ngf": 4, "blur_size": 9, "noise": 2.0,
               "nEpochs": 3, "save": "old", "lr": 0.01}
    save_checkpoint({"format": 1, "app": "Deblur", "arch": {"name": "ResnetGenerator", "kwargs": {}}, "model": {},
                     "epoch": 0, "options": options, "run": "old"}, tmp_path / "checkpoints/old/c.pth")
    opt = TrainOptions().parse(["--optform=Deblur", "--resume", "checkpoints/old/c.pth", "--nEpochs", "5",
                                "--blur_size", "21"])
    assert opt.ngf == 4 and opt.blur_size == 9 and opt.nEpochs == 5 and opt.save == "old" and opt.lr == 0.01
    topt = TestOptions().parse(["--optform=Deblur", "--model", "checkpoints/old/c.pth"])
    assert topt.blur_size == 9 and topt.noise == 2.0 and topt.save == "old"
    assert TestOptions().parse(["--optform=Deblur", "--model", "checkpoints/old/c.pth", "--blur_size", "5"]).blur_size == 5
    with pytest.raises(UserError, match="trained by app 'Deblur', not 'SR'"):
        from apps.sr.options import TestOptions as SRTestOptions
        SRTestOptions().parse(["--optform=SR", "--model", "checkpoints/old/c.pth"])


def test_lr_stays_then_falls_linearly_over_the_decay_epochs():
    assert [lr_factor(e, 8, None) for e in range(8)] == pytest.approx([1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert [lr_factor(e, 4, 0) for e in range(4)] == [1, 1, 1, 1]
    assert lr_factor(0, 2, 2) == pytest.approx(2 / 3)
