"""Distillation in the Deblur app as a user runs it: kd_filter_prune.yaml (`teacher: self`) trains, thins and
logs its term; a --kd_teacher checkpoint teaches a smaller generator and the run resumes exactly; misuse is
one `error:` line."""
import pytest
import torch

from apps.deblur.models import ResnetGenerator
from apputils.checkpoint import save_checkpoint
from tests.app_runs import ROOT, entry_main, load, run_app
from tests.apps.deblur.test_runs import AGP, TINY, small_validation_pairs
from tests.test_entrypoints import in_process  # noqa: F401  (runs main() here, drops its log handlers)

SCHEDULES = ROOT / "schedules" / "deblur"
BASE = ["--optform=Deblur", "--gan", "off", "--testdata", "val", *TINY]


def test_kd_filter_prune_distils_from_the_dense_generator_across_thinning(tmp_path):
    small_validation_pairs(tmp_path)
    r = run_app(tmp_path, "train.py", *BASE, "--n_blocks", "9", "--compress", str(SCHEDULES / "kd_filter_prune.yaml"),
                "--nEpochs", "5", "--iters_per_epoch", "1", "--save", "kd")
    assert r.returncode == 0, r.stderr
    assert " kd.output " in (tmp_path / "logs/kd/kd.log").read_text()  # the term, logged (and to TensorBoard)
    ck = load(tmp_path / "checkpoints/kd/latest.pth")
    teacher = ck["scheduler"]["policies"]["distiller:kd"]["teacher"]
    assert teacher["model.10.conv_block.1.weight"].shape[0] == 16  # the copy taken before pruning (4 x ngf)
    assert ck["model"]["model.10.conv_block.1.weight"].shape[0] == 8  # the student, thinned at epoch 4


def test_a_kd_teacher_checkpoint_teaches_a_smaller_generator_and_the_run_resumes_exactly(in_process, capsys):  # noqa: F811
    small_validation_pairs(in_process)
    train = entry_main("train")
    assert train([*BASE, "--ngf", "8", "--nEpochs", "1", "--iters_per_epoch", "1", "--save", "dense"]) == 0
    kd = [*BASE, "--n_blocks", "1", "--compress", str(SCHEDULES / "kd_teacher.yaml"), "--kd_teacher",
          "checkpoints/dense/best.pth", "--iters_per_epoch", "2"]
    assert train([*kd, "--nEpochs", "2", "--save", "full"]) == 0
    assert train([*kd, "--nEpochs", "1", "--save", "part"]) == 0
    assert train(["--optform=Deblur", "--resume", "checkpoints/part/latest.pth", "--nEpochs", "2"]) == 0
    log = (in_process / "logs/part/part.log").read_text()
    assert log.count("distillation teacher 'teacher': ResnetGenerator from checkpoints/dense/best.pth") == 2
    assert " kd.output " in log
    full, resumed = load(in_process / "checkpoints/full/latest.pth"), load(in_process / "checkpoints/part/latest.pth")
    assert resumed["epoch"] == 1 and resumed["options"]["kd_teacher"] == "checkpoints/dense/best.pth"
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert capsys.readouterr().err.count("error:") == 0


def _checkpoint(path, app="Deblur"):
    g = ResnetGenerator(ngf=4, n_blocks=1)
    save_checkpoint({"format": 1, "app": app, "arch": {"name": "ResnetGenerator", "kwargs": {"ngf": 4, "n_blocks": 1}},
                     "model": g.state_dict()}, path)


@pytest.mark.parametrize(("argv", "expect"), [
    (["--kd_teacher", "t.pth"], "error: --kd_teacher needs a --compress schedule whose distillers section names "
                                "`teacher: teacher`, e.g. --compress schedules/deblur/kd_teacher.yaml"),
    (["--compress", "kd.yaml", "--kd-teacher", "nope.pth"], "error: --kd_teacher: checkpoint 'nope.pth' does not exist"),
    (["--compress", "agp.yaml", "--kd_teacher", "t.pth"], "error: --kd_teacher was given but the schedule 'agp.yaml' "
                                                          "has no distiller with `teacher: teacher`"),
    (["--compress", "kd.yaml", "--kd_teacher", "sr.pth"], "error: --kd_teacher 'sr.pth' was trained by app 'SR'; "
                                                          "this run trains Deblur"),
    (["--kd-temp", "4"], "error: --kd-temp is Distiller's option; here it is `temperature:` in the --compress "
                         "schedule's distillers section"),
])
def test_kd_misuse_is_one_error_line(in_process, capsys, argv, expect):  # noqa: F811
    small_validation_pairs(in_process)
    _checkpoint(in_process / "t.pth")
    _checkpoint(in_process / "sr.pth", app="SR")
    (in_process / "agp.yaml").write_text(AGP)
    (in_process / "kd.yaml").write_text((SCHEDULES / "kd_teacher.yaml").read_text())
    assert entry_main("train")([*BASE, "--nEpochs", "1", "--iters_per_epoch", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(expect) and "Traceback" not in err, err
