"""`train.py --kd_teacher`: a thinned C2SRCNN checkpoint teaches an ESPCN (another input kind), resumes
bit-exactly, tests without its teacher; every misuse is one clear message."""
import argparse
import math

import pytest
import torch
import yaml
from torch import nn

import compress
from apps.sr import Tester, Trainer, build_test_loader, build_train_loaders
from apps.sr.models import C2SRCNN, EDSR
from apps.sr.options import TrainOptions
from apps.sr.teacher import OtherInputTeacher, resize_matrix
from apputils.checkpoint import save_checkpoint
from apputils.execution_env import UserError
from tests.app_runs import ROOT
from tests.apps.sr.test_solvers import _opt, data  # noqa: F401  (the tiny data folder fixture)

SCHEDULES = ROOT / "schedules" / "sr"

KD = """version: 1
distillers:
  kd:
    class: KnowledgeDistillation
    teacher: teacher
    output_loss: l2
    distill_weight: 2.0
policies:
  - distiller: {instance_name: kd}
    starting_epoch: 1
    ending_epoch: 3
"""


@pytest.fixture
def teacher_ckpt(data):  # noqa: F811
    opt = _opt(nEpochs=1, save="teacher", compress=str(SCHEDULES / "filter_prune.yaml"))
    Trainer(opt, *build_train_loaders(opt)).run()
    (data / "kd.yaml").write_text(KD)
    return "checkpoints/teacher/best.pth"


def student(**kw):
    return _opt(**{"model": "ESPCN", "compress": "kd.yaml", "kd_teacher": "checkpoints/teacher/best.pth", **kw})


def test_a_thinned_checkpoint_teaches_another_input_kind_and_the_run_resumes_exactly(teacher_ckpt):
    opt = student(nEpochs=3, save="full")
    trainer = Trainer(opt, *build_train_loaders(opt))
    trainer.run()
    teacher = trainer.compression_scheduler.policies[0].component.teacher
    assert isinstance(teacher, OtherInputTeacher) and teacher.teacher.mid_part[1].out_channels == 8  # thinned
    assert all(p.grad is None for p in teacher.parameters())
    full = torch.load("checkpoints/full/latest.pth", weights_only=True)
    assert "distiller:kd" in full["scheduler"]["policies"]

    opt = student(nEpochs=2, save="part")
    Trainer(opt, *build_train_loaders(opt)).run()
    opt = student(nEpochs=3, save="part", resume="checkpoints/part/latest.pth")
    Trainer(opt, *build_train_loaders(opt)).run()
    resumed = torch.load("checkpoints/part/latest.pth", weights_only=True)
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name]), name

    topt = argparse.Namespace(optform="SR", device="cpu", threads=0, seed=1, logdir="logs",
                              model="checkpoints/full/latest.pth", testdata="imgs", upscale_factor=2, save="full", results_dir="results",
                              reports=False, sense_type="element")
    result = Tester(topt, build_test_loader(topt)).run(topt)  # no teacher needed to test
    assert math.isfinite(result["metrics"]["psnr"])


