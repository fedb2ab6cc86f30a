"""Each pruner's exact sparsity, the AGP curve, structured groups and masks that momentum cannot undo."""
import math

import pytest
import torch

import compress
from compress.pruning.criteria import count_to_prune, magnitude_level_mask
from tests.scheduled import run_scheduled

from .nets import Plain, Residual, sgd


def sparsity(t: torch.Tensor) -> float:
    return float((t == 0).sum()) / t.numel()


def run_epochs(model, sched, opt, epochs, minibatches=3, record=None):
    x = torch.randn(2, 1, 6, 6)
    run_scheduled(model, opt, sched, epochs, [(x, None)] * minibatches, record=record,
                  loss=lambda out, _: out.pow(2).mean())


@pytest.mark.parametrize("level,n,expected", [(0.29, 100, 29), (0.3, 10, 3), (0.7, 10, 7), (0.0, 5, 0),
                                              (0.999, 4, 3), (0.5, 7, 3)])
def test_count_to_prune_is_floor(level, n, expected):
    assert count_to_prune(level, n) == expected


@pytest.mark.parametrize("level,n,round_to,expected", [(0.5, 56, 8, 24), (0.5, 12, 8, 4), (0.1, 12, 8, 0),
                                                       (0.9, 12, 8, 4), (0.5, 64, 16, 32), (0.5, 28, 1, 14)])
def test_count_to_prune_rounds_the_kept_count_up(level, n, round_to, expected):
    assert count_to_prune(level, n, round_to) == expected


def test_agp_global_ranking_prunes_the_smallest_across_weights():
    model = Plain()
    with torch.no_grad():
        model.conv2.weight.mul_(10.0)  # conv2's weights are all larger: conv3 / conv1 must give up more
    opt = sgd(model)
    weights = ["conv1.weight", "conv2.weight", "conv3.weight"]
    mags = torch.cat([dict(model.named_parameters())[w].detach().abs().flatten() for w in weights])
    sched = compress.dict_config(model, opt, {"pruners": {"agp": {
        "class": "AutomatedGradualPruner", "initial_sparsity": 0.5, "final_sparsity": 0.5, "weights": weights,
        "global_ranking": True}}, "policies": [{"pruner": {"instance_name": "agp"}, "epochs": [0]}]})
    sched.on_epoch_begin(0, opt)
    params = dict(model.named_parameters())
    zero = torch.cat([(params[w] == 0).flatten() for w in weights])
    assert int(zero.sum()) == math.floor(0.5 * mags.numel())
    assert mags[zero].max() <= mags[~zero].min()  # exactly the globally smallest
    assert float((params["conv2.weight"] == 0).float().mean()) < 0.5 < float((params["conv3.weight"] == 0).float().mean())
    with pytest.raises(compress.ScheduleError, match="cannot be ranked globally"):
        compress.dict_config(Plain(), None, {"pruners": {"agp": {
            "class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.5,
            "weights": ["conv1.weight", "*"], "global_ranking": True}},
            "policies": [{"pruner": {"instance_name": "agp"}, "epochs": [0]}]})


def test_round_to_keeps_a_multiple_of_channels_and_is_checked():
    model = Plain(c=12)
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {"f": {
        "class": "L1RankedStructureParameterPruner", "reg_regims": {"conv2.weight": [0.5, "3D"]}, "round_to": 8}},
        "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]}]})
    norms = model.conv2.weight.detach().flatten(1).abs().sum(1)
    sched.on_epoch_begin(0, opt)
    zero = (model.conv2.weight.flatten(1) == 0).all(dim=1)
    assert int(zero.sum()) == 4  # 6 kept would be asked; rounded up to 8
    assert sorted(torch.nonzero(zero).flatten().tolist()) == sorted(torch.argsort(norms)[:4].tolist())
    with pytest.raises(compress.ScheduleError, match="round_to must be >= 1"):
        compress.dict_config(Plain(), None, {"pruners": {"f": {
            "class": "Pruner", "criterion": "l1", "group_type": "Filters", "final_sparsity": 0.5,
            "weights": ["conv2.weight"], "round_to": 0}},
            "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]}]})


def test_magnitude_level_prunes_exactly_floor_and_smallest():
    w = torch.arange(1, 11, dtype=torch.float32).view(2, 5) * torch.tensor([1, -1] * 5).view(2, 5)
    mask = magnitude_level_mask(w, 0.35)
    assert int((mask == 0).sum()) == 3
    assert torch.equal(mask.flatten()[:3], torch.zeros(3))  # |1|, |2|, |3| go first


def test_agp_curve_at_every_scheduled_epoch_with_initial_zero():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {"agp": {
        "class": "AutomatedGradualPruner", "initial_sparsity": 0.0, "final_sparsity": 0.6,
        "weights": ["conv2.weight"]}}, "policies": [{"pruner": {"instance_name": "agp"},
                                                    "starting_epoch": 1, "ending_epoch": 8, "frequency": 2}]})
    seen = {}
    run_epochs(model, sched, opt, 9, record=lambda e, i: seen.setdefault(e, sparsity(model.conv2.weight)))
    n = model.conv2.weight.numel()
    span = 6  # scheduled epochs 1, 3, 5, 7: Distiller's ((8 - 1 - 1) // 2) * 2
    for epoch in (1, 3, 5, 7):
        target = 0.6 + (0.0 - 0.6) * (1 - (epoch - 1) / span) ** 3
        assert seen[epoch] == math.floor(target * n + 1e-9) / n, epoch
    assert seen[7] == math.floor(0.6 * n) / n  # final exactly at the last scheduled epoch
    assert seen[8] == seen[7]  # and kept afterwards
    assert seen[0] == 0.0


