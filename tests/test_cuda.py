"""The framework on a CUDA device: scheduler, resume, thinning, quantization, sensitivity, checkpoints, SR app.

Every test here runs only where `torch.cuda.is_available()`. Each builds a tiny network on the GPU and
checks what the CPU suite checks on the CPU, plus that tensors (masks, optimizer state, quantizer ranges)
live on the model's device. In-process tests run with deterministic cuDNN kernels and without TF32
(restored afterwards), so two code paths can be compared to float precision.

To check the tests themselves on a machine without a GPU, run them on the CPU:
`IMAGEGEN_CUDA_TESTS_DEVICE=cpu pytest tests/test_cuda.py` (the device checks then check the CPU).
"""
from __future__ import annotations

import copy
import csv
import io
import math
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from apps.sr.models import C2SRCNN, EDSR, build_model
from apputils.checkpoint import load_checkpoint, rebuild_model, rng_states, save_checkpoint
from apputils.onnx_export import transform_to_onnx
from apputils.sensitivity import Evaluation, sensitivity_analysis
from compress.masks import MaskStore
from compress.quantization import ActQuant, QuantActivation, QuantLayer, in_export_mode
from compress.thinning import TracedGroups, thin
from tests.app_runs import AGP, ENV, ROOT, TINY, command, load, run_app, small_validation_set
from tests.compress.nets import Plain
from tests.compress.thinning.helpers import mask_half, randomize, train_steps
from tests.compress.thinning.nets import ZOO
from tests.compress.thinning.nets import Residual as ThinResidual
from tests.scheduled import run_scheduled

