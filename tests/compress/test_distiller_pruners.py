"""The pruner classes and policy arguments taken from Distiller: their exact masks, from its documented behaviour.

Rows ranks a 2-D weight's input columns; Blocks of [filters, channels, 1, 1]; activation ranking (APoZ, mean)
from forward hooks; DropFilter (Bernoulli) and random-level masks for one minibatch; gradient and random
ranking; BatchNorm-folded ranking; the Distiller names that are refused; selection of the k lowest.
"""
import logging

import pytest
import torch
from torch import nn

import compress
from compress.pruning.criteria import lowest
from tests import distiller_models as dm
from tests.scheduled import run_scheduled

from .nets import Plain


def one_shot(cls: str, args: dict, epochs=(0,), policy_args: dict | None = None, **timing) -> dict:
    policy = {"pruner": {"instance_name": "p", **({"args": policy_args} if policy_args else {})}}
    policy.update(timing or {"epochs": list(epochs)})
    return {"pruners": {"p": {"class": cls, **args}}, "policies": [policy]}


def test_rows_prunes_the_input_columns_of_a_linear_weight():
    """Distiller ranks a 2-D weight's 'Rows' with its channel ranking: the columns (resnet20's fc: 32 of 64 inputs)."""
    torch.manual_seed(0)
    model = dm.resnet20_cifar()
    w = model.fc.weight
    sched = compress.dict_config(model, None, one_shot("L1RankedStructureParameterPruner", {
        "group_type": "Rows", "desired_sparsity": 0.5, "weights": ["module.fc.weight"]}))
    expected = torch.ones_like(w)
    expected[:, w.detach().abs().sum(0).argsort()[:32]] = 0
    sched.on_epoch_begin(0)
    assert torch.equal(sched.masks["fc.weight"], expected)
    assert int((w == 0).all(0).sum()) == 32 and not bool((w == 0).all(1).any())  # columns, not classes


def distiller_blocks_mask(w: torch.Tensor, fraction: float) -> torch.Tensor:
    """Distiller's documented Blocks ranking for block_shape [1, d, 1, 1]: L1 over d consecutive channels of one
    filter at one kernel position, the lowest int(fraction * blocks) zeroed."""
    d = 8
    f, c, kh, kw = w.shape
    view = w.detach().reshape(f * c // d, d, kh * kw)
    mags = view.abs().sum(1).flatten()
    keep = torch.ones_like(mags)
    keep[mags.argsort()[:int(fraction * mags.numel())]] = 0
    return keep.view(f * c // d, 1, kh * kw).expand(view.shape).reshape(w.shape)


def test_blocks_of_eight_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 4, 3))
    expected = distiller_blocks_mask(model[0].weight, 0.5)
    sched = compress.dict_config(model, None, one_shot("L1RankedStructureParameterPruner_AGP", {
        "initial_sparsity": 0.5, "final_sparsity": 0.6, "group_type": "Blocks", "weights": "0.weight",
        "kwargs": {"block_shape": [1, 8, 1, 1]}}, epochs=(0, 1)))
    sched.on_epoch_begin(0)
    assert torch.equal(sched.masks["0.weight"], expected)
    assert float((model[0].weight == 0).float().mean()) == 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"block_shape": [1, 3, 1, 1]}, "channels by 3"),
    ({"block_shape": [1, 8, 3, 3]}, "block height and width must be 1"),
    ({}, "needs kwargs: {block_shape"),
])
def test_blocks_are_checked_before_training(kwargs, message):
    model = nn.Sequential(nn.Conv2d(16, 4, 3))
    with pytest.raises(compress.ScheduleError, match=message):
        compress.dict_config(model, None, one_shot("L1RankedStructureParameterPruner", {
            "desired_sparsity": 0.5, "group_type": "Blocks", "weights": ["0.weight"], "kwargs": kwargs}))


class Trimmed(nn.Module):
    """conv1 -> relu1 as in Distiller's blocks, with 1x1 filters whose bias alone sets each channel."""

    def __init__(self, biases):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.bias.copy_(torch.tensor(biases))

    def forward(self, x):
        return self.conv2(self.relu1(self.conv1(x)))


