"""Every graph shape: masked model == thinned model, and the thin size is what the kept channels predict."""
import copy

import pytest
import torch

from compress.thinning import TracedGroups, count_macs, count_params, thin

from .helpers import layer_macs, mask_half, predict, randomize
from .nets import ZOO


@pytest.mark.parametrize("name", sorted(ZOO))
def test_masked_equals_thinned(name):
    cls, shape, targets = ZOO[name]
    model = randomize(cls()).eval()
    x = torch.randn(shape)
    resolver = TracedGroups(model, x)
    masks = mask_half(model, resolver, targets)
    dense = copy.deepcopy(model)
    with torch.no_grad():
        expected = model(x)
    kind = targets[0][1]
    step = thin(model, x, masks, kind)

    assert step.removed > 0 and step.layers
    with torch.no_grad():
        got = model(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert count_params(model) < count_params(dense)
    params, macs = predict(dense, step, x)
    assert count_params(model) == params
    assert count_macs(model, x) == macs
    assert sum(layer_macs(dense, x).values()) == count_macs(dense, x)
    # each target lost half of its group: its weight shrank along the pruned dimension
    for param, kind in targets:
        dim = 0 if kind == "filters" else 1
        if name == "transposed" and param == "up.weight":
            dim = 1
        before = dict(dense.named_parameters())[param].shape[dim]
        after = dict(model.named_parameters())[param].shape[dim]
        assert after < before, (param, before, after)


def test_groups_follow_the_graph():
    """Concat offsets, PixelShuffle r^2 groups and residual coupling, as index maps."""
    x = torch.randn(1, 3, 8, 8)
    g = TracedGroups(ZOO["shuffle_concat"][0](), x).group("up.weight", "filters")
    members = {(m.param, m.dim): m for m in g.members}
    assert g.size == 6
    assert members[("up.weight", 0)].index_map[1] == (4, 5, 6, 7)
    # the upsampler's channels come after the skip branch's 4 in the concat
    assert members[("fuse.weight", 1)].index_map == tuple((4 + k,) for k in range(6))
    assert ("skip.0.weight", 0) not in members

    r = TracedGroups(ZOO["residual"][0](), x).group("b1.0.0.weight", "channels")
    params = set(r.params)
    assert {"head.weight", "b1.1.weight", "b1.2.weight", "b1.2.bias", "b2.1.weight", "tail.weight"} <= params
    ranked = {m.param for m in r.members if m.rank}
    assert "b1.0.0.weight" in ranked and "head.weight" not in ranked

    d = TracedGroups(ZOO["depthwise_grouped"][0](), x).group("pw1.0.weight", "filters")
    dw = next(m for m in d.members if m.param == "dw.weight")
    assert dw.index_map[3] == (6, 7)  # channel multiplier 2: both filters of input channel 3
    gr = TracedGroups(ZOO["depthwise_grouped"][0](), x).group("pw2.weight", "filters")
    pw2 = next(m for m in gr.members if m.param == "pw2.weight")
    assert gr.size == 4 and pw2.index_map[1] == (1, 5)  # position 1 of both groups of 'grouped'


def test_output_and_input_channels_are_never_groups():
    x = torch.randn(1, 3, 8, 8)
    resolver = TracedGroups(ZOO["chain"][0](), x)
    with pytest.raises(ValueError, match="'out.weight' cannot be pruned: it reaches the model's output"):
        resolver.group("out.weight", "filters")
    with pytest.raises(ValueError, match="model's input"):
        resolver.group("a.0.weight", "channels")
    with pytest.raises(ValueError, match="not the weight of a conv or linear"):
        resolver.group("bn.weight", "filters")


def test_macs_and_params_by_hand():
    from torch import nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                          nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Flatten(), nn.Linear(4 * 16 * 16, 5))
    x = torch.randn(1, 3, 8, 8)
    conv, dw = 8 * 8 * 8 * 3 * 9, 8 * 8 * 8 * 1 * 9
    convt = 8 * 8 * 8 * 4 * 2 * 2  # each input pixel and channel scatters into out_channels * k * k
    linear = 5 * 4 * 16 * 16
    assert count_macs(model, x) == conv + dw + convt + linear
    assert count_params(model) == (8 * 3 * 9 + 8) + (8 * 9 + 8) + (8 * 4 * 4 + 4) + (5 * 1024 + 5)
