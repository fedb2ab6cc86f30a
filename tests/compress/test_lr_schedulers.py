"""LR schedules follow Distiller's semantics: at the end of epoch e the schedule is set to epoch e + 1.

The expected curves are Distiller's closed forms evaluated at the absolute epoch (its LRPolicy calls
`lr_scheduler.step(epoch=current_epoch + 1)` at the end of every scheduled epoch, and the LR keeps its
value outside the policy's epochs).
"""
import bisect
import math

import pytest
import torch

import compress

from .nets import Plain

BASE = 0.1


def curve(schedule: dict, epochs: int) -> list[float]:
    """The LR in force during each epoch 0..epochs-1 (set by the previous epoch's end)."""
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=BASE)
    sched = compress.dict_config(model, opt, schedule)
    lrs = []
    for epoch in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.on_epoch_end(epoch, opt)
    return lrs


def distiller(formula, scheduled: list[int], epochs: int) -> list[float]:
    """Distiller's LR per epoch: base until the first scheduled epoch ends, then formula(e + 1) of the last
    scheduled epoch e before it."""
    out, lr = [], BASE
    for epoch in range(epochs):
        out.append(lr)
        if epoch in scheduled:
            lr = formula(epoch + 1)
    return out


def one(cls: dict, **timing) -> dict:
    return {"lr_schedulers": {"lr": cls}, "policies": [{"lr_scheduler": {"instance_name": "lr"}, **timing}]}


CASES = [
    # AlexNet's ExponentialLR from epoch 24 (Distiller: LR/base = 0.9 ** 25 = 0.072 after epoch 24)
    ({"class": "ExponentialLR", "gamma": 0.9}, {"starting_epoch": 24, "ending_epoch": 200},
     lambda e: BASE * 0.9 ** e),
    ({"class": "StepLR", "step_size": 45, "gamma": 0.1}, {"starting_epoch": 30, "ending_epoch": 200},
     lambda e: BASE * 0.1 ** (e // 45)),
    ({"class": "MultiStepLR", "milestones": [60, 75], "gamma": 0.2}, {"starting_epoch": 0, "ending_epoch": 90},
     lambda e: BASE * 0.2 ** bisect.bisect_right([60, 75], e)),
    ({"class": "MultiStepMultiGammaLR", "milestones": [80, 120, 160], "gammas": [0.1, 0.1, 0.2]},
     {"starting_epoch": 0, "ending_epoch": 200},
     lambda e: BASE * math.prod([0.1, 0.1, 0.2][:bisect.bisect_right([80, 120, 160], e)])),
    ({"class": "CosineAnnealingLR", "T_max": 40}, {"starting_epoch": 10, "ending_epoch": 50, "frequency": 2},
     lambda e: BASE * (1 + math.cos(math.pi * e / 40)) / 2),
    ({"class": "ExponentialLR", "gamma": 0.95}, {"epochs": [3, 7, 8]}, lambda e: BASE * 0.95 ** e),
]


@pytest.mark.parametrize("cls, timing, formula", CASES, ids=lambda c: c.get("class") if isinstance(c, dict) and
                         "class" in c else None)
def test_lr_follows_distillers_formula_at_the_absolute_epoch(cls, timing, formula):
    epochs = 210 if timing.get("ending_epoch", 0) > 100 else 100
    if "epochs" in timing:
        scheduled = timing["epochs"]
    else:
        scheduled = list(range(timing["starting_epoch"], timing["ending_epoch"], timing.get("frequency", 1)))
    got = curve(one(cls, **timing), epochs)
    assert got == pytest.approx(distiller(formula, scheduled, epochs), rel=1e-12, abs=1e-15)


def test_alexnet_exponential_after_epoch_24():
    lrs = curve(one({"class": "ExponentialLR", "gamma": 0.9}, starting_epoch=24, ending_epoch=200), 26)
    assert lrs[24] == BASE and lrs[25] / BASE == pytest.approx(0.9 ** 25)  # 0.072; counting from 24 gave 0.9


def test_policy_epoch_basis_counts_from_the_policys_first_epoch():
    schedule = one({"class": "ExponentialLR", "gamma": 0.9}, starting_epoch=24, ending_epoch=200)
    schedule["policies"][0]["lr_scheduler"]["args"] = {"epoch_basis": "policy"}
    lrs = curve(schedule, 27)
    assert lrs[25] / BASE == pytest.approx(0.9) and lrs[26] / BASE == pytest.approx(0.81)


def test_epoch_basis_is_checked():
    schedule = one({"class": "StepLR", "step_size": 2}, starting_epoch=0, ending_epoch=4)
    schedule["policies"][0]["lr_scheduler"]["args"] = {"epoch_basis": "relative"}
    with pytest.raises(compress.ScheduleError, match="epoch_basis must be one of absolute, policy"):
        compress.dict_config(Plain(), None, schedule)


def test_multi_gamma_needs_one_gamma_per_milestone():
    with pytest.raises(compress.ScheduleError, match="one gamma per milestone"):
        model = Plain()
        compress.dict_config(model, torch.optim.SGD(model.parameters(), lr=BASE), one(
            {"class": "MultiStepMultiGammaLR", "milestones": [1, 2], "gammas": [0.1]},
            starting_epoch=0, ending_epoch=3))


def test_reduce_on_plateau_takes_distillers_metric_keys():
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=BASE)
    sched = compress.dict_config(model, opt, one({"class": "ReduceLROnPlateau", "patience": 0, "factor": 0.5},
                                                 starting_epoch=0, ending_epoch=5))
    for epoch in range(3):
        sched.on_epoch_end(epoch, opt, metrics={"min": 1.0, "max": 0.0})  # what Distiller's sample app passes
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE * 0.25)


def test_a_group_added_after_the_schedule_follows_it():
    """PACT adds its clips' parameter group when the quantizer prepares; Distiller schedules them too."""
    model = Plain()
    opt = torch.optim.SGD(model.conv1.parameters(), lr=BASE)
    sched = compress.dict_config(model, opt, one({"class": "StepLR", "step_size": 1, "gamma": 0.5},
                                                 starting_epoch=0, ending_epoch=3))
    opt.add_param_group({"params": list(model.conv2.parameters()), "lr": 1.0})
    for epoch in range(2):
        opt.step()
        sched.on_epoch_end(epoch, opt)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([BASE * 0.25, 0.25])