@pytest.mark.parametrize("cls, biases, pruned", [
    ("ActivationAPoZRankedFilterPruner", [-1.0, 1.0, -1.0, 1.0], [0, 2]),  # APoZ 1 for channels 0 and 2
    ("ActivationMeanRankedFilterPruner", [0.1, 0.5, 0.3, 0.9], [0, 2]),  # the lowest mean activations
])
def test_activation_ranking_from_forward_hooks(cls, biases, pruned):
    model = Trimmed(biases)
    sched = compress.dict_config(model, None, one_shot(cls, {"group_type": "Filters", "desired_sparsity": 0.5,
                                                            "weights": ["module.conv1.weight"]}))
    model(torch.randn(2, 1, 4, 4))  # statistics come from the forward passes since the last step
    sched.on_epoch_begin(0)
    assert (sched.masks["conv1.weight"].flatten() == 0).nonzero().flatten().tolist() == pruned
    assert (model.conv1.bias == 0).nonzero().flatten().tolist() == pruned


def test_apoz_without_statistics_prunes_nothing_yet(caplog):
    caplog.set_level(logging.INFO)
    model = Trimmed([-1.0, 1.0, -1.0, 1.0])
    sched = compress.dict_config(model, None, one_shot("ActivationAPoZRankedFilterPruner_AGP", {
        "initial_sparsity": 0.25, "final_sparsity": 0.5, "group_type": "Filters", "weights": ["conv1.weight"]},
        epochs=(0, 1)))
    sched.on_epoch_begin(0)
    assert not sched.masks and "no activation statistics of 'relu1'" in caplog.text
    model(torch.randn(1, 1, 4, 4))
    sched.on_epoch_begin(1)
    assert int(sched.masks["conv1.weight"].flatten(1).eq(0).all(1).sum()) == 2


def test_apoz_needs_the_activation_module():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU())
    with pytest.raises(compress.ScheduleError, match=r"no activation module '0' for '0.weight' \(Distiller's rule"):
        compress.dict_config(model, None, one_shot("ActivationAPoZRankedFilterPruner", {
            "group_type": "Filters", "desired_sparsity": 0.5, "weights": ["0.weight"]}))
    sched = compress.dict_config(model, None, one_shot("ActivationAPoZRankedFilterPruner", {
        "group_type": "Filters", "desired_sparsity": 0.5, "weights": ["0.weight"], "activations": {"0.weight": "1"}}))
    assert sched is not None


def test_apoz_statistics_resume():
    model = Trimmed([-1.0, 1.0, -1.0, 1.0])
    schedule = one_shot("ActivationAPoZRankedFilterPruner", {"group_type": "Filters", "desired_sparsity": 0.5,
                                                             "weights": ["conv1.weight"]})
    sched = compress.dict_config(model, None, schedule)
    model(torch.randn(1, 1, 4, 4))
    state = sched.state_dict()
    other_model = Trimmed([-1.0, 1.0, -1.0, 1.0])
    other = compress.dict_config(other_model, None, schedule)
    other.load_state_dict(state)
    other.on_epoch_begin(0)  # the saved statistics, not new forward passes, decide
    assert int(other.masks["conv1.weight"].flatten(1).eq(0).all(1).sum()) == 2


DROP_FILTER_ARGS = {"mini_batch_pruning_frequency": 1, "discard_masks_at_minibatch_end": True,
                    "use_double_copies": True, "mask_on_forward_only": True, "mask_gradients": True}


def test_drop_filter_masks_one_minibatch_and_restores_the_weights():
    torch.manual_seed(0)
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compress.dict_config(model, opt, one_shot("BernoulliFilterPruner", {
        "desired_sparsity": 0.5, "group_type": "Filters", "weights": ["conv2.weight"], "seed": 3},
        policy_args=DROP_FILTER_ARGS))
    before = model.conv2.weight.detach().clone()
    g = torch.Generator().manual_seed(3)  # the pruner's generator, seeded as the schedule says
    keep = torch.bernoulli(torch.full((8,), 0.5, dtype=torch.float64), generator=g)
    scale = (keep * 8 / keep.sum()).float().view(-1, 1, 1, 1)
    seen = []
    model.conv2.register_forward_pre_hook(lambda m, args: seen.append(m.weight.detach().clone()))
    x = torch.randn(2, 1, 6, 6)
    run_scheduled(model, opt, sched, 1, [(x, x)])
    assert torch.equal(seen[0], before * scale)  # the forward pass saw the dropped and scaled filters
    dropped = keep == 0
    assert bool(dropped.any()) and torch.equal(model.conv2.weight[dropped], before[dropped])  # masked gradient
    assert not torch.equal(model.conv2.weight[~dropped], before[~dropped])  # the kept ones trained
    assert not sched.masks  # nothing stays


def test_drop_filter_needs_its_masks_discarded():
    with pytest.raises(compress.ScheduleError, match="discard_masks_at_minibatch_end: true"):
        compress.dict_config(Plain(), None, one_shot("BernoulliFilterPruner", {
            "desired_sparsity": 0.5, "group_type": "Filters", "weights": ["conv2.weight"]}))


