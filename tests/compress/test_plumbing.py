"""Registries, the builder, policy kinds and hook calls, tested with components registered for each test."""
from typing import Literal

import pytest
import torch

import compress
from compress import EXTENSIONS, QUANTIZERS, Component, ScheduleError
from compress.registry import Registry, build, matches
from compress.schedule_source import ScheduleSource

from .nets import Plain, sgd

CALLS: list[tuple] = []


class Recorder(Component):
    """Records every hook call; counts prepare() calls; keeps a counter as state."""

    def __init__(self, tag: str, bits: int | None = 8, name: str | None = None, model=None, optimizer=None):
        self.tag, self.bits, self.name, self.model, self.optimizer = tag, bits, name, model, optimizer
        self.count = 0
        self.prepared = 0

    def prepare(self, ctx):
        self.prepared += 1

    def _record(self, hook, step):
        self.count += 1
        CALLS.append((self.tag, hook, step.epoch, step.minibatch))

    def on_epoch_begin(self, ctx, step, timing):
        self._record("on_epoch_begin", step)

    def on_minibatch_begin(self, ctx, step, timing):
        self._record("on_minibatch_begin", step)

    def before_backward_pass(self, ctx, step, timing):
        self._record("before_backward_pass", step)
        return {f"{self.tag}_term": torch.tensor(0.5)}

    def before_parameter_optimization(self, ctx, step, timing):
        self._record("before_parameter_optimization", step)

    def on_minibatch_end(self, ctx, step, timing):
        self._record("on_minibatch_end", step)

    def on_epoch_end(self, ctx, step, timing):
        self._record("on_epoch_end", step)

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


@pytest.fixture(autouse=True)
def recording_classes():
    """Recorder as RecordingQuantizer and RecordingExtension, registered for one test only."""
    with QUANTIZERS.temporarily(Recorder, "RecordingQuantizer"), EXTENSIONS.temporarily(Recorder, "RecordingExtension"):
        yield


SCHEDULE = {
    "quantizers": {"q": {"class": "RecordingQuantizer", "tag": "q", "bits": 4}},
    "extensions": {"x": {"class": "RecordingExtension", "tag": "x"}},
    "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 1, "ending_epoch": 3},
                 {"extension": {"instance_name": "x"}, "epochs": [2]}],
}


def loop(sched, epochs, batches=2):
    for e in range(epochs):
        sched.on_epoch_begin(e)
        for i in range(batches):
            sched.on_minibatch_begin(e, i, batches)
            sched.before_backward_pass(e, i, batches, torch.tensor(1.0))
            sched.before_parameter_optimization(e, i, batches)
            sched.on_minibatch_end(e, i, batches)
        sched.on_epoch_end(e)


def test_components_get_injected_args_are_prepared_once_and_called_in_their_epochs():
    CALLS.clear()
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, SCHEDULE)
    q = sched.policies[0].component
    assert (q.name, q.bits, q.model, q.optimizer, q.prepared) == ("q", 4, model, opt, 1)
    loop(sched, 4)
    assert {c[2] for c in CALLS if c[0] == "q"} == {1, 2}
    assert {c[2] for c in CALLS if c[0] == "x"} == {2}
    hooks = [c[1] for c in CALLS if c[0] == "x"]
    assert hooks == ["on_epoch_begin"] + ["on_minibatch_begin", "before_backward_pass",
                                          "before_parameter_optimization", "on_minibatch_end"] * 2 + ["on_epoch_end"]
    total, parts = sched.before_backward_pass(2, 0, 1, torch.tensor(1.0), return_loss_components=True)
    assert parts.keys() == {"q_term", "x_term"} and total.item() == 2.0


def test_component_state_round_trip_through_scheduler():
    model = Plain()
    sched = compress.dict_config(model, sgd(model), SCHEDULE)
    loop(sched, 3)
    state = sched.state_dict()
    assert state["policies"]["quantizer:q"] == {"count": 20} and state["policies"]["extension:x"] == {"count": 10}
    other = compress.dict_config(Plain(), None, SCHEDULE)
    other.load_state_dict(state)
    assert other.policies[0].component.count == 20


def test_state_of_another_schedule_is_refused():
    model = Plain()
    sched = compress.dict_config(model, sgd(model), SCHEDULE)
    state = sched.state_dict()
    state["policies"]["pruner:ghost"] = {}
    with pytest.raises(ValueError, match="policies this schedule lacks: \\['pruner:ghost'\\]"):
        sched.load_state_dict(state)


def test_builder_rejects_unknown_and_injected_kwargs_and_checks_types():
    src = ScheduleSource({}, "s.yaml")
    for cfg, message in [({"class": "RecordingQuantizer", "tag": "a", "model": 1}, "unknown argument 'model'"),
                         ({"class": "RecordingQuantizer", "tag": "a", "bitz": 2}, "did you mean 'bits'?"),
                         ({"class": "RecordingQuantizer", "tag": 3}, "tag must be str, got 3"),
                         ({"class": "RecordingQuantizer", "tag": "a", "bits": True}, "bits must be int or null"),
                         ({"class": "RecordingQuantizer"}, "missing required argument 'tag'"),
                         ({"tag": "a"}, "missing 'class'"),
                         ({"class": "Nope"}, "valid quantizer classes:")]:
        with pytest.raises(ScheduleError, match=message.replace("(", "\\(").replace("?", "\\?")):
            build(cfg, QUANTIZERS, source=src, path=("quantizers", "q"))
    made = build({"class": "RecordingQuantizer", "tag": "a", "bits": None}, QUANTIZERS, source=src,
                 path=("quantizers", "q"), name="q")
    assert made.bits is None and made.name == "q"


