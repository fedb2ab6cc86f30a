"""`train.py --optform=SR --load_weights CKPT`: a new run starts from a trained (dense or thinned) model, in its own
folder with its own schedule, resumes, tests; every misuse is one `error:` line."""
import pytest
import torch

from apps.sr import Trainer, build_train_loaders
from apps.sr.models import C2SRCNN
from apps.sr.options import TrainOptions
from apputils.checkpoint import save_checkpoint
from tests.app_runs import ROOT, TINY, entry_main, load, small_validation_set
from tests.test_entrypoints import in_process  # noqa: F401  (runs main() here, drops its log handlers)

SCHEDULES = ROOT / "schedules" / "sr"
BASE = ["--optform=SR", *TINY, "--nEpochs", "1"]


def _started(argv):
    """The Trainer of a new run as train.py parses `argv`, its model built and not trained yet."""
    opt = TrainOptions().parse(argv)
    trainer = Trainer(opt, *build_train_loaders(opt))
    trainer.build_model()
    return opt, trainer


def test_a_new_run_starts_from_a_dense_checkpoints_model_then_resumes(in_process, capsys):  # noqa: F811
    small_validation_set(in_process)
    train = entry_main("train")
    assert train([*BASE, "--model", "FSRCNN", "--save", "dense"]) == 0
    dense = load(in_process / "checkpoints/dense/best.pth")

    agp = [*BASE, "--load_weights", "checkpoints/dense/best.pth", "--compress", str(SCHEDULES / "agp_prune.yaml")]
    opt, trainer = _started([*agp, "--save", "probe"])
    assert opt.model == "FSRCNN"  # the checkpoint's architecture, not the command line's default C2SRCNN
    for name, value in dense["model"].items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    assert trainer.validate()["psnr"] == pytest.approx(dense["history"][-1]["psnr"], abs=1e-9)

    assert train([*agp, "--exp-load-weights-from", "checkpoints/dense/best.pth", "--save", "agp"]) == 0
    new = load(in_process / "checkpoints/agp/latest.pth")
    assert new["options"]["load_weights"] == "checkpoints/dense/best.pth" and new["run"] == "agp"
    assert new["epoch"] == 0 and new["schedule"]["pruners"]["conv_pruner"]["final_sparsity"] == 0.5
    assert float((new["model"]["mid_part.1.weight"] == 0).float().mean()) > 0  # the new schedule prunes
    assert load(in_process / "checkpoints/dense/best.pth")["epoch"] == 0  # the dense run is left as it was

    assert train(["--optform=SR", "--resume", "checkpoints/agp/latest.pth", "--nEpochs", "2"]) == 0
    assert load(in_process / "checkpoints/agp/latest.pth")["epoch"] == 1
    log = (in_process / "logs/agp/agp.log").read_text()
    assert log.count("--load_weights: the model of checkpoints/dense/best.pth") == 1  # not again on --resume
    assert "resumed checkpoints/agp/latest.pth at the end of epoch 0" in log
    assert capsys.readouterr().err.count("error:") == 0


def test_a_thinned_checkpoint_keeps_its_structure_through_the_new_schedule_resume_and_test(in_process):  # noqa: F811
    small_validation_set(in_process)
    train = entry_main("train")
    assert train([*BASE, "--compress", str(SCHEDULES / "filter_prune.yaml"), "--save", "thin"]) == 0
    thin = load(in_process / "checkpoints/thin/best.pth")
    agp = [*BASE, "--load_weights", "checkpoints/thin/best.pth", "--compress", str(SCHEDULES / "agp_prune.yaml")]
    _, trainer = _started([*agp, "--save", "probe"])
    assert trainer.model.mid_part[1].out_channels == thin["model"]["mid_part.1.weight"].shape[0] < 12
    for name, value in thin["model"].items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    assert trainer.compression_scheduler.masks.keys() <= {n for n, _ in trainer.model.named_parameters()}

    assert train([*agp, "--save", "agp"]) == 0
    assert train(["--optform=SR", "--resume", "checkpoints/agp/latest.pth", "--nEpochs", "2"]) == 0
    new = load(in_process / "checkpoints/agp/latest.pth")
    assert new["epoch"] == 1 and new["base"]["schedule"] == thin["schedule"]
    kept = new["base"]["scheduler"]  # the thinning recipes only: no masks, no pruner state
    assert kept["masks"] == {"masks": {}} and set(kept["policies"]) == {
        key for key in thin["scheduler"]["policies"] if key.startswith("extension:")} != set()
    assert entry_main("test")(["--optform=SR", "--model", "checkpoints/agp/latest.pth", "--testdata", "val"]) == 0


def _checkpoint(path, app="SR", schedule=None):
    save_checkpoint({"format": 1, "app": app, "arch": {"name": "C2SRCNN", "kwargs": {"num_channels": 1,
                                                                                    "upscale_factor": 2}},
                     "model": C2SRCNN().state_dict(), "schedule": schedule}, path)


@pytest.mark.parametrize(("argv", "expect"), [
    (["--load_weights", "nope.pth"], "error: --load_weights: checkpoint 'nope.pth' does not exist"),
    (["--load_weights", "junk.pth"], "error: cannot read checkpoint 'junk.pth'"),
    (["--load_weights", "deblur.pth"], "error: --load_weights 'deblur.pth' was trained by app 'Deblur'; this run "
                                       "trains SR"),
    (["--load_weights", "quant.pth"], "error: --load_weights 'quant.pth' holds a quantized model"),
    (["--load_weights", "dense.pth", "--model", "ESPCN"], "error: --model ESPCN contradicts --load_weights "
                                                          "'dense.pth', whose model has --model C2SRCNN"),
    (["--load_weights", "dense.pth", "--resume", "dense.pth"], "error: --load_weights starts a new run and "
                                                               "--resume continues one"),
])
def test_load_weights_misuse_is_one_error_line(in_process, capsys, argv, expect):  # noqa: F811
    small_validation_set(in_process)
    _checkpoint(in_process / "dense.pth")
    _checkpoint(in_process / "deblur.pth", app="Deblur")
    _checkpoint(in_process / "quant.pth", schedule={"version": 1, "quantizers": {"q": {"class": "PACTQuantizer"}}})
    (in_process / "junk.pth").write_bytes(b"not a checkpoint")
    assert entry_main("train")([*BASE, *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(expect) and "Traceback" not in err, err
    assert not (in_process / "checkpoints").exists()
