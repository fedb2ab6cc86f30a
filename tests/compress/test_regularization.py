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
