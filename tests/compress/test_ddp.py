"""compress in a user's own DDP loop (gloo, 2 CPU processes, different data on each rank): every rank holds the same
weights, masks and quantizer state after every scheduled step, and 2 processes x batch b make the update of
1 process x batch 2b."""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import compress
import compress.distributed
import compress.pruning.criteria
from tests.distributed_runs import run_ranks

EPOCHS, STEPS, BATCH = 3, 3, 2
SCHEDULE = {
    "pruners": {
        "agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.5,
                "weights": ["conv3.weight"]},
        "filters": {"class": "L1RankedStructureParameterPruner_AGP", "initial_sparsity": 0.1, "final_sparsity": 0.4,
                    "group_type": "Filters", "weights": ["conv2.weight"]},
        "apoz": {"class": "ActivationAPoZRankedFilterPruner_AGP", "initial_sparsity": 0.1, "final_sparsity": 0.4,
                 "group_type": "Filters", "weights": ["conv1.weight"]},
    },
    "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_activations": 8, "bits_weights": 8,
                         "mode": {"activations": "ASYMMETRIC_UNSIGNED", "weights": "SYMMETRIC"}, "ema_decay": 0.9}},
    "policies": [
        {"pruner": {"instance_name": "agp", "args": {"mini_batch_pruning_frequency": 1}},
         "starting_epoch": 0, "ending_epoch": EPOCHS, "frequency": 1},
        {"pruner": {"instance_name": "filters"}, "starting_epoch": 0, "ending_epoch": EPOCHS, "frequency": 1},
        {"pruner": {"instance_name": "apoz"}, "starting_epoch": 0, "ending_epoch": EPOCHS, "frequency": 1},
        {"quantizer": {"instance_name": "q"}, "starting_epoch": 1, "ending_epoch": EPOCHS, "frequency": 1},
    ],
}


class Net(nn.Module):
    """conv -> relu (named as Distiller's activation rule expects) x2 -> conv."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, c, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(c, c, 3, padding=1), nn.ReLU()
        self.conv3 = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        return self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def batch(rank: int, epoch: int, step: int, size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s (input, target) of a step: different on every rank (scaled so the ranges differ too)."""
    g = torch.Generator().manual_seed(1000 * epoch + 10 * step + rank)
    x = torch.rand(size, 1, 8, 8, generator=g) * (1 + rank)
    return x, x.flip(-1) * 0.5