DEVICE = torch.device(os.environ.get("IMAGEGEN_CUDA_TESTS_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="CUDA tests: torch.cuda.is_available() is False on this machine")
SR_SCHEDULES = ROOT / "schedules" / "sr"


@pytest.fixture(autouse=True)
def _exact_cuda():
    """Deterministic cuDNN kernels, chosen without benchmarking, and no TF32; restored after the test."""
    backends = torch.backends
    saved = (backends.cudnn.deterministic, backends.cudnn.benchmark, backends.cudnn.allow_tf32,
             backends.cuda.matmul.allow_tf32)
    backends.cudnn.deterministic, backends.cudnn.benchmark = True, False
    backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = False
    yield
    (backends.cudnn.deterministic, backends.cudnn.benchmark, backends.cudnn.allow_tf32,
     backends.cuda.matmul.allow_tf32) = saved


def on_device(t: torch.Tensor) -> bool:
    return t.device.type == DEVICE.type


def assert_model_on_device(model: nn.Module) -> None:
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert on_device(t), f"{name} is on {t.device}, the model on {DEVICE}"


def assert_optimizer_on_device(opt: torch.optim.Optimizer) -> int:
    """Every per-element state tensor (momentum, Adam moments) is on the device and shaped like its
    parameter; returns how many there are. (Adam's `step` is a CPU scalar by PyTorch's design.)"""
    count = 0
    for group in opt.param_groups:
        for p in group["params"]:
            assert on_device(p)
            for key, value in opt.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0:
                    assert on_device(value), f"optimizer state '{key}' is on {value.device}"
                    assert value.shape == p.shape, f"optimizer state '{key}' {tuple(value.shape)} vs {tuple(p.shape)}"
                    count += 1
    return count


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical state dicts (compared on the CPU, whatever device each lives on)."""
    assert list(a) == list(b)
    for key, value in a.items():
        assert torch.equal(value.cpu(), b[key].cpu()), key


def saved_and_loaded(state: dict) -> dict:
    """`state` through torch.save and torch.load(map_location='cpu', weights_only=True), as checkpoints go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------
# 1. The scheduler on the GPU: AGP and structured pruning, regularizer, LR schedule, masks on the device

SCHEDULE_YAML = """\
version: 1
pruners:
  agp:
    class: 'AutomatedGradualPruner'
    initial_sparsity: 0.1
    final_sparsity: 0.6
    weights: ['conv1.weight', 'conv2.weight']
  channels:
    class: 'L1RankedStructureParameterPruner_AGP'
    initial_sparsity: 0.25
    final_sparsity: 0.5
    group_type: 'Channels'
    weights: ['conv3.weight']
regularizers:
  lasso:
    class: 'GroupLassoRegularizer'
    reg_regims:
      'conv2.weight': [0.001, 'Filters']
lr_schedulers:
  lr:
    class: 'StepLR'
    step_size: 2
    gamma: 0.5
policies:
  - pruner:
      instance_name: 'agp'
      args:
        mini_batch_pruning_frequency: 2
        mask_gradients: true
    starting_epoch: 0
    ending_epoch: 4
  - pruner:
      instance_name: 'channels'
    starting_epoch: 1
    ending_epoch: 3
  - regularizer:
      instance_name: 'lasso'
    starting_epoch: 0
    ending_epoch: 5
  - lr_scheduler:
      instance_name: 'lr'
    starting_epoch: 0
    ending_epoch: 5
"""
EPOCHS, MINIBATCHES = 5, 4


def agp_zeros(numel: int, epoch: int, minibatch: int) -> int:
    """Zeros the 'agp' policy must have made by (epoch, minibatch): AGP from 0.1 to 0.6 over epochs 0-3,
    the level rising every 2nd of 4 minibatches, so it reaches 0.6 at epoch 3, minibatch 2 (t = 3.5)."""
    t = min(epoch + (minibatch - minibatch % 2) / MINIBATCHES, 3.5)
    level = 0.6 + (0.1 - 0.6) * (1 - t / 3.5) ** 3
    return math.floor(level * numel + 1e-9)


def batch(epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(epoch * 100 + i)).to(DEVICE)
    return x, x


def fresh_scheduled(path: Path):
    torch.manual_seed(1)
    model = Plain().to(DEVICE)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, compress.file_config(model, opt, path)


def train_scheduled(model, opt, sched, epochs, record=None) -> None:
    run_scheduled(model, opt, sched, epochs, batch, minibatches=MINIBATCHES, record=record)


@pytest.fixture
def schedule_file(tmp_path) -> Path:
    path = tmp_path / "schedule.yaml"
    path.write_text(SCHEDULE_YAML)
    return path


def test_scheduler_prunes_as_scheduled_on_the_gpu(schedule_file):
    model, opt, sched = fresh_scheduled(schedule_file)
    params = dict(model.named_parameters())
    seen = []

    def record(epoch: int, i: int) -> None:  # after on_minibatch_begin: this step's masks are set
        masks = sched.masks
        for name in ("conv1.weight", "conv2.weight"):
            mask, weight = masks[name], params[name]
            assert on_device(mask) and mask.dtype == weight.dtype
            assert int((mask == 0).sum()) == agp_zeros(weight.numel(), epoch, i), (name, epoch, i)
            assert bool((weight[mask == 0] == 0).all())
        if epoch >= 1:
            zero_channels = int((masks["conv3.weight"].sum(dim=(0, 2, 3)) == 0).sum())
            assert zero_channels == (2 if epoch == 1 else 4)  # 25% then 50% of 8 input channels
        else:
            assert "conv3.weight" not in masks
        seen.append((epoch, i))

    train_scheduled(model, opt, sched, EPOCHS, record)
    assert len(seen) == EPOCHS * MINIBATCHES
    assert set(sched.masks) == {"conv1.weight", "conv2.weight", "conv3.weight"}
    for name, mask in sched.masks.items():  # after the last optimizer step: pruned weights are exactly zero
        assert on_device(mask)
        assert bool((params[name][mask == 0] == 0).all()), name
    for name in ("conv1.weight", "conv2.weight"):
        assert int((params[name] == 0).sum()) == math.floor(0.6 * params[name].numel() + 1e-9)
        momentum = opt.state[params[name]]["momentum_buffer"]
        assert on_device(momentum) and bool((momentum[sched.masks[name] == 0] == 0).all())  # masked gradients
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 2)
    assert_model_on_device(model)
    assert assert_optimizer_on_device(opt) == len(params)

    x, _ = batch(9, 0)
    loss, parts = sched.before_backward_pass(4, 0, MINIBATCHES, model(x).pow(2).mean(), opt,
                                             return_loss_components=True)
    w = model.conv2.weight
    assert on_device(loss) and on_device(parts["lasso"])
    torch.testing.assert_close(parts["lasso"], 1e-3 * w.reshape(w.shape[0], -1).norm(dim=1).sum())


# ---------------------------------------------------------------------------------------------------
# 2. Resume on the GPU: stopped, saved, rebuilt from scratch, resumed == uninterrupted, bit for bit


def test_resume_on_the_gpu_is_bit_exact(schedule_file):
    model, opt, sched = fresh_scheduled(schedule_file)
    train_scheduled(model, opt, sched, range(EPOCHS))
    for stop in (1, 3, 4):  # 4: after the pruners ended, only the saved masks keep weights pruned
        m1, o1, s1 = fresh_scheduled(schedule_file)
        train_scheduled(m1, o1, s1, range(stop))
        saved = saved_and_loaded({"model": m1.state_dict(), "optimizer": o1.state_dict(),
                                  "scheduler": s1.state_dict()})
        m2, o2, s2 = fresh_scheduled(schedule_file)  # rebuilt from scratch, state loaded from the CPU
        s2.load_state_dict(saved["scheduler"])
        m2.load_state_dict(saved["model"])
        o2.load_state_dict(saved["optimizer"])
        assert all(on_device(m) for m in s2.masks.values())
        assert_optimizer_on_device(o2)
        train_scheduled(m2, o2, s2, range(stop, EPOCHS))

        for (name, a), b in zip(model.state_dict().items(), m2.state_dict().values(), strict=True):
            assert on_device(b) and torch.equal(a, b), f"{name} differs after resuming at epoch {stop}"
        assert sched.masks.keys() == s2.masks.keys()
        for name, mask in sched.masks.items():
            assert torch.equal(mask, s2.masks[name])
        for p, q in zip(model.parameters(), m2.parameters(), strict=True):
            assert torch.equal(opt.state[p]["momentum_buffer"], o2.state[q]["momentum_buffer"])
        assert o2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------------------------
# 3. Thinning on the GPU


@pytest.mark.parametrize("name", ["residual", "shuffle", "shuffle_concat", "residual_in_concat"])
def test_masked_equals_thinned_on_the_gpu(name):
    cls, shape, targets = ZOO[name]
    model = randomize(cls()).to(DEVICE).eval()
    x = torch.randn(shape).to(DEVICE)
    masks = mask_half(model, TracedGroups(model, x), targets)
    assert all(on_device(m) for m in masks.values())  # group_mask builds them on keep's device
    dense_params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        expected = model(x)
    step = thin(model, x, masks, targets[0][1])
    assert step.removed > 0 and sum(p.numel() for p in model.parameters()) < dense_params
    assert_model_on_device(model)
    with torch.no_grad():
        got = model(x)
    assert on_device(got) and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# Adam with a large eps: cuDNN sums a layer's reductions in an order that depends on its channel count,
# so a thinned and a masked layer differ in the last bits of some near-zero gradients, which Adam's
# default eps (1e-8) turns into lr-sized steps (measured on an H200: outputs 2.4e-3 apart after 3 steps,
# while right after thinning they are equal; eps=1e-3: 2.4e-7). The test is about the optimizer state
# following the thinning, so it keeps Adam's moments and bias correction but not that amplification.
@pytest.mark.parametrize("make_opt", [partial(torch.optim.SGD, lr=0.05, momentum=0.9),
                                      partial(torch.optim.Adam, lr=1e-2, eps=1e-3)], ids=["sgd", "adam"])
def test_thinning_with_optimizer_state_on_the_gpu(make_opt):
    model = randomize(ThinResidual()).to(DEVICE)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 3, 8, 8, generator=gen).to(DEVICE), torch.randn(4, 3, 8, 8, generator=gen).to(DEVICE)
    masks = mask_half(model, TracedGroups(model, x[:1]), ZOO["residual"][2])
    opt = make_opt(model.parameters())
    store = MaskStore(model)
    for name, mask in masks.items():
        store.set(name, mask, opt)

    train_steps(model, opt, store, x, y, 2)
    thin_model, thin_opt = copy.deepcopy((model, opt))
    thin_store = MaskStore(thin_model)
    for name, mask in masks.items():
        thin_store.set(name, mask)
    buf = "momentum_buffer" if "momentum_buffer" in thin_opt.state[thin_model.head.weight] else "exp_avg"
    before = thin_opt.state[thin_model.head.weight][buf].clone()
    step = thin(thin_model, x[:1], masks, "filters", optimizer=thin_opt, mask_store=thin_store)

    keep = {e.name: e.keep_out for e in step.layers}["head"]
    assert_model_on_device(thin_model)
    params = list(thin_model.parameters())
    assert [id(p) for p in thin_opt.param_groups[0]["params"]] == [id(p) for p in params]
    assert assert_optimizer_on_device(thin_opt) >= len(params)
    assert torch.equal(thin_opt.state[thin_model.head.weight][buf], before[keep])
    for name, p in thin_model.named_parameters():
        if name in thin_store.masks:
            assert thin_store.masks[name].shape == p.shape and on_device(thin_store.masks[name])

    model.eval()
    thin_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(thin_model(x), model(x), atol=1e-6, rtol=1e-6)
    train_steps(model, opt, store, x, y, 3)
    train_steps(thin_model, thin_opt, thin_store, x, y, 3)
    model.eval()
    thin_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(thin_model(x), model(x), atol=1e-5, rtol=1e-5)


