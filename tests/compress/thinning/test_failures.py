"""Refusals: a clear message naming the layer, and the model exactly as it was."""
import copy

import pytest
import torch

from compress.pruning.groups import LocalGroups, group_mask
from compress.thinning import ThinningError, TracedGroups, analyse, apply_recipe, plan, thin

from .helpers import mask_half, randomize
from .nets import ZOO, Chain, Untraceable


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def test_group_to_zero_channels_is_refused():
    model = randomize(Chain()).eval()
    x = torch.randn(1, 3, 8, 8)
    group = TracedGroups(model, x).group("a.0.weight", "filters")
    shapes = {n: p.shape for n, p in model.named_parameters()}
    masks = group_mask(group, torch.zeros(group.size, dtype=torch.bool), shapes)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    before = copy.deepcopy(model)
    with pytest.raises(ThinningError, match=r"every filter \(output channel\) of 'a\.0'"):
        thin(model, x, masks, "filters")
    assert same_state(model, before)


def test_untraceable_graph_is_refused_naming_the_module():
    model = Untraceable()
    x = torch.randn(1, 3, 8, 8)
    before = copy.deepcopy(model)
    with pytest.raises(ThinningError, match=r"module 'gate' \(Gate\)"):
        thin(model, x, {}, "filters")
    assert same_state(model, before)
    # listed as protected, the module is kept whole and the rest can be traced
    resolver = TracedGroups(model, x, protected=["gate"])
    with pytest.raises(ValueError, match="'gate' is listed as protected"):
        resolver.group("head.weight", "filters")


def test_partly_masked_group_is_left_in_place(caplog):
    """Distiller's bug: filters zeroed but the BatchNorm shift still feeds the next layer. Not removed."""
    model = randomize(Chain()).eval()
    x = torch.randn(1, 3, 8, 8)
    masks = mask_half(model, LocalGroups(model), [("conv.weight", "filters")])  # filter + bias only
    before = copy.deepcopy(model)
    step = thin(model, x, masks, "filters")
    assert step.removed == 0 and not step.layers
    assert "'out.weight' still reads it" in caplog.text
    assert same_state(model, before)
    # asked to remove those channels anyway, the plan refuses: the output would change
    analysis = analyse(model, x)
    conv_classes = analysis.layers["conv"].out_classes[1::2]
    with pytest.raises(ThinningError, match="'out.weight' still reads"):
        plan(model, analysis, conv_classes, "filters")


def test_protected_layer_keeps_its_filters():
    model = randomize(Chain()).eval()
    x = torch.randn(1, 3, 8, 8)
    masks = mask_half(model, TracedGroups(model, x), [("conv.weight", "filters"), ("a.0.weight", "filters")])
    with pytest.raises(ValueError, match="'conv' is listed as protected"):
        TracedGroups(model, x, protected=["conv"]).group("conv.weight", "filters")
    step = thin(model, x, masks, "filters", protected=["conv"])
    assert {e.name for e in step.layers} == {"a.0", "a.1", "conv"}  # conv loses inputs, not filters
    assert model.conv.out_channels == 12 and model.conv.in_channels == 4
    with pytest.raises(ThinningError, match="not modules of the model"):
        analyse(model, x, protected=["nope"])


def test_recipe_for_another_model_is_refused():
    cls, shape, targets = ZOO["chain"]
    model = randomize(cls()).eval()
    x = torch.randn(shape)
    step = thin(model, x, mask_half(model, TracedGroups(model, x), targets), "filters")
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(ThinningError, match="names layer 'a.0', which the model does not have"):
        apply_recipe(other, step.to_dict())
    thin_again = copy.deepcopy(model)  # already thin: the recipe's 'before' counts no longer match
    with pytest.raises(ThinningError, match="expects 'a.0' with 8 outputs"):
        apply_recipe(thin_again, step)
    assert same_state(thin_again, model)


def test_unknown_channel_ops_keep_their_channels():
    class Softmaxed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.b = torch.nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x):
            return self.b(torch.softmax(self.a(x), dim=1))

    resolver = TracedGroups(Softmaxed(), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="'softmax'.*does not know"):
        resolver.group("a.weight", "filters")
