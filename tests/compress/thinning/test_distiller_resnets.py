"""Distiller-style filter-pruning schedules on Distiller's CIFAR ResNets, through file_config with no dummy_input.

The trace input comes from the schedule (`dataset:` on the thinning extension, or `input_shape:`) or from
the model's first forward; thinning happens at the first minibatch of its epoch as in Distiller (or at the
end with `thin_at: epoch_end`); the masked and the thinned model compute the same thing; a run stopped,
rebuilt and resumed ends bit-identical; and what cannot work is refused when the scheduler is built.
"""
import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compress
from tests.distiller_models import resnet20_cifar, resnet56_cifar
from tests.scheduled import run_scheduled

from .helpers import randomize

# In the manner of Distiller's pruning_filters_for_efficient_convnets / agp-pruning examples (our own
# levels and layers; names without the `module.` prefix of a DataParallel model).
ONE_SHOT = """\
version: 1
{input_shape}
pruners:
  inner_filters:
    class: 'L1RankedStructureParameterPruner'
    group_type: Filters
    desired_sparsity: 0.5
    weights: [layer1.0.conv1.weight, layer1.2.conv1.weight, layer2.1.conv1.weight, layer2.2.conv1.weight]
  stage3_filters:
    class: 'L1RankedStructureParameterPruner'
    group_type: Filters
    desired_sparsity: 0.25
    weights: [layer3.0.conv2.weight]
extensions:
  net_thinner:
      class: 'FilterRemover'
      thinning_func_str: remove_filters
      arch: 'resnet20_cifar'
{dataset}{thin_at}
policies:
  - pruner:
      instance_name: inner_filters
    epochs: [{epoch}]
  - pruner:
      instance_name: stage3_filters
    epochs: [{epoch}]
  - extension:
      instance_name: net_thinner
    epochs: [{thin_epoch}]
"""
SOURCES = {
    "dataset": {"dataset": "      dataset: 'cifar10'\n"},
    "input_shape": {"input_shape": "input_shape: [1, 3, 32, 32]"},
    "first_forward": {},
}
DENSE_WIDTHS = {"layer1.0.conv1": 16, "layer1.2.conv1": 16, "layer2.1.conv1": 32, "layer2.2.conv1": 32,
                "layer3.0.conv2": 64}
THIN_WIDTHS = {"layer1.0.conv1": 8, "layer1.2.conv1": 8, "layer2.1.conv1": 16, "layer2.2.conv1": 16,
               "layer3.0.conv2": 48}


def schedule_file(tmp_path, source="dataset", epoch=0, thin_epoch=None, thin_at=None, name="resnet20.yaml"):
    fields = {"input_shape": "", "dataset": "", **SOURCES[source]}
    text = ONE_SHOT.format(epoch=epoch, thin_epoch=epoch if thin_epoch is None else thin_epoch,
                           thin_at=f"      thin_at: {thin_at}\n" if thin_at else "", **fields)
    path = tmp_path / name
    path.write_text(text)
    return path


def widths(model):
    return {name: model.get_submodule(name).out_channels for name in DENSE_WIDTHS}


def batches(n=2, size=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def fresh(seed=0):
    torch.manual_seed(seed)
    model = randomize(resnet20_cifar())
    return model, torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)


def train(model, opt, sched, epochs, data):
    """run_scheduled with cross-entropy; returns the widths each real forward ran with, by (epoch, minibatch)."""
    seen, where = {}, {}

    def hook(module, inputs, output):
        seen.setdefault(where["at"], widths(module))

    handle = model.register_forward_hook(hook)
    run_scheduled(model, opt, sched, epochs, data, loss=F.cross_entropy,
                  record=lambda epoch, i: where.update(at=(epoch, i)))
    handle.remove()
    return seen


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_a_distiller_schedule_thins_at_the_first_minibatch_without_dummy_input(tmp_path, source, caplog):
    caplog.set_level(logging.INFO)
    model, opt = fresh()
    sched = compress.file_config(model, opt, schedule_file(tmp_path, source))
    traced_at_build = source != "first_forward"
    assert (type(sched.ctx.groups).__name__ == "TracedGroups") == traced_at_build
    seen = train(model, opt, sched, 2, batches())
    assert seen[(0, 0)] == THIN_WIDTHS  # epoch 0 trains thin from its first forward on
    assert seen[(1, 1)] == THIN_WIDTHS == widths(model)
    assert model.layer3[1].conv1.in_channels == 48 and model.fc.in_features == 48  # the stage-3 stream shrank
    assert type(sched.ctx.groups).__name__ == "TracedGroups"
    assert ("traced the model on its first forward's input 1x3x32x32" in caplog.text) == (not traced_at_build)


