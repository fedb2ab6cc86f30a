"""State round trips of each stateful object, and the sparsity summary."""
import math

import pandas as pd
import torch

import compress
from compress.masks import MaskStore

from .nets import Plain, sgd


def test_mask_store_round_trip():
    model = Plain()
    store = MaskStore(model)
    mask = (torch.rand_like(model.conv2.weight) > 0.5).float()
    store.set("conv2.weight", mask)
    store.mask_gradients("conv2.weight")
    state = store.state_dict()
    other = MaskStore(Plain())
    other.load_state_dict(state)
    assert torch.equal(other.masks["conv2.weight"], mask)
    assert torch.equal(other.params["conv2.weight"] * (1 - mask), torch.zeros_like(mask))
    assert state["grad_masked"] == ["conv2.weight"] == other.state_dict()["grad_masked"]
    assert all(isinstance(v, torch.Tensor) for v in state["masks"].values())


def test_pruner_state_round_trip():
    model = Plain()
    sched = compress.dict_config(model, sgd(model), {
        "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.5,
                          "weights": ["conv1.weight"]}},
        "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 3}]})
    sched.on_epoch_begin(1)
    pruner = sched.policies[0].component
    state = pruner.state_dict()
    assert state == {"last_levels": {"conv1.weight": 0.5 + (0.1 - 0.5) * 0.5 ** 3}}
    other = compress.dict_config(Plain(), None, sched.schedule).policies[0].component
    other.load_state_dict(state)
    assert other.state_dict() == state


LR_AND_PRUNER = {
    "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.5,
                      "weights": ["conv1.weight"]}},
    "lr_schedulers": {"lr": {"class": "StepLR", "step_size": 1, "gamma": 0.5}},
    "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 3},
                 {"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0, "ending_epoch": 3}]}


def test_a_scheduler_without_optimizer_loads_and_keeps_the_lr_schedule_state():
    model = Plain()
    opt = sgd(model)
    sched = compress.dict_config(model, opt, LR_AND_PRUNER)
    for epoch in range(2):
        sched.on_epoch_begin(epoch, opt)
        opt.step()  # a training epoch's steps (no gradients here): the LR schedule steps after them
        sched.on_epoch_end(epoch, opt)
    state = sched.state_dict()
    assert state["policies"]["lr_scheduler:lr"]["last_epoch"] == 2

    inference = compress.dict_config(Plain(), None, LR_AND_PRUNER)  # e.g. rebuilding a checkpoint to test it
    inference.load_state_dict(state)
    assert inference.state_dict()["policies"] == state["policies"]  # saved back unchanged
    assert torch.equal(inference.masks["conv1.weight"], sched.masks["conv1.weight"])

    resumed_model = Plain()
    resumed_opt = sgd(resumed_model)
    resumed = compress.dict_config(resumed_model, resumed_opt, LR_AND_PRUNER)
    resumed.load_state_dict(inference.state_dict())  # and a full build takes it back
    resumed_opt.load_state_dict(opt.state_dict())
    resumed_opt.step()
    resumed.on_epoch_end(2, resumed_opt)
    assert resumed_opt.param_groups[0]["lr"] == 0.05 * 0.5 ** 3


def test_sparsity_summary_columns_values_and_total():
    model = Plain()
    with torch.no_grad():
        model.conv2.weight[:2] = 0  # 2 of 8 filters
        model.conv2.weight[:, 5] = 0  # 1 of 8 input channels
    df = compress.sparsity_summary(model)
    assert isinstance(df, pd.DataFrame)
    for column in ("Name", "Shape", "NNZ (dense)", "NNZ (sparse)", "Fine (%)", "Filters/3D (%)", "Channels (%)",
                   "Rows (%)", "Cols (%)", "Std", "Mean", "Abs-Mean"):
        assert column in df.columns
    row = df.set_index("Name").loc["conv2.weight"]
    zeros = 2 * 72 + 6 * 9
    assert row["NNZ (dense)"] == 576 and row["NNZ (sparse)"] == 576 - zeros
    assert row["Fine (%)"] == 100 * zeros / 576
    assert row["Filters/3D (%)"] == 25.0 and row["Channels (%)"] == 12.5
    assert list(df["Name"]) == ["conv1.weight", "conv2.weight", "conv3.weight", "Total"]
    total = df.iloc[-1]
    assert total["NNZ (dense)"] == 72 + 576 + 72
    assert math.isclose(total["Fine (%)"], 100 * zeros / 720)
    assert compress.model_sparsity(model) == total["Fine (%)"]