def test_agp_single_scheduled_epoch_reaches_final():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {"agp": {
        "class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.5,
        "weights": ["conv2.weight"]}}, "policies": [{"pruner": {"instance_name": "agp"}, "epochs": [0]}]})
    run_epochs(model, sched, opt, 1)
    assert sparsity(model.conv2.weight) == math.floor(0.5 * 576) / 576


def test_agp_minibatch_frequency_reaches_final_at_last_scheduled_minibatch():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {"agp": {
        "class": "AutomatedGradualPruner", "initial_sparsity": 0.0, "final_sparsity": 0.5,
        "weights": ["conv2.weight"]}}, "policies": [{"pruner": {"instance_name": "agp",
                                                                "args": {"mini_batch_pruning_frequency": 2}},
                                                    "starting_epoch": 0, "ending_epoch": 2}]})
    seen = {}
    run_epochs(model, sched, opt, 3, minibatches=5,
               record=lambda e, i: seen.__setitem__((e, i), sparsity(model.conv2.weight)))
    n = 576
    first, last = 0.0, 1 + 4 / 5  # minibatches 0, 2, 4 of epochs 0 and 1
    for (e, i), value in seen.items():
        if e < 2 and i % 2 == 0:
            frac = (e + i / 5 - first) / (last - first)
            assert value == math.floor((0.5 - 0.5 * (1 - frac) ** 3) * n + 1e-9) / n, (e, i)
    assert seen[(1, 4)] == math.floor(0.5 * n) / n
    assert seen[(1, 3)] < seen[(1, 4)]
    assert seen[(2, 4)] == seen[(1, 4)]


def test_sparsity_level_and_wildcard():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {"lv": {
        "class": "SparsityLevelParameterPruner", "levels": {"conv1.weight": 0.25, "*": 0.5}}},
        "policies": [{"pruner": {"instance_name": "lv"}, "epochs": [0]}]})
    run_epochs(model, sched, opt, 1)
    assert sparsity(model.conv1.weight) == math.floor(0.25 * 72) / 72
    assert sparsity(model.conv2.weight) == 0.5
    assert sparsity(model.conv3.weight) == 0.5
    assert sparsity(model.conv2.bias) == 0.0  # the wildcard covers weights, not biases


def test_magnitude_threshold_and_sensitivity_pruners():
    model = Plain()
    w = model.conv2.weight.detach().clone()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {
        "mag": {"class": "MagnitudeParameterPruner", "thresholds": {"conv2.weight": 0.05}},
        "sens": {"class": "SensitivityPruner", "sensitivities": {"conv1.weight": 0.5}}},
        "policies": [{"pruner": {"instance_name": "mag"}, "epochs": [0]},
                     {"pruner": {"instance_name": "sens"}, "epochs": [0]}]})
    w1 = model.conv1.weight.detach().clone()
    sched.on_epoch_begin(0, opt)
    assert torch.equal(model.conv2.weight == 0, w.abs() <= 0.05)
    assert torch.equal(model.conv1.weight == 0, w1.abs() <= 0.5 * w1.std())


@pytest.mark.parametrize("cls,p", [("L1RankedStructureParameterPruner", 1), ("L2RankedStructureParameterPruner", 2)])
def test_ranked_filters_reg_regims_prunes_lowest_norm_filters_and_bias(cls, p):
    model = Plain()
    opt = sgd(model)
    w = model.conv2.weight.detach().clone()
    sched = compress.dict_config(model, opt, {"pruners": {"f": {
        "class": cls, "reg_regims": {"conv2.weight": [0.4, "3D"], "conv3.weight": [0.5, "Channels"]}}},
        "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]}]})
    sched.on_epoch_begin(0, opt)
    norms = w.flatten(1).norm(p, dim=1)
    dropped = torch.argsort(norms)[:3]  # floor(0.4 * 8) filters
    zero_filters = (model.conv2.weight.flatten(1) == 0).all(dim=1)
    assert sorted(torch.nonzero(zero_filters).flatten().tolist()) == sorted(dropped.tolist())
    assert torch.equal(model.conv2.bias[zero_filters], torch.zeros(3))  # the filter's bias goes with it
    zero_channels = (model.conv3.weight.transpose(0, 1).flatten(1) == 0).all(dim=1)
    assert int(zero_channels.sum()) == 4


def test_group_type_form_and_agp_structured():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {
        "f": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters", "desired_sparsity": 0.5,
              "weights": ["conv1.weight"]},
        "g": {"class": "L2RankedStructureParameterPruner_AGP", "initial_sparsity": 0.125, "final_sparsity": 0.5,
              "group_type": "Filters", "weights": ["conv2.weight"]}},
        "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]},
                     {"pruner": {"instance_name": "g"}, "starting_epoch": 0, "ending_epoch": 3}]})
    seen = []
    run_epochs(model, sched, opt, 3, record=lambda e, i: i == 0 and seen.append(
        int((model.conv2.weight.flatten(1) == 0).all(dim=1).sum())))
    assert int((model.conv1.weight.flatten(1) == 0).all(dim=1).sum()) == 4
    assert seen == [1, math.floor((0.5 + (0.125 - 0.5) * 0.5 ** 3) * 8), 4]