def digest(model: nn.Module, sched) -> str:
    """sha256 of every parameter, buffer (quantizer ranges and EMA state) and mask, by name."""
    h = hashlib.sha256()
    named = [*model.named_parameters(), *model.named_buffers(), *((f"mask:{k}", m) for k, m in sched.masks.items())]
    for name, t in sorted(named, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _own_loop(rank: int, reduce: bool, build_on_ddp: bool) -> list[tuple[str, str]]:
    if not reduce:  # what compress did before it reduced local statistics across the ranks
        compress.distributed.active = lambda: False
        compress.pruning.criteria.active = lambda: False
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ddp = DistributedDataParallel(model)
    sched = compress.dict_config(ddp if build_on_ddp else model, optimizer, SCHEDULE,
                                 dummy_input=torch.zeros(1, 1, 8, 8))
    steps = []
    for epoch in range(EPOCHS):
        sched.on_epoch_begin(epoch, optimizer)
        steps.append((f"epoch {epoch} begin", digest(model, sched)))
        for i in range(STEPS):
            x, y = batch(rank, epoch, i)
            sched.on_minibatch_begin(epoch, i, STEPS, optimizer)
            loss = nn.functional.mse_loss(ddp(x), y)
            loss = sched.before_backward_pass(epoch, i, STEPS, loss, optimizer)
            optimizer.zero_grad()
            loss.backward()
            sched.before_parameter_optimization(epoch, i, STEPS, optimizer)
            optimizer.step()
            sched.on_minibatch_end(epoch, i, STEPS, optimizer)
            steps.append((f"epoch {epoch} step {i}", digest(model, sched)))
        sched.on_epoch_end(epoch, optimizer)
        steps.append((f"epoch {epoch} end", digest(model, sched)))
    assert {"conv1.weight", "conv2.weight", "conv3.weight"} <= set(sched.masks) and any(n.endswith("ema_max") for n, _ in model.named_buffers())
    return steps


@pytest.mark.parametrize("build_on_ddp", [False, True], ids=["scheduler-on-model", "scheduler-on-ddp-module"])
def test_every_rank_holds_the_same_state_after_every_scheduled_step(build_on_ddp):
    r0, r1 = run_ranks(_own_loop, True, build_on_ddp)
    assert [name for name, _ in r0] == [name for name, _ in r1]
    assert [name for (name, a), (_, b) in zip(r0, r1, strict=True) if a != b] == []


def test_without_the_reductions_the_ranks_drift_apart_once_quantization_starts():
    r0, r1 = run_ranks(_own_loop, False, False)
    differ = [name for (name, a), (_, b) in zip(r0, r1, strict=True) if a != b]
    assert differ and differ[0].startswith("epoch 1 ")  # equal while only weights decide (epoch 0), then apart
    assert all(a == b for (name, a), (_, b) in zip(r0, r1, strict=True) if name.startswith("epoch 0 "))


QAT_FROM_START = {"quantizers": SCHEDULE["quantizers"],
                  "pruners": {"agp": SCHEDULE["pruners"]["agp"]},
                  "policies": [SCHEDULE["policies"][0], {**SCHEDULE["policies"][3], "starting_epoch": 0}]}


def _first_update(rank: int | None) -> dict[str, torch.Tensor]:
    """The state after one scheduled step: under DDP on rank `rank`'s half, in one process (None) on both halves."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = compress.dict_config(model, optimizer, QAT_FROM_START, dummy_input=torch.zeros(1, 1, 8, 8))
    net = model if rank is None else DistributedDataParallel(model)
    halves = [batch(r, 0, 0) for r in (range(2) if rank is None else [rank])]
    x, y = torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])
    sched.on_epoch_begin(0, optimizer)
    sched.on_minibatch_begin(0, 0, 1, optimizer)
    loss = sched.before_backward_pass(0, 0, 1, nn.functional.mse_loss(net(x), y), optimizer)
    optimizer.zero_grad()
    loss.backward()
    sched.before_parameter_optimization(0, 0, 1, optimizer)
    optimizer.step()
    sched.on_minibatch_end(0, 0, 1, optimizer)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_processes_of_batch_b_make_the_update_of_one_process_of_batch_2b():
    one = _first_update(None)
    r0, r1 = run_ranks(_first_update)
    assert any(k.endswith("ema_max") for k in one)
    for key, value in one.items():
        torch.testing.assert_close(r0[key], value, rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(r1[key], value, rtol=1e-5, atol=1e-6, msg=key)


def _calibrated_ranges(rank: int | None, clip: str) -> dict[str, torch.Tensor]:
    """Post-training calibration ranges: under DDP on rank `rank`'s halves, in one process (None) on both halves."""
    from compress.quantization.quantizers import PostTrainLinearQuantizer

    torch.manual_seed(0)
    model = Net().eval()
    q = PostTrainLinearQuantizer(model, None, calibration_batches=3, clip_acts=clip, num_stds=2.0)
    q.prepare(compress.Context(model, None, compress.MaskStore(model), None))
    ranks = range(2) if rank is None else [rank]
    q.calibrate([torch.cat([batch(r, 0, i)[0] for r in ranks]) for i in range(3)])
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith((".lo", ".hi", ".stats"))}


@pytest.mark.parametrize("clip", ["NONE", "AVG", "N_STD"])
def test_calibration_statistics_are_those_of_the_union_of_the_ranks_batches(clip):
    one = _calibrated_ranges(None, clip)
    r0, r1 = run_ranks(_calibrated_ranges, clip)
    assert one and {k for k in one if k.endswith(".hi")}
    for key, value in one.items():
        torch.testing.assert_close(r0[key], value, msg=key)
        torch.testing.assert_close(r1[key], value, msg=key)


THINNING = {
    "pruners": {"filters": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                            "desired_sparsity": 0.5, "weights": ["conv1.weight", "conv2.weight"]}},
    "extensions": {"thin": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
    "policies": [{"pruner": {"instance_name": "filters"}, "epochs": [0]},
                 {"extension": {"instance_name": "thin"}, "epochs": [1]}],
}