def test_thin_at_epoch_end_trains_the_scheduled_epoch_masked(tmp_path):
    model, opt = fresh()
    sched = compress.file_config(model, opt, schedule_file(tmp_path, thin_at="epoch_end"))
    seen = train(model, opt, sched, 2, batches())
    assert seen[(0, 0)] == seen[(0, 1)] == DENSE_WIDTHS
    assert seen[(1, 0)] == THIN_WIDTHS


def test_masked_and_thinned_training_compute_the_same(tmp_path, source="first_forward"):
    data = batches(2)
    thinned, opt = fresh()
    sched = compress.file_config(thinned, opt, schedule_file(tmp_path, source))
    masked, masked_opt = fresh()
    never = schedule_file(tmp_path, source, thin_epoch=99, name="masked.yaml")  # same groups, never thinned
    masked_sched = compress.file_config(masked, masked_opt, never)
    train(thinned, opt, sched, 2, data)
    train(masked, masked_opt, masked_sched, 2, data)
    assert widths(thinned) == THIN_WIDTHS and widths(masked) == DENSE_WIDTHS
    dense_count = sum(p.numel() for p in masked.parameters())
    assert sum(p.numel() for p in thinned.parameters()) < 0.8 * dense_count
    x = torch.randn(8, 3, 32, 32)
    thinned.eval()
    masked.eval()
    with torch.no_grad():
        torch.testing.assert_close(thinned(x), masked(x), atol=1e-5, rtol=1e-5)