def test_double_copies_need_before_parameter_optimization():
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compress.dict_config(model, opt, one_shot("BernoulliFilterPruner_AGP", {
        "initial_sparsity": 0.3, "final_sparsity": 0.5, "group_type": "Filters", "weights": ["conv2.weight"]},
        policy_args=DROP_FILTER_ARGS, starting_epoch=0, ending_epoch=2))
    sched.on_epoch_begin(0, opt)
    sched.on_minibatch_begin(0, 0, 1, opt)
    with pytest.raises(ValueError, match="call scheduler.before_parameter_optimization"):
        sched.on_minibatch_end(0, 0, 1, opt)


def test_random_level_draws_its_level_from_the_pruner_generator():
    torch.manual_seed(0)
    model = Plain()
    sched = compress.dict_config(model, None, one_shot("RandomLevelStructureParameterPruner", {
        "sparsity_range": [0.25, 0.75], "group_type": "Filters", "weights": ["conv2.weight"], "seed": 5}))
    g = torch.Generator().manual_seed(5)
    level = 0.25 + 0.5 * float(torch.rand((), dtype=torch.float64, generator=g))
    norms = model.conv2.weight.detach().abs().flatten(1).sum(1)
    sched.on_epoch_begin(0)
    zero = (model.conv2.weight.flatten(1) == 0).all(1)
    assert int(zero.sum()) == int(level * 8) and set(zero.nonzero().flatten().tolist()) == set(
        norms.argsort()[:int(level * 8)].tolist())


def test_random_pruners_resume_their_draws():
    schedule = one_shot("RandomRankedFilterPruner_AGP", {
        "initial_sparsity": 0.25, "final_sparsity": 0.5, "group_type": "Filters", "weights": ["conv2.weight"]},
        starting_epoch=0, ending_epoch=3)
    torch.manual_seed(0)
    a = Plain()
    sa = compress.dict_config(a, None, schedule)
    sa.on_epoch_begin(0)
    state = sa.state_dict()
    torch.manual_seed(0)
    b = Plain()
    sb = compress.dict_config(b, None, schedule)
    sb.on_epoch_begin(0)
    sb.load_state_dict(state)
    sa.on_epoch_begin(2)
    sb.on_epoch_begin(2)
    assert torch.equal(sa.masks["conv2.weight"], sb.masks["conv2.weight"])


def test_gradient_ranking_prunes_the_lowest_weight_times_gradient():
    model = Plain()
    with torch.no_grad():
        model.conv2.weight.fill_(1.0)
    model.conv2.weight.grad = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 8, 3, 3).clone()
    sched = compress.dict_config(model, None, one_shot("GradientRankedFilterPruner", {
        "desired_sparsity": 0.25, "group_type": "Filters", "weights": ["conv2.weight"]}))
    sched.on_epoch_begin(0)
    assert (model.conv2.weight.flatten(1) == 0).all(1).nonzero().flatten().tolist() == [0, 1]


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.out = nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1))
            self.bn.weight.copy_(torch.tensor([10.0, 1.0, 1.0, 1.0]))

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.conv(x))))


@pytest.mark.parametrize("fold, pruned", [(False, 0), (True, 1)])
def test_fold_batchnorm_ranks_the_folded_filters(fold, pruned):
    """Folded norms are 10, 2, 3, 4: with folding filter 1 goes, without it filter 0 (norm 1)."""
    model = ConvBN()
    sched = compress.dict_config(model, None, one_shot("L1RankedStructureParameterPruner", {
        "desired_sparsity": 0.25, "group_type": "Filters", "weights": ["conv.weight"]},
        policy_args={"fold_batchnorm": fold}), dummy_input=torch.zeros(1, 1, 2, 2))
    sched.on_epoch_begin(0)
    assert (model.conv.weight.flatten() == 0).nonzero().flatten().tolist() == [pruned]


def test_fold_batchnorm_without_a_dummy_input_traces_on_the_first_forward():
    """No dummy_input: the epoch's pruning waits for the first forward, traced on its input, and folds then."""
    model = ConvBN()
    sched = compress.dict_config(model, None, one_shot("L1RankedStructureParameterPruner", {
        "desired_sparsity": 0.25, "group_type": "Filters", "weights": ["conv.weight"]},
        policy_args={"fold_batchnorm": True}))
    sched.on_epoch_begin(0)
    assert (model.conv.weight == 0).sum() == 0  # nothing pruned before the model has seen an input
    model(torch.zeros(2, 1, 3, 3))
    assert (model.conv.weight.flatten() == 0).nonzero().flatten().tolist() == [1]


