"""compress.modules: the scoped eval mode, unwrapping DataParallel / DDP, the non-zero parameter count."""
import pytest
import torch
from torch import nn

from compress.modules import eval_mode, nonzero_parameters, unwrap


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sequential(nn.ReLU(), nn.Dropout()))


def test_eval_mode_gives_every_module_its_own_mode_back():
    net = _net().train()
    net[1].eval()  # a frozen BatchNorm inside a training model: model.train(True) would wake it up
    before = [m.training for m in net.modules()]
    with eval_mode(net) as inside:
        assert inside is net and not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == before


def test_eval_mode_restores_modes_on_an_exception():
    net = _net().train()
    net[2][1].eval()
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="boom"), eval_mode(net):
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before


def test_unwrap_removes_every_wrapper_level():
    inner = _net()
    assert unwrap(inner) is inner
    assert unwrap(nn.DataParallel(nn.DataParallel(inner))) is inner
    wrapped_inside = nn.Sequential(nn.DataParallel(inner))  # a wrapper that is not the outermost module stays
    assert unwrap(wrapped_inside) is wrapped_inside


def test_nonzero_parameters_counts_elements_of_every_parameter():
    net = nn.Linear(4, 3)  # 12 weights + 3 biases
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0, 1, 2, 0], [3, 0, 0, 0], [0, 0, 0, 4]]))
        net.bias.copy_(torch.tensor([0.0, -1, 0]))
    assert nonzero_parameters(net) == 5
    assert nonzero_parameters(nn.DataParallel(net)) == 5