def test_kd_misuse_is_refused_clearly(data):  # noqa: F811
    teacher_ckpt = "checkpoints/teacher/best.pth"  # a dense, untrained C2SRCNN is enough here
    save_checkpoint({"format": 1, "app": "SR", "arch": {"name": "C2SRCNN", "kwargs": {"upscale_factor": 2}},
                     "model": C2SRCNN().state_dict()}, teacher_ckpt)
    (data / "kd.yaml").write_text(KD)
    (data / "agp.yaml").write_text((SCHEDULES / "agp_prune.yaml").read_text())
    with pytest.raises(UserError, match="is a x2 model and this run trains x3"):
        opt = student(upscale_factor=3)
        Trainer(opt, *build_train_loaders(opt)).build_model()
    with pytest.raises(compress.ScheduleError, match=r"kd.yaml, line 5 at 'distillers.kd.teacher': KnowledgeDistil"
                       r"lation: no teacher named 'teacher' was passed in \(passed: none\).*--kd_teacher"):
        opt = student(kd_teacher=None)
        Trainer(opt, *build_train_loaders(opt)).build_model()
    parser = TrainOptions()
    with pytest.raises(UserError, match="--kd_teacher needs a --compress schedule"):
        parser.parse(["--optform=SR", "--kd_teacher", teacher_ckpt])
    with pytest.raises(UserError, match="checkpoint 'nope.pth' does not exist"):
        parser.parse(["--optform=SR", "--compress", "kd.yaml", "--kd-teacher", "nope.pth"])
    with pytest.raises(UserError, match="the schedule 'agp.yaml' has no distiller with `teacher: teacher`"):
        parser.parse(["--optform=SR", "--compress", "agp.yaml", "--kd_teacher", teacher_ckpt])
    with pytest.raises(UserError, match="--kd_teacher 'nope.pth' was trained by app 'Deblur'; this run trains SR"):
        save_checkpoint({"format": 1, "app": "Deblur", "arch": {"name": "ResnetGenerator", "kwargs": {}}, "model": {}},
                        "nope.pth")
        parser.parse(["--optform=SR", "--compress", "kd.yaml", "--kd_teacher", "nope.pth"])
    with pytest.raises(UserError, match="--kd-distill-wt is Distiller's option; here it is `distill_weight:`"):
        parser.parse(["--optform=SR", "--kd-distill-wt", "0.7"])


@pytest.mark.parametrize("scale", [2, 3])
def test_other_input_teacher_inverts_the_apps_bicubic_upscaling(scale):
    from apps.sr.data import get_validation_set

    sample = get_validation_set(scale)[0]
    to_lr = OtherInputTeacher(nn.Identity(), scale, "bicubic")(sample["bicubic"][None])
    to_bicubic = OtherInputTeacher(nn.Identity(), scale, "lr")(sample["lr"][None])
    assert 10 * math.log10(1 / float(((to_lr - sample["lr"]) ** 2).mean())) > 55  # only 8-bit rounding apart
    assert 10 * math.log10(1 / float(((to_bicubic - sample["bicubic"]) ** 2).mean())) > 55
    assert torch.allclose(resize_matrix(5, 10).sum(dim=1), torch.ones(10, dtype=torch.float64))


@pytest.mark.parametrize("name", ["kd_agp_prune.yaml", "kd_quantization_PACT.yaml", "kd_edsr_teacher.yaml"])
def test_the_shipped_kd_schedules_build_and_distil(name):
    model = C2SRCNN()
    opt = torch.optim.Adam(model.parameters())
    teachers = {"teacher": OtherInputTeacher(EDSR(1, 2), 2, "bicubic")}  # as --kd_teacher gives an EDSR
    sched = compress.file_config(model, opt, SCHEDULES / name, dummy_input=torch.zeros(1, 1, 32, 32), teachers=teachers)
    x = torch.rand(2, 1, 16, 16)
    sched.on_epoch_begin(0, opt)
    sched.on_minibatch_begin(0, 0, 1, opt)
    loss, parts = sched.before_backward_pass(0, 0, 1, nn.functional.mse_loss(model(x), x), opt,
                                             return_loss_components=True)
    assert "kd.output" in parts
    loss.backward()


@pytest.mark.parametrize(("name", "base"), [("kd_agp_prune.yaml", "agp_prune.yaml"),
                                            ("kd_quantization_PACT.yaml", "quantization_PACT.yaml")])
def test_a_shipped_kd_schedule_is_its_base_plus_a_distiller(name, base):
    kd, plain = (yaml.safe_load((SCHEDULES / n).read_text()) for n in (name, base))
    assert set(kd) - set(plain) == {"distillers"} and kd["policies"][:-1] == plain["policies"]
    assert {k: v for k, v in kd.items() if k not in ("distillers", "policies")} == \
        {k: v for k, v in plain.items() if k != "policies"}
    assert kd["policies"][-1] == {"distiller": {"instance_name": "kd"}, "starting_epoch": 0, "ending_epoch": 8}