THIN_EDSR = {
    "version": 1,
    "pruners": {"filters": {"class": "L1RankedStructureParameterPruner",
                            "reg_regims": {"blocks.0.0.weight": [0.5, "3D"], "up.0.weight": [0.5, "3D"]}}},
    "extensions": {"thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                               "thin_at": "epoch_end"}},  # so epoch 0 trains masked, to compare with
    "policies": [{"pruner": {"instance_name": "filters"}, "epochs": [0]},
                 {"extension": {"instance_name": "thinner"}, "epochs": [0]}],
}


def small_edsr() -> EDSR:
    torch.manual_seed(2)
    return EDSR(1, 2, features=16, blocks=2).to(DEVICE)


def test_thinning_schedule_on_a_pixelshuffle_residual_net_on_the_gpu():
    """EDSR (residual blocks, PixelShuffle upsampler): filters pruned and removed by the schedule at the end
    of epoch 0 (`thin_at: epoch_end`) with Adam state, training goes on, and the thin checkpoint reloads on
    the GPU."""
    model = small_edsr()
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 1, 8, 8, generator=gen).to(DEVICE), torch.rand(2, 1, 16, 16, generator=gen).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.dict_config(model, opt, THIN_EDSR, dummy_input=x[:1])
    dense_params = sum(p.numel() for p in model.parameters())

    sched.on_epoch_begin(0, opt)  # epoch 0 by hand, so the masked model can be compared before thinning
    for i in range(2):
        sched.on_minibatch_begin(0, i, 2, opt)
        loss = sched.before_backward_pass(0, i, 2, F.mse_loss(model(x), y), opt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.on_minibatch_end(0, i, 2, opt)
    assert all(on_device(m) for m in sched.masks.values())
    model.eval()
    with torch.no_grad():
        masked = model(x)
    model.train()
    sched.on_epoch_end(0, opt)  # FilterRemover thins here
    assert model.blocks[0][0].out_channels == 8 and model.up[0].out_channels == 32
    assert model.tail.in_channels == 8  # the PixelShuffle output channels went with the upsampler's filters
    assert sum(p.numel() for p in model.parameters()) < dense_params
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)
    model.train()
    assert_model_on_device(model)
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in model.parameters()]
    assert assert_optimizer_on_device(opt) == 2 * len(list(model.parameters()))  # exp_avg, exp_avg_sq

    run_scheduled(model, opt, sched, [1], [(x, y)] * 2)  # training continues on the thin model
    saved = saved_and_loaded({"model": model.state_dict(), "schedule": sched.schedule,
                              "scheduler": sched.state_dict(), "optimizer": opt.state_dict()})
    fresh = small_edsr()
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    compress.dict_config(fresh, fresh_opt, saved["schedule"]).load_state_dict(saved["scheduler"])
    fresh.load_state_dict(saved["model"])
    fresh_opt.load_state_dict(saved["optimizer"])
    assert_model_on_device(fresh)
    assert_optimizer_on_device(fresh_opt)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# ---------------------------------------------------------------------------------------------------