def test_a_structured_pruner_on_the_residual_stream_gets_the_traced_group_from_the_first_forward():
    model, opt = fresh()
    sched = compress.dict_config(model, opt, {
        "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                          "desired_sparsity": 0.5, "weights": ["layer1.1.conv2.weight"]}},
        "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]},
                     {"extension": {"instance_name": "t"}, "epochs": [1]}]})
    sched.on_epoch_begin(0, opt)
    assert sched.masks == {}  # queued: nothing is decided before the model's input is known
    x, y = batches(1)[0]
    model(x)
    pruned = (sched.masks["layer1.1.conv2.weight"].flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    assert len(pruned) == 8
    for writer in ("conv1.weight", "layer1.0.conv2.weight", "layer1.2.conv2.weight"):  # the whole stage-1 stream
        assert (sched.masks[writer].flatten(1).sum(1) == 0).nonzero().flatten().tolist() == pruned
    for reader in ("layer1.0.conv1.weight", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight"):
        assert sched.masks[reader][:, pruned].eq(0).all()
    sched.on_epoch_end(0, opt, metrics={"loss": F.cross_entropy(model(x), y).item()})
    train(model, opt, sched, [1], [(x, y)])
    assert model.conv1.out_channels == 8 and model.layer2[0].downsample[0].in_channels == 8


CHANNELS = """\
version: 1
pruners:
  stream_readers:
    class: 'L1RankedStructureParameterPruner'
    group_type: Channels
    desired_sparsity: 0.5
    group_dependency: Leader
    weights: [layer1.1.conv1.weight, layer1.0.conv1.weight, layer2.0.conv1.weight, layer2.0.downsample.0.weight]
  inner_channels:
    class: 'L1RankedStructureParameterPruner'
    group_type: Channels
    desired_sparsity: 0.25
    weights: [layer2.3.conv2.weight, layer3.4.conv2.weight]
extensions:
  net_thinner:
      class: StructureRemover
      thinning_func_str: remove_channels
      arch: resnet56_cifar
      dataset: cifar10
policies:
  - pruner: {instance_name: stream_readers}
    epochs: [0]
  - pruner: {instance_name: inner_channels}
    epochs: [0]
  - extension: {instance_name: net_thinner}
    epochs: [EPOCH]
"""


def test_channel_removal_with_a_leader_group_on_resnet56(tmp_path):
    # As Distiller's resnet56_cifar_channel_rank: the readers of the stage-1 stream follow one leader's ranking.
    # In float64: 56 layers with batch statistics amplify float32 rounding (1e-6 -> 1e-3 in two steps), and
    # the claim is that both compute the same thing, not that they round alike.
    data = [(x.double(), y) for x, y in batches(2)]
    runs = []
    for epoch in ("0", "99"):  # thinned at epoch 0; masked only
        path = tmp_path / f"channels_{epoch}.yaml"
        path.write_text(CHANNELS.replace("EPOCH", epoch))
        torch.manual_seed(0)
        model = randomize(resnet56_cifar()).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
        run_scheduled(model, opt, compress.file_config(model, opt, path), 1, data, loss=F.cross_entropy)
        runs.append(model.eval())
    thinned, masked = runs
    assert thinned.layer1[0].conv1.in_channels == 8 and thinned.conv1.out_channels == 8  # the stream and its writers
    assert thinned.layer2[3].conv2.in_channels == 24 and thinned.layer2[3].conv1.out_channels == 24
    assert thinned.layer3[4].conv2.in_channels == 48 and masked.layer3[4].conv2.in_channels == 64
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(thinned(x), masked(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("source", "thin_at"), [("first_forward", "first_minibatch"), ("input_shape", "epoch_end")])
def test_stopped_rebuilt_and_resumed_is_bit_exact(tmp_path, source, thin_at):
    path = schedule_file(tmp_path, source, epoch=1, thin_at=thin_at)
    data = batches(1)

    def run(model, opt, sched, epochs):
        run_scheduled(model, opt, sched, epochs, data, loss=F.cross_entropy)

    model, opt = fresh()
    run(model, opt, compress.file_config(model, opt, path), range(3))
    assert widths(model) == THIN_WIDTHS
    for stop in (1, 2):  # before the thinning epoch, and after it
        m1, o1 = fresh()
        s1 = compress.file_config(m1, o1, path)
        run(m1, o1, s1, range(stop))
        saved = {"model": copy.deepcopy(m1.state_dict()), "optimizer": copy.deepcopy(o1.state_dict()),
                 "scheduler": copy.deepcopy(s1.state_dict())}
        assert s1.state_dict()["policies"]["extension:net_thinner"]["done"] == ([] if stop == 1 else [1])
        m2, o2 = fresh(seed=5)  # rebuilt from scratch: dense, other initial weights
        s2 = compress.file_config(m2, o2, path)
        s2.load_state_dict(saved["scheduler"])
        m2.load_state_dict(saved["model"])
        o2.load_state_dict(saved["optimizer"])
        assert s2.state_dict()["policies"] == s1.state_dict()["policies"]
        run(m2, o2, s2, range(stop, 3))
        for (name, a), b in zip(model.state_dict().items(), m2.state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{name} differs after resuming at epoch {stop}"


# Refused when the scheduler is built --------------------------------------------------------------

class DataDependent(nn.Module):
    """A network torch.fx cannot trace: its forward branches on a tensor value."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        if h.mean() > 0:
            h = h * 2
        return self.conv2(h)


NO_TOP = "# no input_shape\n"
THINNER_ONLY = """\
version: 1
{top}pruners:
  f:
    class: L1RankedStructureParameterPruner
    group_type: Filters
    desired_sparsity: 0.5
    weights: [conv1.weight]
extensions:
  net_thinner:
    class: FilterRemover
    thinning_func_str: remove_filters
{ext}policies:
  - pruner: {{instance_name: f}}
    epochs: [0]
  - extension: {{instance_name: net_thinner}}
    epochs: [0]
"""


@pytest.mark.parametrize(("top", "ext", "model", "expected"), [
    (NO_TOP, "    dataset: cifar100\n", resnet20_cifar, r"line 13 at 'extensions.net_thinner.dataset': FilterRemover: unknown "
     r"dataset 'cifar100'.*did you mean 'cifar10'\? valid: cifar10, imagenet, mnist"),
    (NO_TOP, "    dataset: mnist\n", resnet20_cifar, r"line 13 at 'extensions.net_thinner.dataset': tracing on dataset "
     r"'mnist' \(input \[1, 1, 28, 28\]\): cannot run the model"),
    ("input_shape: [1, 3]\n", "", resnet20_cifar, r"line 2 at 'input_shape': tracing on input_shape \[1, 3\]: cannot run"),
    ("input_shape: [1, 3, 0, 32]\n", "", resnet20_cifar, r"line 2 at 'input_shape': input_shape must be a list of "
     r"positive integers"),
    ("input_shape: 32\n", "", resnet20_cifar, r"at 'input_shape': input_shape must be a list"),
    (NO_TOP, "", DataDependent, r"line 10 at 'extensions.net_thinner': tracing on the model's first forward: cannot "
     r"trace the model for thinning: torch.fx failed in the forward\(\) of DataDependent"),
    ("input_shape: [1, 3, 8, 8]\n", "", DataDependent, r"line 2 at 'input_shape': tracing on input_shape .*cannot "
     r"trace the model"),
    (NO_TOP, "    thin_at: epoch_start\n", resnet20_cifar, r"at 'extensions.net_thinner.thin_at'.*'first_minibatch' or "
     r"'epoch_end'"),
])
def test_what_cannot_work_is_refused_at_build_with_file_line_and_key(tmp_path, top, ext, model, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(THINNER_ONLY.format(top=top, ext=ext))
    net = model()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(compress.ScheduleError, match=rf"{path}, {expected}" if "line" in expected else expected):
        compress.file_config(net, torch.optim.SGD(net.parameters(), lr=0.1), path)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_two_thinners_must_agree_on_the_dataset():
    model = resnet20_cifar()
    thinner = {"class": "FilterRemover", "thinning_func_str": "remove_filters"}
    schedule = {"extensions": {"a": {**thinner, "dataset": "cifar10"}, "b": {**thinner, "dataset": "imagenet"}},
                "policies": [{"extension": {"instance_name": "a"}, "epochs": [0]},
                             {"extension": {"instance_name": "b"}, "epochs": [1]}]}
    with pytest.raises(compress.ScheduleError, match="extensions.b.dataset'.*'imagenet' differs from 'cifar10'"):
        compress.dict_config(model, None, schedule)


def test_a_conflict_only_the_traced_groups_show_is_refused_at_the_first_forward_before_anything_changes():
    model, opt = fresh()
    schedule = {"pruners": {"a": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                                  "desired_sparsity": 0.5, "weights": ["layer1.0.conv2.weight"]},
                            "b": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                                  "desired_sparsity": 0.25, "weights": ["layer1.2.conv2.weight"]}},
                "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
                "policies": [{"pruner": {"instance_name": "a"}, "epochs": [0]},
                             {"pruner": {"instance_name": "b"}, "epochs": [0]},
                             {"extension": {"instance_name": "t"}, "epochs": [0]}]}
    sched = compress.dict_config(model, opt, schedule)  # per-module groups: no conflict seen yet
    before = copy.deepcopy(model.state_dict())
    sched.on_epoch_begin(0, opt)
    sched.on_minibatch_begin(0, 0, 1, opt)
    with pytest.raises(compress.ScheduleError, match=r"at 'policies\[1\]': policies 0 and 1 both prune '.*' in epoch 0"):
        model(batches(1)[0][0])
    assert sched.masks == {} and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_a_first_forward_the_trace_cannot_use_is_refused_before_it_runs():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x, scale=None):
            return self.conv2(torch.relu(self.conv1(x)))

    model = Keyword()
    sched = compress.dict_config(model, None, {
        "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
        "policies": [{"extension": {"instance_name": "t"}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    with pytest.raises(compress.ScheduleError, match=r"at 'extensions.t': the model's first forward got Tensor, "
                                                      r"scale=.*input_shape"):
        model(torch.zeros(1, 3, 8, 8), scale=2.0)


def test_an_epoch_that_never_ran_the_model_says_so():
    model = resnet20_cifar()
    sched = compress.dict_config(model, None, {
        "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
        "policies": [{"extension": {"instance_name": "t"}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    with pytest.raises(RuntimeError, match="epoch 0 ended before the model ran"):
        sched.on_epoch_end(0)


def test_a_loop_without_on_minibatch_begin_still_thins_at_the_epoch_end(caplog):
    caplog.set_level(logging.WARNING)
    model, opt = fresh()
    sched = compress.dict_config(model, opt, {
        "input_shape": [1, 3, 32, 32],
        "pruners": {"p": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                          "desired_sparsity": 0.5, "weights": ["layer1.0.conv1.weight"]}},
        "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]},
                     {"extension": {"instance_name": "t"}, "epochs": [0]}]})
    sched.on_epoch_begin(0, opt)
    sched.on_epoch_end(0, opt)
    assert model.layer1[0].conv1.out_channels == 8
    assert "on_minibatch_begin was not called in epoch 0; thinning at its end instead" in caplog.text