def test_registry_decorator_and_duplicates():
    reg = Registry("widget")

    @reg.register()
    def Widget(size: int):
        return size

    assert "Widget" in reg and reg.names() == ["Widget"]
    with pytest.raises(KeyError, match="already registered"):
        reg.add("Widget", Widget)


def test_temporary_registration_ends_with_its_block_even_on_an_error():
    reg = Registry("widget")

    def Widget(size: int):
        return size

    with reg.temporarily(Widget) as registered:
        assert registered is Widget and reg.get("Widget") is Widget
        with pytest.raises(KeyError, match="already registered"), reg.temporarily(Widget):
            pass
        assert reg.get("Widget") is Widget  # the refused clash left the first entry alone
    assert "Widget" not in reg
    with pytest.raises(ValueError, match="inside"), reg.temporarily(Widget, name="Gadget"):
        assert reg.names() == ["Gadget"]
        raise ValueError("inside")
    assert reg.names() == []
    assert "RecordingQuantizer" in QUANTIZERS  # this module's fixture registers its classes for each test


@pytest.mark.parametrize("value,tp,ok", [(1, float, True), (True, float, False), (1.5, int, False),
                                         ([1, 2], list[int], True), ([1, "a"], list[int], False),
                                         ({"a": 0.1}, dict[str, float], True), (None, int | None, True),
                                         ("3D", Literal["3D", "Channels"], True),
                                         ("2D", Literal["3D", "Channels"], False)])
def test_matches(value, tp, ok):
    assert matches(value, tp) is ok


def test_every_torch_lr_scheduler_is_registered():
    """Declarable torch schedules build torch's own class; the ones taking code or objects are refused by name."""
    from torch.optim import lr_scheduler
    for name in ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts",
                 "CyclicLR", "OneCycleLR", "ReduceLROnPlateau", "LinearLR", "ConstantLR", "PolynomialLR"):
        assert compress.LR_SCHEDULERS.get(name) is getattr(lr_scheduler, name), name
    src = ScheduleSource({}, "s.yaml")
    for name in ("LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler"):
        with pytest.raises(ScheduleError, match=f"{name} cannot be declared in a schedule"):
            build({"class": name}, compress.LR_SCHEDULERS, source=src, path=("lr_schedulers", "lr"))


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_lr_policy_steps_at_scheduled_epoch_ends_and_plateau_uses_metrics():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, {
        "lr_schedulers": {"lr": {"class": "MultiStepLR", "milestones": [1, 2], "gamma": 0.5}},
        "policies": [{"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0, "ending_epoch": 2}]})
    lrs = []
    for e in range(4):
        sched.on_epoch_begin(e, opt)
        lrs.append(opt.param_groups[0]["lr"])
        sched.on_epoch_end(e, opt)
    assert lrs == [0.05, 0.025, 0.0125, 0.0125]  # stepped after epochs 0 and 1 only

    opt = sgd(model)
    sched = compress.dict_config(model, opt, {
        "lr_schedulers": {"lr": {"class": "ReduceLROnPlateau", "patience": 0, "factor": 0.1}},
        "policies": [{"lr_scheduler": {"instance_name": "lr", "args": {"metric": "val_loss"}},
                      "starting_epoch": 0, "ending_epoch": 5}]})
    for e, loss in enumerate([1.0, 2.0]):
        sched.on_epoch_end(e, opt, metrics={"val_loss": loss})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)
    with pytest.raises(ValueError, match="needs on_epoch_end"):
        sched.on_epoch_end(2, opt)


def test_lr_scheduler_is_checked_but_inactive_without_optimizer():
    model = Plain()
    sched = compress.dict_config(model, None, {
        "lr_schedulers": {"lr": {"class": "StepLR", "step_size": 2}},
        "policies": [{"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0, "ending_epoch": 5}]})
    assert [(p.kind, p.instance_name, type(p.component).__name__) for p in sched.policies] == \
        [("lr_scheduler", "lr", "Inactive")]
    opt = sgd(model)
    for epoch in range(3):
        sched.on_epoch_end(epoch, opt)  # an optimizer handed to a hook does not wake it up
    assert opt.param_groups[0]["lr"] == 0.05
    with pytest.raises(ScheduleError, match="unknown argument 'step'"):
        compress.dict_config(Plain(), None, {"lr_schedulers": {"lr": {"class": "StepLR", "step": 2}}})


def test_data_parallel_prefix_is_ignored():
    model = torch.nn.DataParallel(Plain())
    sched = compress.dict_config(model, sgd(model), {
        "pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {"conv2.weight": 0.5}}},
        "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]})
    sched.on_epoch_begin(0)
    assert float((model.module.conv2.weight == 0).float().mean()) == 0.5