# 4. Quantization on the GPU: QAT, post-training, ONNX export of a GPU model


def images(n: int, side: int = 16, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(2, 1, side, side, generator=gen).to(DEVICE) for _ in range(n)]


def quant_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (QuantLayer, QuantActivation))]


@pytest.mark.parametrize("schedule, epochs", [("quantization_DoReFa.yaml", [0]), ("quantization_PACT.yaml", [0]),
                                              ("quantization_linear_w8a8.yaml", [0]),
                                              ("agp_prune_then_quant.yaml", [3, 4])])
def test_qat_trains_on_the_gpu(schedule, epochs):
    torch.manual_seed(0)
    model = C2SRCNN(1, 2).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.file_config(model, opt, SR_SCHEDULES / schedule)
    assert quant_modules(model)
    data = [(x, x) for x in images(2)]
    run_scheduled(model, opt, sched, epochs, data)
    assert_model_on_device(model)  # quantizer ranges and PACT's learned clips included
    assert all(m.quant_enabled for m in quant_modules(model))
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name  # PACT clips get gradients too
    known = {id(p) for g in opt.param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters()} <= known
    assert_optimizer_on_device(opt)
    tracked = [m for m in model.modules() if isinstance(m, ActQuant) and m.mode == "ema" and int(m.ema_steps) > 0]
    assert tracked and all(bool(m.initialized) and float(m.lo) < float(m.hi) for m in tracked)  # ranges tracked
    assert bool(sched.masks) == ("prune" in schedule)
    for name, mask in sched.masks.items():  # pruned weights stay zero under quantization
        assert on_device(mask) and bool((dict(model.named_parameters())[name][mask == 0] == 0).all())

    x = images(1, 24, seed=5)[0]
    model.eval()
    with torch.no_grad():
        quantized = model(x)
        for m in quant_modules(model):
            m.quant_enabled = False
        plain = model(x)
        for m in quant_modules(model):
            m.quant_enabled = True
    assert bool(torch.isfinite(quantized).all()) and not torch.equal(quantized, plain)
    assert float((quantized - plain).abs().max()) < 0.5  # quantized, not broken


