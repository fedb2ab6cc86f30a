"""Regularizer loss values on fixed tensors, and loss components from the scheduler."""
import pytest
import torch

import compress
from compress.regularization import group_lasso

from .nets import Plain, sgd

W = torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2) - 10.0


def l2(*values):
    return torch.tensor(values, dtype=torch.float64).pow(2).sum().sqrt().item()


def test_group_lasso_filters_and_3d():
    expected = sum(l2(*W[f].flatten().tolist()) for f in range(2))
    assert group_lasso(W, "Filters").item() == pytest.approx(expected, rel=1e-6)
    assert group_lasso(W, "3D").item() == pytest.approx(expected, rel=1e-6)


def test_group_lasso_channels():
    expected = sum(l2(*W[:, c].flatten().tolist()) for c in range(3))
    assert group_lasso(W, "Channels").item() == pytest.approx(expected, rel=1e-6)


def test_group_lasso_2d_kernels():
    expected = sum(l2(*W[f, c].flatten().tolist()) for f in range(2) for c in range(3))
    assert group_lasso(W, "2D").item() == pytest.approx(expected, rel=1e-6)


def test_group_lasso_rows_and_cols():
    m = torch.tensor([[3.0, 4.0], [0.0, 5.0], [6.0, 8.0]])
    assert group_lasso(m, "Rows").item() == pytest.approx(5 + 5 + 10)
    assert group_lasso(m, "Cols").item() == pytest.approx(l2(3, 0, 6) + l2(4, 5, 8), rel=1e-6)
    with pytest.raises(ValueError, match="Rows groups need a 2-D weight"):
        group_lasso(W, "Rows")


def test_loss_components_are_named_and_added():
    model = Plain()
    sched = compress.dict_config(model, sgd(model), {
        "regularizers": {"l1": {"class": "L1Regularizer", "reg_regims": {"conv1.weight": 0.01}},
                         "gl": {"class": "GroupLassoRegularizer", "reg_regims": {"conv2.weight": [0.1, "Filters"]}}},
        "policies": [{"regularizer": {"instance_name": "l1"}, "starting_epoch": 0, "ending_epoch": 2},
                     {"regularizer": {"instance_name": "gl"}, "epochs": [1]}]})
    base = torch.tensor(1.0)
    total, parts = sched.before_backward_pass(0, 0, 1, base, return_loss_components=True)
    assert set(parts) == {"l1"}
    assert parts["l1"].item() == pytest.approx(0.01 * model.conv1.weight.abs().sum().item(), rel=1e-6)
    total, parts = sched.before_backward_pass(1, 0, 1, base, return_loss_components=True)
    assert set(parts) == {"l1", "gl"}
    expected_gl = 0.1 * model.conv2.weight.flatten(1).norm(dim=1).sum().item()
    assert parts["gl"].item() == pytest.approx(expected_gl, rel=1e-6)
    assert total.item() == pytest.approx(1.0 + parts["l1"].item() + expected_gl, rel=1e-6)
    assert sched.before_backward_pass(2, 0, 1, base) is base  # no active regularizer: loss unchanged