def _thinned_mid_run(rank: int, rewrap: bool) -> dict:
    import gc

    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = compress.dict_config(model, optimizer, THINNING, dummy_input=torch.zeros(1, 1, 8, 8))
    box = {"ddp": DistributedDataParallel(model)}

    def rebuild(changed: nn.Module) -> None:  # what the scheduler asks of a DDP loop when the model changes
        box["ddp"] = None
        gc.collect()
        box["ddp"] = DistributedDataParallel(changed)

    if rewrap:
        sched.add_model_listener(rebuild)
    sizes, digests = [], []
    for epoch in range(3):
        sched.on_epoch_begin(epoch, optimizer)
        for i in range(2):
            sched.on_minibatch_begin(epoch, i, 2, optimizer)
            x, y = batch(rank, epoch, i)
            loss = nn.functional.mse_loss(box["ddp"](x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.on_minibatch_end(epoch, i, 2, optimizer)
            digests.append(digest(model, sched))
        sched.on_epoch_end(epoch, optimizer)
        sizes.append(sum(p.numel() for p in model.parameters()))
    return {"sizes": sizes, "digests": digests, "conv2": model.conv2.weight.detach().clone()}


def test_thinning_mid_run_under_ddp_rebuilds_the_wrapper_and_training_goes_on():
    r0, r1 = run_ranks(_thinned_mid_run, True)
    assert r0["sizes"][0] > r0["sizes"][1] == r0["sizes"][2] and r0["sizes"] == r1["sizes"]
    assert r0["digests"] == r1["digests"]
    assert len(set(r0["digests"][2:])) == 4  # every step after thinning changed the weights
    torch.testing.assert_close(r0["conv2"], r1["conv2"], rtol=0, atol=0)


KD = {
    "pruners": {"agp": SCHEDULE["pruners"]["agp"]},
    "distillers": {"kd": {"class": "KnowledgeDistillation", "teacher": "self", "output_loss": "l2",
                          "features": [{"student": "conv3", "teacher": "conv2", "loss": "l2", "weight": 0.5}]}},
    "policies": [SCHEDULE["policies"][0],
                 {"distiller": {"instance_name": "kd"}, "starting_epoch": 0, "ending_epoch": EPOCHS}],
}


def _distilled(rank: int, average: bool, build_on_ddp: bool) -> dict:
    if not average:  # what a connector outside the DDP wrapper did before its gradients were averaged
        compress.distributed.active = lambda: False
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ddp = DistributedDataParallel(model)
    sched = compress.dict_config(ddp if build_on_ddp else model, optimizer, KD, dummy_input=torch.zeros(1, 1, 8, 8))
    kd = next(p.component for p in sched.policies if p.component.name == "kd")
    digests = []
    for epoch in range(EPOCHS):
        sched.on_epoch_begin(epoch, optimizer)
        for i in range(STEPS):
            x, y = batch(rank, epoch, i)
            sched.on_minibatch_begin(epoch, i, STEPS, optimizer)
            loss = sched.before_backward_pass(epoch, i, STEPS, nn.functional.mse_loss(ddp(x), y), optimizer)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sched.on_minibatch_end(epoch, i, STEPS, optimizer)
            h = hashlib.sha256(digest(model, sched).encode())
            for t in [*kd.connectors[0].parameters(), *kd.teacher.parameters()]:
                h.update(t.detach().numpy().tobytes())
            digests.append(h.hexdigest())
        sched.on_epoch_end(epoch, optimizer)
    teacher = kd.teacher
    return {"digests": digests, "teacher_wrapped": isinstance(teacher, DistributedDataParallel),
            "teacher_grads": sum(p.grad is not None or p.requires_grad for p in teacher.parameters()),
            "connector_in_optimizer": any(p is kd.connectors[0].weight for g in optimizer.param_groups
                                          for p in g["params"])}


@pytest.mark.parametrize("build_on_ddp", [False, True], ids=["scheduler-on-model", "scheduler-on-ddp-module"])
def test_distillation_under_ddp_keeps_model_connector_and_teacher_equal_on_every_rank(build_on_ddp):
    r0, r1 = run_ranks(_distilled, True, build_on_ddp)
    assert r0["digests"] == r1["digests"]
    assert not r0["teacher_wrapped"] and r0["teacher_grads"] == 0 and r0["connector_in_optimizer"]


def test_without_averaging_the_connectors_gradients_the_ranks_drift_apart():
    r0, r1 = run_ranks(_distilled, False, False)
    assert r0["digests"][0] != r1["digests"][0]
