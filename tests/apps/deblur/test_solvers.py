"""Deblur Trainer and Tester in-process on tiny networks: hooks, both networks in the checkpoint, exact resume,
the perceptual loss wired in, the reports hand-over."""
import argparse
from pathlib import Path

import pytest
import torch

from apps.deblur import Tester, Trainer, build_test_loader, build_train_loaders
from tests.app_runs import drop_run_log_handlers
from tests.apps.deblur.test_losses import _torchvision_vgg19_state
from tests.apps.sr.test_solvers import Recorder


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    drop_run_log_handlers()


def _opt(**kw):
    base = dict(optform="Deblur", device="cpu", threads=0, seed=1, logdir="logs", model="DeblurGAN-CPU", ngf=4,
                n_blocks=1, dropout=None, norm="instance", traindata=None, testdata=None, crop_size=16,
                blur_size=5, noise=1.0, batchSize=2, testBatchSize=1, nEpochs=2, iters_per_epoch=2, lr=1e-3,
                decay_epochs=None, compress=None, gan="wgan-gp", content_weight=100.0, perceptual_weights=None,
                critic_iters=2, gp_weight=10.0, ndf=4, save="unit", checkpoint_dir="checkpoints", resume=None,
                print_freq=1, given=[], kd_teacher=None, warmup_iters=0)
    base.update(kw)
    return argparse.Namespace(**base)


def _small_validation(trainer):
    # validate on a corner of the validation photograph: the loop is what is tested here, not the image size
    sample = trainer.validation_loader.dataset[0]
    small = {"blur": sample["blur"][:, :40, :48], "sharp": sample["sharp"][:, :40, :48], "name": sample["name"]}
    trainer.validation_loader = torch.utils.data.DataLoader([small], batch_size=1)
    return trainer


def test_hooks_wrap_the_generators_step_and_the_checkpoint_holds_both_networks(workdir):
    opt = _opt()
    trainer = _small_validation(Trainer(opt, *build_train_loaders(opt)))
    rec = Recorder()
    trainer.build_model = lambda: (Trainer.build_model(trainer), setattr(trainer, "compression_scheduler", rec))
    result = trainer.run()
    minibatch = ["on_minibatch_begin", "before_backward_pass", "before_parameter_optimization", "on_minibatch_end"]
    expected = []
    for epoch in range(2):
        expected += [("on_epoch_begin", epoch)] + [(h, epoch) for _ in range(2) for h in minibatch]
        expected += [("on_epoch_end", epoch)]
    assert rec.calls == expected
    assert "(blurred input" in result["headline"] and "non-zero generator parameters" in result["headline"]
    ck = torch.load(result["latest"], weights_only=True)
    assert ck["app"] == "Deblur" and ck["arch"]["name"] == "ResnetGenerator" and ck["epoch"] == 1
    critic = ck["networks"]["critic"]
    assert critic["arch"] == {"name": "NLayerDiscriminator", "kwargs": {"ndf": 4, "n_layers": 3, "norm": "instance"}}
    assert critic["optimizer"]["state"][0]["step"] == 2 * 2 * opt.critic_iters  # critic_iters per generator step
    assert ck["optimizer"]["state"][0]["step"] == 4
    assert [g["lr"] for g in ck["optimizer"]["param_groups"]] == [pytest.approx(1e-3 / 2)]  # the decay epoch
    assert tuple(ck["optimizer"]["param_groups"][0]["betas"]) == (0.5, 0.999)


