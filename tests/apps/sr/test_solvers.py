"""Trainer and Tester in-process on a tiny folder: the hook order of docs/architecture.md, checkpoints, the
reports hand-over."""
import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from apps.sr import Tester, Trainer, TrainOptions, build_test_loader, build_train_loaders
from apps.sr.data import embedded_dir, load_rgb
from apps.sr.solver import deterministic_cudnn
from tests.app_runs import drop_run_log_handlers


class Recorder:
    """A stand-in CompressionScheduler that records the hooks the Trainer calls."""

    schedule = {"version": 1}

    def __init__(self):
        self.calls = []

    def __getattr__(self, hook):
        if not hook.startswith("on_") and not hook.startswith("before_"):
            raise AttributeError(hook)

        def record(epoch, *args, **kwargs):
            self.calls.append((hook, epoch))
            if hook == "before_backward_pass":
                loss = args[2]
                return (loss, {}) if kwargs.get("return_loss_components") else loss
            return None

        return record

    def state_dict(self):
        return {"calls": len(self.calls)}


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rgb = load_rgb(embedded_dir() / "astronaut.png")
    (tmp_path / "imgs").mkdir()
    for i, (y, x) in enumerate([(0, 0), (100, 200), (300, 60)]):
        Image.fromarray(rgb[y:y + 40, x:x + 44]).save(tmp_path / "imgs" / f"{i}.png")
    yield tmp_path
    drop_run_log_handlers()


def _opt(**kw):
    base = dict(optform="SR", device="cpu", threads=0, seed=1, logdir="logs", model="C2SRCNN", upscale_factor=2,
                traindata="imgs", testdata=None, crop_size=16, batchSize=2, testBatchSize=1, nEpochs=2,
                iters_per_epoch=3, lr=1e-3, loss="mse", compress=None, save="unit", checkpoint_dir="checkpoints",
                resume=None, print_freq=1, given=[], kd_teacher=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_trainer_calls_the_hooks_in_the_documented_order(data):
    opt = _opt()
    trainer = Trainer(opt, *build_train_loaders(opt))
    rec = Recorder()
    trainer.build_model = lambda: (Trainer.build_model(trainer), setattr(trainer, "compression_scheduler", rec))
    result = trainer.run()
    minibatch = ["on_minibatch_begin", "before_backward_pass", "before_parameter_optimization", "on_minibatch_end"]
    expected = []
    for epoch in range(2):
        expected += [("on_epoch_begin", epoch)] + [(h, epoch) for _ in range(3) for h in minibatch]
        expected += [("on_epoch_end", epoch)]
    assert rec.calls == expected
    ck = torch.load(result["latest"], weights_only=True)
    assert ck["scheduler"] == {"calls": len(expected)} and ck["epoch"] == 1
    assert (data / "checkpoints/unit/best.pth").is_file()


def test_tester_reports_get_the_same_scores_as_the_test(data, monkeypatch):
    opt = _opt(nEpochs=1)
    Trainer(opt, *build_train_loaders(opt)).run()
    topt = argparse.Namespace(optform="SR", device="cpu", threads=0, seed=1, logdir="logs",
                              model="checkpoints/unit/best.pth", testdata="imgs", upscale_factor=2, save="unit",
                              results_dir="results", reports=True, sense_type="filter")
    seen = {}

    def fake_write_reports(model, test_func, dummy_input, out_dir, sense_type="element", quantize_flag=False):
        seen.update(metrics=test_func(model), sense_type=sense_type, out=out_dir, shape=tuple(dummy_input.shape))
        return {"summary": "ok"}

    import apputils.reports

    monkeypatch.setattr(apputils.reports, "write_reports", fake_write_reports)
    tester = Tester(topt, build_test_loader(topt))
    result = tester.run(topt)
    assert result["reports"] == {"summary": "ok"} and seen["sense_type"] == "filter"
    assert seen["out"] == Path("results/unit/reports") and seen["shape"] == (1, 1, 64, 64)
    for key in ("psnr", "ssim"):
        assert seen["metrics"][key] == pytest.approx(result["metrics"][key], abs=1e-9)
    rows = (data / "results/unit/metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[-1].startswith("mean")
    sr = np.asarray(Image.open(data / "results/unit/0_x2_sr.png"))
    assert sr.shape == (40, 44, 3)


@pytest.mark.parametrize(("loss", "expected"), [("mse", torch.nn.functional.mse_loss),
                                              ("l1", torch.nn.functional.l1_loss)])
def test_the_task_loss_is_the_one_loss_names(data, loss, expected):
    opt = _opt(loss=loss)
    trainer = Trainer(opt, *build_train_loaders(opt))
    trainer.build_model()
    out, hr = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    assert trainer.criterion(out, hr) == expected(out, hr)


def test_a_new_run_moves_an_earlier_one_aside_when_it_starts_and_logs_it(data):
    (data / "elsewhere/unit").mkdir(parents=True)
    (data / "elsewhere/unit/best.pth").write_text("earlier run")
    opt = _opt(checkpoint_dir="elsewhere")
    trainer = Trainer(opt, *build_train_loaders(opt))
    assert (data / "elsewhere/unit/best.pth").is_file()  # building the Trainer changes nothing
    env = trainer.start()
    env.close()
    archived = list((data / "elsewhere").glob("unit_archived_*/best.pth"))
    assert len(archived) == 1 and archived[0].read_text() == "earlier run"
    assert (data / "elsewhere/unit").is_dir() and not any((data / "elsewhere/unit").iterdir())
    log = (data / "logs/unit/unit.log").read_text()
    assert "elsewhere/unit' already existed: moved it to" in log and "checkpoints of this run go to elsewhere/unit" in log
    assert not (data / "checkpoints").exists()


def test_resume_from_a_checkpoint_kept_on_another_disk_matches_an_uninterrupted_run(data):
    common = ["--optform=SR", "--device", "cpu", "--traindata", "imgs", "--crop_size", "16", "--batchSize", "2",
              "--iters_per_epoch", "3", "--print_freq", "1"]
    opt = TrainOptions().parse([*common, "--nEpochs", "2", "--save", "full"])
    Trainer(opt, *build_train_loaders(opt)).run()
    opt = TrainOptions().parse([*common, "--nEpochs", "1", "--save", "part", "--checkpoint_dir", "disk2/runs"])
    Trainer(opt, *build_train_loaders(opt)).run()
    shutil.move(data / "disk2/runs/part", data / "disk3/part")  # the run folder moved after it was written
    opt = TrainOptions().parse(["--optform=SR", "--resume", "disk3/part/latest.pth", "--nEpochs", "2"])
    result = Trainer(opt, *build_train_loaders(opt)).run()
    assert result["latest"] == str(Path("disk3/part/latest.pth"))
    full = torch.load(data / "checkpoints/full/latest.pth", weights_only=True)
    resumed = torch.load(data / "disk3/part/latest.pth", weights_only=True)
    assert resumed["epoch"] == 1 and [h["epoch"] for h in resumed["history"]] == [0, 1]
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert not (data / "disk2/runs/part").exists() and not (data / "checkpoints/part").exists()


def test_cudnn_flags_are_set_for_the_run_only_and_logged(caplog):
    from torch.backends import cudnn

    caplog.set_level(logging.INFO)
    saved = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True
        with deterministic_cudnn(torch.device("cuda")):
            assert (cudnn.deterministic, cudnn.benchmark) == (True, False)
        assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        assert "cuDNN for this run: deterministic kernels, benchmark off" in caplog.text
        with deterministic_cudnn(torch.device("cpu")):
            assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
    finally:
        cudnn.deterministic, cudnn.benchmark = saved