@pytest.mark.parametrize("cls", ["SplicingPruner", "BaiduRNNPruner", "FMReconstructionChannelPruner"])
def test_distiller_pruners_not_provided_are_refused_by_name(cls):
    with pytest.raises(compress.ScheduleError, match=f"{cls}: Distiller's {cls} is not supported: "):
        compress.dict_config(Plain(), None, one_shot(cls, {"sensitivities": {"conv1.weight": 0.5}}))


@pytest.mark.parametrize("n", [1, 5, 300, 70000, 1_100_000])  # the last is selected within a sampled bracket
def test_lowest_selects_what_a_stable_sort_would(n):
    g = torch.Generator().manual_seed(n)
    for values in (torch.randint(0, 4, (n,), generator=g).float(), torch.randn(n, generator=g),
                   torch.randn(n, generator=g).round(decimals=2)):
        order = torch.argsort(values, stable=True)
        for k in (0, 1, n // 3, n - 1, n):
            expected = torch.zeros(n, dtype=torch.bool)
            expected[order[:k]] = True
            assert torch.equal(lowest(values, k), expected)


class HalfConv2(compress.Component):
    """A user's own pruner component (not built on Pruner): zeroes half of conv2 at each scheduled epoch."""

    def __init__(self, name=None):
        self.name = name

    def pruned_params(self, ctx):
        return {"conv2.weight"}

    def on_epoch_begin(self, ctx, step, timing):
        mask = torch.ones_like(ctx.masks.params["conv2.weight"])
        mask[:4] = 0
        ctx.masks.set("conv2.weight", mask)


def test_a_users_own_pruner_component_is_scheduled_and_checked(monkeypatch):
    monkeypatch.setitem(compress.PRUNERS._items, "HalfConv2", HalfConv2)
    model = Plain()
    sched = compress.dict_config(model, None, {"pruners": {"h": {"class": "HalfConv2"}},
                                               "policies": [{"pruner": {"instance_name": "h"}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    assert int((model.conv2.weight.flatten(1) == 0).all(1).sum()) == 4
    with pytest.raises(compress.ScheduleError, match="HalfConv2 is not built on compress's Pruner: it cannot take "
                                                     "fold_batchnorm"):
        compress.dict_config(model, None, {"pruners": {"h": {"class": "HalfConv2"}}, "policies": [
            {"pruner": {"instance_name": "h", "args": {"fold_batchnorm": True}}, "epochs": [0]}]})
    with pytest.raises(compress.ScheduleError, match="both prune 'conv2.weight' in epoch 0"):
        compress.dict_config(model, None, {
            "pruners": {"h": {"class": "HalfConv2"},
                        "l": {"class": "SparsityLevelParameterPruner", "levels": {"conv2.weight": 0.5}}},
            "policies": [{"pruner": {"instance_name": "h"}, "epochs": [0]},
                         {"pruner": {"instance_name": "l"}, "epochs": [0]}]})


def test_forward_only_masks_are_held_until_the_last_epoch_and_kept_with_keep_mask():
    """mask_on_forward_only + use_double_copies without discarding: the weights train unmasked, the forward
    passes see them masked, and keep_mask makes the masks permanent at the policy's last epoch (state round trip)."""
    schedule = one_shot("SparsityLevelParameterPruner", {"levels": {"conv2.weight": 0.5}}, policy_args={
        "mask_on_forward_only": True, "use_double_copies": True, "keep_mask": True}, starting_epoch=0, ending_epoch=2)
    torch.manual_seed(0)
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compress.dict_config(model, opt, schedule)
    x = torch.randn(2, 1, 6, 6)
    run_scheduled(model, opt, sched, 1, [(x, x)])
    assert not sched.masks and float((model.conv2.weight == 0).float().mean()) < 0.5  # trained unmasked
    state = sched.state_dict()
    assert float((state["policies"]["pruner:p"]["held"]["conv2.weight"] == 0).float().mean()) == 0.5
    torch.manual_seed(0)
    other_model = Plain()
    other_model.load_state_dict(model.state_dict())
    other_opt = torch.optim.SGD(other_model.parameters(), lr=0.1)
    other = compress.dict_config(other_model, other_opt, schedule)
    other.load_state_dict(state)
    run_scheduled(other_model, other_opt, other, [1], [(x, x)])
    assert float((other.masks["conv2.weight"] == 0).float().mean()) == 0.5  # kept at the last epoch
    assert float((other_model.conv2.weight == 0).float().mean()) == 0.5