def test_leader_group_on_residual_block_prunes_the_same_filters():
    model = Residual()
    opt = sgd(model)
    with torch.no_grad():  # make conv_b's own ranking differ from conv_a's
        model.conv_b.weight.copy_(model.conv_b.weight.flip(0))
    a = model.conv_a.weight.detach().clone()
    sched = compress.dict_config(model, opt, {"pruners": {"f": {
        "class": "L1RankedStructureParameterPruner", "group_type": "Filters", "desired_sparsity": 0.5,
        "weights": ["conv_a.weight", "conv_b.weight"], "group_dependency": "Leader"}},
        "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]}]})
    sched.on_epoch_begin(0, opt)
    za = (model.conv_a.weight.flatten(1) == 0).all(dim=1)
    zb = (model.conv_b.weight.flatten(1) == 0).all(dim=1)
    assert torch.equal(za, zb) and int(za.sum()) == 4
    assert sorted(torch.nonzero(za).flatten().tolist()) == sorted(torch.argsort(a.flatten(1).abs().sum(1))[:4].tolist())
    assert torch.equal(model.conv_a.bias[za], torch.zeros(4)) and torch.equal(model.conv_b.bias[zb], torch.zeros(4))


@pytest.mark.parametrize("make_opt", [lambda m: sgd(m, momentum=0.9),
                                      lambda m: torch.optim.Adam(m.parameters(), lr=0.01)], ids=["sgd", "adam"])
def test_pruned_weights_stay_zero_with_momentum(make_opt):
    model = Plain()
    opt = make_opt(model)
    sched = compress.dict_config(model, opt, {"pruners": {"lv": {
        "class": "SparsityLevelParameterPruner", "levels": {"conv2.weight": 0.5}}},
        "policies": [{"pruner": {"instance_name": "lv"}, "epochs": [2]}]})
    checked = []

    def record(e, i):
        if e >= 2:  # every forward after pruning sees the pruned weights at zero
            mask = sched.masks["conv2.weight"]
            assert torch.equal(model.conv2.weight * (1 - mask), torch.zeros_like(mask))
            checked.append(e)

    run_epochs(model, sched, opt, 4, record=record)  # epochs 0-1 build momentum, then prune
    assert len(checked) == 6
    assert sparsity(model.conv2.weight) == 0.5


def test_mask_gradients_zeroes_pruned_gradients():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {"lv": {
        "class": "SparsityLevelParameterPruner", "levels": {"conv2.weight": 0.5}}},
        "policies": [{"pruner": {"instance_name": "lv", "args": {"mask_gradients": True}}, "epochs": [0]}]})
    sched.on_epoch_begin(0, opt)
    model(torch.randn(2, 1, 6, 6)).pow(2).mean().backward()
    mask = sched.masks["conv2.weight"]
    assert torch.equal(model.conv2.weight.grad * (1 - mask), torch.zeros_like(mask))
    assert float(model.conv2.weight.grad.abs().sum()) > 0


def test_optimizer_state_of_pruned_elements_is_zeroed_when_pruned():
    model = Plain()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = compress.dict_config(model, opt, {"pruners": {"lv": {
        "class": "SparsityLevelParameterPruner", "levels": {"conv2.weight": 0.5}}},
        "policies": [{"pruner": {"instance_name": "lv"}, "epochs": [1]}]})
    run_epochs(model, sched, opt, 1)
    sched.on_epoch_begin(1, opt)
    mask = sched.masks["conv2.weight"]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[model.conv2.weight][key] * (1 - mask), torch.zeros_like(mask))


def test_generic_pruner_combines_criterion_and_schedule():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {"pruners": {"p": {
        "class": "Pruner", "criterion": "l1", "group_type": "Filters", "initial_sparsity": 0.0,
        "final_sparsity": 0.5, "weights": ["conv2.weight"]}},
        "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 2}]})
    run_epochs(model, sched, opt, 2)
    assert int((model.conv2.weight.flatten(1) == 0).all(dim=1).sum()) == 4