def export_leaves_model_alone(model: nn.Module, x: torch.Tensor, path: Path, quantize: bool) -> dict:
    """transform_to_onnx on a GPU model: the model stays on its device, in its mode, bit-identical."""
    training = model.training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(x)
    check = transform_to_onnx(model, path, x, quantize)
    assert model.training == training
    assert_model_on_device(model)
    assert_state_equal(model.state_dict(), state)
    assert not in_export_mode(model)
    with torch.no_grad():
        assert torch.equal(model(x), before)
    return check


def test_onnx_export_of_a_gpu_model(tmp_path):
    torch.manual_seed(0)
    model = C2SRCNN(1, 2).to(DEVICE).eval()
    check = export_leaves_model_alone(model, images(1, 16)[0][:1], tmp_path / "float.onnx", False)
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and not check["integer_ops"]
    check = export_leaves_model_alone(model, images(1, 16)[0], tmp_path / "auto.onnx", True)  # PTQ of a copy
    assert check["passed"] and check["calibrated_on_dummy_input"] and check["integer_ops"].get("QLinearConv")
    assert not quant_modules(model)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.file_config(model, opt, SR_SCHEDULES / "quantization_linear_w8a8.yaml")
    run_scheduled(model, opt, sched, [0], [(x, x) for x in images(3)])
    model.eval()
    check = export_leaves_model_alone(model, images(1, 64, seed=6)[0][:1], tmp_path / "int8.onnx", True)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert check["passed"] and check["integer_ops"].get("QLinearConv") == convs
    assert check["weights_exact"] and check["max_abs_diff"] == 0.0


def test_post_training_quantization_on_the_gpu(tmp_path):
    torch.manual_seed(0)
    model = C2SRCNN(1, 2).to(DEVICE).eval()
    with torch.no_grad():
        model.last_part.weight.normal_(std=0.005)  # a last layer that does something, as after training
    x = images(1, 24, seed=7)[0]
    with torch.no_grad():
        plain = model(x)
    sched = compress.file_config(model, None, SR_SCHEDULES / "post_train_w8a8.yaml")
    quantizer = sched.policies[0].component
    sched.on_epoch_begin(0)
    assert_model_on_device(model)
    with torch.no_grad():
        for batch in images(8, seed=8):  # the first calibration_batches forward passes calibrate
            model(batch)
    assert quantizer.calibrated
    ranges = [m for m in model.modules() if isinstance(m, ActQuant) and m.mode == "calib"]
    assert ranges and all(bool(m.initialized) and float(m.lo) <= float(m.hi) for m in ranges)
    assert_model_on_device(model)  # calibration statistics on the device
    with torch.no_grad():
        first = model(x)
    assert not torch.equal(first, plain) and float((first - plain).abs().max()) < 0.1

    quantizer.calibrate(images(3, seed=9))  # explicit re-calibration on GPU batches
    assert quantizer.calibrated
    with torch.no_grad():
        again = model(x)
    assert bool(torch.isfinite(again).all()) and float((again - plain).abs().max()) < 0.1
    check = export_leaves_model_alone(model, images(1, 64, seed=10)[0][:1], tmp_path / "ptq.onnx", True)
    assert check["passed"] and check["integer_ops"].get("QLinearConv")


# ---------------------------------------------------------------------------------------------------
# 5. Sensitivity analysis on the GPU