def test_group_lasso_drives_channels_down():
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compress.dict_config(model, opt, {
        "regularizers": {"gl": {"class": "GroupLassoRegularizer", "reg_regims": {"conv2.weight": [0.5, "Channels"]}}},
        "policies": [{"regularizer": {"instance_name": "gl"}, "starting_epoch": 0, "ending_epoch": 1}]})
    start = group_lasso(model.conv2.weight.detach(), "Channels").item()
    for _ in range(20):
        loss = sched.before_backward_pass(0, 0, 1, torch.zeros(()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert group_lasso(model.conv2.weight.detach(), "Channels").item() < 0.5 * start


def test_group_lasso_4d_and_sums():
    assert group_lasso(W, "4D").item() == pytest.approx(l2(*W.flatten().tolist()), rel=1e-6)
    assert group_lasso(W, "Channels+4D").item() == pytest.approx(
        group_lasso(W, "Channels").item() + group_lasso(W, "4D").item(), rel=1e-6)


def test_group_variance_is_strength_over_the_variance_of_channel_norms():
    model = Plain()
    sched = compress.dict_config(model, sgd(model), {
        "regularizers": {"v": {"class": "GroupVarianceRegularizer", "reg_regims": {"conv2.weight": [0.5, "Channels"]}}},
        "policies": [{"regularizer": {"instance_name": "v"}, "epochs": [0]}]})
    _, terms = sched.before_backward_pass(0, 0, 1, torch.zeros(()), return_loss_components=True)
    norms = model.conv2.weight.detach().transpose(0, 1).flatten(1).norm(dim=1)
    assert float(terms["v"].detach()) == pytest.approx(0.5 / float(norms.var()), rel=1e-5)


def threshold_schedule(group_type: str, criteria: str, strength: float, keep: bool) -> dict:
    policy = {"regularizer": {"instance_name": "g"}, "starting_epoch": 0, "ending_epoch": 2}
    if keep:
        policy["regularizer"]["args"] = {"keep_mask": True}
    return {"regularizers": {"g": {"class": "GroupLassoRegularizer", "threshold_criteria": criteria,
                                   "reg_regims": {"module.conv2.weight": [strength, group_type]}}},
            "policies": [policy]}


def two_filter_groups(model: Plain) -> None:
    """conv2's filters 0-3 get |w| = 0.1 (max 0.1), filters 4-7 |w| = 0.3 with one element at 1.0."""
    with torch.no_grad():
        model.conv2.weight[:4] = 0.1
        model.conv2.weight[4:] = -0.3
        model.conv2.weight[4:, 0, 0, 0] = 1.0


@pytest.mark.parametrize("criteria, strength, zeroed", [("Mean_Abs", 0.2, 4), ("Mean_Abs", 0.35, 8),
                                                        ("Max", 0.5, 4), ("Max", 1.0, 8)])
def test_threshold_criteria_zero_small_groups_after_each_step(criteria, strength, zeroed):
    model = Plain()
    two_filter_groups(model)
    sched = compress.dict_config(model, sgd(model), threshold_schedule("Filters", criteria, strength, keep=False))
    sched.on_minibatch_end(0, 0, 2)
    assert int((model.conv2.weight.flatten(1) == 0).all(1).sum()) == zeroed
    assert not sched.masks  # transient: the groups may grow back


def test_keep_mask_makes_the_last_thresholding_a_pruning_mask():
    model = Plain()
    two_filter_groups(model)
    sched = compress.dict_config(model, sgd(model), threshold_schedule("Filters", "Mean_Abs", 0.2, keep=True))
    sched.on_minibatch_end(0, 1, 2)
    assert not sched.masks
    sched.on_minibatch_end(1, 1, 2)  # the last minibatch of the policy's last epoch
    mask = sched.masks["conv2.weight"]
    assert mask[:4].eq(0).all() and mask[4:].eq(1).all()


def test_4d_threshold_zeroes_the_whole_weight():
    model = Plain()
    two_filter_groups(model)
    sched = compress.dict_config(model, sgd(model), threshold_schedule("4D", "Mean_Abs", 0.3, keep=False))
    sched.on_minibatch_end(0, 0, 1)
    assert bool((model.conv2.weight == 0).all())


def test_group_type_must_fit_the_weight_before_training():
    with pytest.raises(compress.ScheduleError, match=r"reg_regims.conv1.bias.*Channels groups need a 4-D conv weight"):
        compress.dict_config(Plain(), None, {
            "regularizers": {"g": {"class": "GroupLassoRegularizer", "reg_regims": {"conv1.bias": [0.1, "Channels"]}}},
            "policies": [{"regularizer": {"instance_name": "g"}, "epochs": [0]}]})