def test_content_only_training_has_no_critic(workdir):
    opt = _opt(gan="off", nEpochs=1)
    trainer = _small_validation(Trainer(opt, *build_train_loaders(opt)))
    ck = torch.load(trainer.run()["latest"], weights_only=True)
    assert ck["networks"] == {} and tuple(ck["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.999)


def test_warmup_raises_both_lrs_step_by_step_then_the_epoch_curve_takes_over(workdir):
    opt = _opt(warmup_iters=3)  # 2 epochs x 2 steps; the second epoch is the decay epoch (factor 1/2)
    trainer = _small_validation(Trainer(opt, *build_train_loaders(opt)))
    seen = []
    step = trainer.optimizer_step

    def recording(*args):
        seen.append((trainer.optimizer.param_groups[0]["lr"], trainer.adversary.optimizer.param_groups[0]["lr"]))
        return step(*args)

    trainer.optimizer_step = recording
    trainer.run()
    expected = [1e-3 / 3, 2e-3 / 3, 1e-3 / 2, 1e-3 / 2]
    assert seen == [(pytest.approx(lr), pytest.approx(lr)) for lr in expected]


def test_resuming_repeats_an_uninterrupted_run_exactly(workdir):
    # dropout: the random state must resume too; the warm-up spans the resume point (step 2 of 3)
    full = _opt(nEpochs=3, save="full", dropout=0.5, warmup_iters=3)
    _small_validation(Trainer(full, *build_train_loaders(full))).run()
    first = _opt(nEpochs=1, save="part", dropout=0.5, warmup_iters=3)
    _small_validation(Trainer(first, *build_train_loaders(first))).run()
    resumed = _opt(nEpochs=3, save="part", dropout=0.5, warmup_iters=3, resume="checkpoints/part/latest.pth")
    _small_validation(Trainer(resumed, *build_train_loaders(resumed))).run()
    a, b = (torch.load(f"checkpoints/{r}/latest.pth", weights_only=True) for r in ("full", "part"))
    for key in ("model", "optimizer"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    for key in ("model", "optimizer"):
        torch.testing.assert_close(a["networks"]["critic"][key], b["networks"]["critic"][key], rtol=0, atol=0)
    assert [h["psnr"] for h in a["history"]] == [h["psnr"] for h in b["history"]]


def test_perceptual_loss_trains_the_generator(workdir):
    torch.save(_torchvision_vgg19_state(), workdir / "vgg19.pth")
    opt = _opt(gan="off", nEpochs=1, iters_per_epoch=1, perceptual_weights="vgg19.pth")
    trainer = _small_validation(Trainer(opt, *build_train_loaders(opt)))
    trainer.run()
    assert "content loss VGG19 conv3_3 x100" in trainer.describe()
    assert "content" in (workdir / "logs/unit/unit.log").read_text()


def test_tester_scores_writes_images_and_hands_the_same_metrics_to_the_reports(workdir, monkeypatch):
    opt = _opt(nEpochs=1, gan="off")
    _small_validation(Trainer(opt, *build_train_loaders(opt))).run()
    topt = argparse.Namespace(optform="Deblur", device="cpu", threads=0, seed=1, logdir="logs",
                              model="checkpoints/unit/best.pth", testdata=None, blur_size=5, noise=1.0, save="unit",
                              results_dir="results", reports=True, sense_type="filter")
    seen = {}

    def fake_write_reports(model, test_func, dummy_input, out_dir, sense_type="element", quantize_flag=False):
        seen.update(metrics=test_func(model), out=out_dir, shape=tuple(dummy_input.shape), quantize=quantize_flag)
        return {"summary": "ok"}

    import apputils.reports

    monkeypatch.setattr(apputils.reports, "write_reports", fake_write_reports)
    loader = build_test_loader(topt)
    small = [{k: (v[:, :48, :40] if torch.is_tensor(v) else v) for k, v in s.items()} for s in loader.dataset]
    tester = Tester(topt, torch.utils.data.DataLoader(small, batch_size=1))
    result = tester.run(topt)
    assert seen["out"] == Path("results/unit/reports") and seen["shape"] == (1, 3, 64, 64)
    assert seen["quantize"] is False
    for key in ("psnr", "ssim"):
        assert seen["metrics"][key] == pytest.approx(result["metrics"][key], abs=1e-9)
    assert "blurred PSNR" in result["table"] and "coffee" in result["table"]
    rows = (workdir / "results/unit/metrics.csv").read_text().splitlines()
    assert rows[0].startswith("image,psnr,ssim,blurred_psnr") and rows[-1].startswith("mean") and len(rows) == 5
    for name in ("astronaut_deblurred.png", "astronaut_blurred.png"):
        assert (workdir / "results/unit" / name).is_file()