class SenseNet(nn.Module):
    """A skip tensor that crosses the pruned layers, an in-place add, BatchNorm and a PixelShuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 4, 3, padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = torch.relu(self.c1(x))
        y = self.c2(skip)
        y += skip
        return self.ps(self.c3(torch.relu(self.bn(y))))


def sense_metrics(out: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    mse = ((out - target) ** 2).mean()
    return {"mse": mse, "psnr": -10 * torch.log10(mse)}


@pytest.mark.parametrize("sense_type", ["element", "filter", "channel"])
@pytest.mark.parametrize("net", ["skip_inplace", "c2srcnn"])  # NCHW / channels-last cached runs ('auto')
def test_sensitivity_on_the_gpu_equals_the_whole_model_path(sense_type, net):
    torch.manual_seed(0)
    model = randomize(SenseNet()) if net == "skip_inplace" else C2SRCNN(1, 2, d=16, s=8, m=2)
    if net == "c2srcnn":
        with torch.no_grad():
            model.last_part.weight.normal_(std=0.02)
    model = model.to(DEVICE)
    side = 24 if net == "skip_inplace" else 12
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(2, 1, 12, 12, generator=gen), torch.rand(2, 1, side, side, generator=gen)) for _ in range(3)]
    ev = Evaluation(data, sense_metrics)  # CPU batches: the tool moves them to the model's device
    before = {k: v.clone() for k, v in model.state_dict().items()}
    identity = {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()}
    fast = sensitivity_analysis(model, None, ev, sense_type, progress=False)
    slow = sensitivity_analysis(model, None, ev, sense_type, use_cache=False, progress=False)
    assert_state_equal(model.state_dict(), before)
    assert {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()} == identity
    assert_model_on_device(model)
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-5, atol=1e-8)
    assert list(fast.columns) == ["parameter", "sparsity", "actual_sparsity", "mse", "psnr"]
    assert fast["mse"].nunique() > 3  # levels really prune
    baseline = ev(model)
    level0 = fast[fast["sparsity"] == 0.0]
    assert np.allclose(level0["mse"], baseline["mse"], rtol=1e-6)
    if sense_type == "element":
        weight = "c2.weight" if net == "skip_inplace" else "mid_part.1.weight"
        c2 = fast[fast["parameter"] == weight]
        numel = dict(model.named_parameters())[weight].numel()
        expected = [math.floor(s * numel + 1e-9) / numel for s in c2["sparsity"]]
        np.testing.assert_allclose(c2["actual_sparsity"], expected)


# ---------------------------------------------------------------------------------------------------
# 6. Checkpoints across devices

AGP_SR = {"version": 1,
          "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.2, "final_sparsity": 0.6,
                            "weights": ["mid_part.1.weight", "mid_part.3.weight"]}},
          "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 2}]}
THIN_SR = {"version": 1,
           "pruners": {"f": {"class": "L1RankedStructureParameterPruner",
                             "reg_regims": {"mid_part.0.0.weight": [0.4, "3D"], "mid_part.1.weight": [0.4, "3D"]}}},
           "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
           "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]},
                        {"extension": {"instance_name": "t"}, "epochs": [0]}]}
QUANT_SR = {"version": 1,
            "quantizers": {"q": {"class": "DorefaQuantizer", "bits_activations": 8, "bits_weights": 8}},
            "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 3}]}
ARCH = {"name": "C2SRCNN", "kwargs": {"num_channels": 1, "upscale_factor": 2}}


def trained_checkpoint(schedule: dict, device: torch.device, path: Path):
    """C2SRCNN trained 2 epochs on `device` with `schedule` and Adam, saved; returns (model, scheduler, path)."""
    torch.manual_seed(0)
    model = C2SRCNN().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.dict_config(model, opt, schedule, dummy_input=torch.zeros(1, 1, 24, 24, device=device))
    x = torch.rand(4, 1, 24, 24, generator=torch.Generator().manual_seed(0)).to(device)
    run_scheduled(model, opt, sched, 2, [(x, x)] * 3)
    state = {"format": 1, "app": "SR", "arch": ARCH, "model": model.state_dict(), "schedule": sched.schedule,
             "scheduler": sched.state_dict(), "optimizer": opt.state_dict(), "epoch": 1, "best_metric": 0.0,
             "options": {}, "rng": rng_states()}
    return model.eval(), opt, save_checkpoint(state, path)


@pytest.mark.parametrize("schedule", [AGP_SR, THIN_SR, QUANT_SR], ids=["agp", "thinned", "quantized"])
@pytest.mark.parametrize("direction", ["gpu_to_cpu", "cpu_to_gpu"])
def test_checkpoint_rebuilds_on_the_other_device(schedule, direction, tmp_path):
    cpu = torch.device("cpu")
    source, target = (DEVICE, cpu) if direction == "gpu_to_cpu" else (cpu, DEVICE)
    model, opt, path = trained_checkpoint(schedule, source, tmp_path / "c.pth")
    ckpt = load_checkpoint(path, "SR")
    rebuilt, rsched, ropt = rebuild_model(ckpt, build_model, device=target, dummy_input=torch.zeros(1, 1, 24, 24),
                                          optimizer_factory=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
    for name, t in [*rebuilt.named_parameters(), *rebuilt.named_buffers()]:
        assert t.device.type == target.type, name
    assert all(m.device.type == target.type for m in rsched.masks.values())
    assert_state_equal(rebuilt.state_dict(), model.state_dict())  # weights, ranges: bit for bit
    assert rsched.masks.keys() == ckpt["scheduler"]["masks"]["masks"].keys()
    for name, mask in rsched.masks.items():
        assert torch.equal(mask.cpu(), ckpt["scheduler"]["masks"]["masks"][name])
    for p, q in zip(opt.param_groups[0]["params"], ropt.param_groups[0]["params"], strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt.state[p][key].device.type == source.type and ropt.state[q][key].device.type == target.type
            assert torch.equal(opt.state[p][key].cpu(), ropt.state[q][key].cpu())

    rebuilt.eval()
    x = torch.rand(1, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, expected = rebuilt(x.to(target)).cpu(), model(x.to(source)).cpu()
    if schedule is QUANT_SR:  # float sums differ by device; a value on a rounding tie may move one 8-bit step
        assert float((got - expected).abs().mean()) < 1e-3
    else:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    same_device, _, _ = rebuild_model(ckpt, build_model, device=source, dummy_input=torch.zeros(1, 1, 24, 24))
    with torch.no_grad():  # on the device it was saved from, the rebuilt model computes exactly the same
        assert torch.equal(same_device.eval()(x.to(source)), model(x.to(source)))

    rebuilt.train()  # and training continues where it was rebuilt
    run_scheduled(rebuilt, ropt, rsched, [2], [(x.to(target), x.to(target))])
    for name, mask in rsched.masks.items():
        assert bool((dict(rebuilt.named_parameters())[name][mask == 0] == 0).all())


# ---------------------------------------------------------------------------------------------------
# 7. The SR app end to end on the GPU: train.py, test.py --reports, stop + resume bit for bit

AGP_RESUME = AGP.replace("ending_epoch: 2", "ending_epoch: 3")


def test_sr_app_trains_and_tests_on_the_gpu(tmp_path):
    small_validation_set(tmp_path)
    r = run_app(tmp_path, "train.py", "--optform=SR", f"--compress={SR_SCHEDULES / 'agp_prune.yaml'}",
                "--device", DEVICE.type, "--nEpochs", "2", "--save", "gpu", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"device {DEVICE.type}" in (tmp_path / "logs/gpu/gpu.log").read_text()
    ck = load(tmp_path / "checkpoints/gpu/latest.pth")
    assert ck["epoch"] == 1 and ck["options"]["device"] == DEVICE.type
    # agp_prune.yaml: 5% -> 50% over epochs 0-5, every 25 minibatches; with 3 minibatches per epoch the
    # last step was epoch 1, minibatch 0: t = 1 / 5 of the schedule
    level = 0.5 + (0.05 - 0.5) * (1 - 1 / 5) ** 3
    masks = ck["scheduler"]["masks"]["masks"]
    assert len(masks) == 6
    for name, mask in masks.items():
        weight = ck["model"][name]
        assert int((mask == 0).sum()) == math.floor(level * mask.numel() + 1e-9), name
        assert bool((weight[mask == 0] == 0).all()), name

    r = run_app(tmp_path, "test.py", "--optform=SR", "--model=checkpoints/gpu/best.pth", "--device", DEVICE.type,
                "--testdata", "val", "--reports")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "FAILED" not in r.stdout + r.stderr
    rows = list(csv.DictReader((tmp_path / "results/gpu/metrics.csv").open()))
    assert [row["image"] for row in rows] == ["rocket_crop", "mean"]
    assert all(15 < float(row["psnr"]) < 60 for row in rows)
    reports = tmp_path / "results/gpu/reports"
    for name in ("sense_file.xlsx", "sense_file.csv", "spars_file.xlsx", "macs_file.xlsx", "model.onnx"):
        assert (reports / name).is_file(), name
    assert (reports / "arch.png").is_file() or (reports / "arch.dot").is_file()
    sense = pd.read_csv(reports / "sense_file.csv")
    assert len(sense) == 8 * 10 and sense["psnr"].nunique() > 3  # C2SRCNN's 8 convs x 10 levels


def test_sr_app_killed_on_the_gpu_resumes_bit_exactly(tmp_path):
    small_validation_set(tmp_path)
    (tmp_path / "agp.yaml").write_text(AGP_RESUME)
    args = ["--optform=SR", "--compress=agp.yaml", "--device", DEVICE.type, "--nEpochs", "3",
            "--iters_per_epoch", "40", "--crop_size", "16", "--batchSize", "4", "--print_freq", "1",
            "--testdata", "val"]
    r = run_app(tmp_path, "train.py", *args, "--save", "full")
    assert r.returncode == 0, r.stderr[-3000:]

    proc = subprocess.Popen(command("train.py", *args, "--save", "killed"), cwd=tmp_path,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_file = tmp_path / "logs/killed/killed.log"
    deadline = time.time() + 240
    try:  # kill it in the middle of epoch 1 (the log has a line per minibatch)
        while proc.poll() is None and time.time() < deadline:
            if log_file.exists() and "epoch 1 [2/40]" in log_file.read_text():
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished (or failed) before it could be killed"
    latest = tmp_path / "checkpoints/killed/latest.pth"
    killed_at = load(latest)["epoch"]
    assert killed_at < 2

    r = run_app(tmp_path, "train.py", "--optform=SR", "--resume", str(latest))
    assert r.returncode == 0, r.stderr[-3000:]
    full, resumed = load(tmp_path / "checkpoints/full/latest.pth"), load(latest)
    assert resumed["options"]["device"] == DEVICE.type
    assert resumed["epoch"] == 2 and [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert full["scheduler"]["masks"]["masks"].keys() == resumed["scheduler"]["masks"]["masks"].keys()
    for key, value in full["scheduler"]["masks"]["masks"].items():
        assert torch.equal(value, resumed["scheduler"]["masks"]["masks"][key]), key
    np.testing.assert_equal([h["psnr"] for h in full["history"]], [h["psnr"] for h in resumed["history"]])
    assert full["optimizer"]["state"][0]["step"] == resumed["optimizer"]["state"][0]["step"]
    for index, state in full["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], resumed["optimizer"]["state"][index]["exp_avg"])


# ---------------------------------------------------------------------------------------------------
# 8. torchrun + DDP with CUDA's backend (nccl, one process per GPU): train, checkpoint, resume in one process


@pytest.mark.parametrize("nproc", [1, 2])
def test_torchrun_trains_with_nccl_and_resumes_in_one_process(tmp_path, nproc):
    if DEVICE.type == "cuda" and torch.cuda.device_count() < nproc:
        pytest.skip(f"{nproc} processes need {nproc} GPUs (nccl allows one process per GPU); "
                    f"this machine has {torch.cuda.device_count()}")
    small_validation_set(tmp_path)
    (tmp_path / "agp.yaml").write_text(AGP)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train.py"), "--optform=SR", "--compress=agp.yaml", "--device", DEVICE.type,
           "--nEpochs", "2", "--save", "ddp", *TINY]
    r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    backend = "nccl" if DEVICE.type == "cuda" else "gloo"
    log = (tmp_path / "logs/ddp/ddp.log").read_text()
    assert f"backend {backend}" in r.stdout + r.stderr + log
    if nproc > 1:
        assert f"{nproc} processes (DDP, backend {backend})" in log
    ck = load(tmp_path / "checkpoints/ddp/latest.pth")
    assert ck["epoch"] == 1 and ck["world_size"] == nproc and ck["options"]["device"] == DEVICE.type
    for name, mask in ck["scheduler"]["masks"]["masks"].items():
        assert 0 < int((mask == 0).sum()) < mask.numel(), name
        assert bool((ck["model"][name][mask == 0] == 0).all()), name

    r = run_app(tmp_path, "train.py", "--optform=SR", "--resume", "checkpoints/ddp/latest.pth", "--nEpochs", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load(tmp_path / "checkpoints/ddp/latest.pth")
    assert ck["epoch"] == 2 and ck["world_size"] == 1 and ck["options"]["device"] == DEVICE.type
