"""Distiller's parameter names work wrapped or not: DataParallel's `module` segments anywhere in a name.

Distiller wraps its models in nn.DataParallel (AlexNet / VGG: only `features`), so its schedules say
`module.layer1.0.conv1.weight` or `features.module.0.weight`. Every place a schedule names something must find
the same tensor or layer in the model as it is, wrapped or not.
"""
import pytest
import torch
from torch import nn

import compress
from tests import distiller_models as dm
from tests.scheduled import run_scheduled

WRAPPINGS = ["none", "model", "features"]


def vgg(wrapping: str) -> nn.Module:
    torch.manual_seed(0)
    model = dm.vgg16_cifar(width=1 / 16)
    if wrapping == "features":
        model.features = nn.DataParallel(model.features)
    return nn.DataParallel(model) if wrapping == "model" else model


def conv0(model: nn.Module) -> torch.Tensor:
    inner = model.module if isinstance(model, nn.DataParallel) else model
    features = inner.features.module if isinstance(inner.features, nn.DataParallel) else inner.features
    return features[0].weight


def level_schedule(name: str) -> dict:
    return {"pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {name: 0.5}}},
            "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}


@pytest.mark.parametrize("wrapping", WRAPPINGS)
@pytest.mark.parametrize("name", ["features.0.weight", "features.module.0.weight", "module.features.0.weight"])
def test_pruner_names_find_the_same_tensor(wrapping, name):
    model = vgg(wrapping)
    sched = compress.dict_config(model, None, level_schedule(name))
    sched.on_epoch_begin(0)
    w = conv0(model)
    assert int((w == 0).sum()) == w.numel() // 2
    assert list(sched.masks) == ["features.0.weight"]


def test_a_single_weight_may_be_a_string():
    model = vgg("model")
    sched = compress.dict_config(model, None, {
        "pruners": {"fc": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.5, "final_sparsity": 0.6,
                           "weights": "module.classifier.weight"}},
        "policies": [{"pruner": {"instance_name": "fc"}, "starting_epoch": 0, "ending_epoch": 2}]})
    sched.on_epoch_begin(0)
    assert float((model.module.classifier.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_a_wrong_name_is_still_refused_with_the_nearest():
    with pytest.raises(compress.ScheduleError, match=r"no parameter 'features.1.weight' \(did you mean"):
        compress.dict_config(vgg("features"), None, level_schedule("features.module.1.weight"))


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_regularizer_names(wrapping):
    model = vgg(wrapping)
    sched = compress.dict_config(model, None, {
        "regularizers": {"g": {"class": "GroupLassoRegularizer", "reg_regims": {"features.module.0.weight": [1.0, "3D"]}}},
        "policies": [{"regularizer": {"instance_name": "g"}, "epochs": [0]}]})
    _, terms = sched.before_backward_pass(0, 0, 1, torch.zeros(()), return_loss_components=True)
    expected = conv0(model).flatten(1).norm(dim=1).sum()
    assert float(terms["g"].detach()) == pytest.approx(float(expected.detach()))


@pytest.mark.parametrize("wrapping", WRAPPINGS)
@pytest.mark.parametrize("pattern", [r"features\.0", r"features\.module\.0", r"module\.features\.0"])
def test_quantizer_override_names(wrapping, pattern):
    model = vgg(wrapping)
    compress.dict_config(model, None, {
        "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_weights": 8,
                             "overrides": {pattern: {"bits_weights": 3}}}},
        "policies": [{"quantizer": {"instance_name": "q"}, "epochs": [0]}]})
    inner = model.module if wrapping == "model" else model
    features = inner.features.module if wrapping == "features" else inner.features
    assert features[0].weight_quant.bits == 3 and features[2].weight_quant.bits == 8


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_traced_groups_see_through_dataparallel(wrapping):
    """Filters of features.0 are coupled to the input channels of features.2 (through the ReLU)."""
    model = vgg(wrapping)
    sched = compress.dict_config(model, None, {
        "pruners": {"f": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                          "desired_sparsity": 0.5, "weights": ["features.module.0.weight"]}},
        "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]}]}, dummy_input=torch.zeros(1, 3, 32, 32))
    sched.on_epoch_begin(0)
    assert set(sched.masks) == {"features.0.weight", "features.0.bias", "features.2.weight"}
    zero_filters = (conv0(model).flatten(1) == 0).all(1)
    mask2 = sched.masks["features.2.weight"]
    assert int(zero_filters.sum()) == 2 and bool((mask2[:, zero_filters] == 0).all())


def test_masks_saved_from_a_wrapped_model_load_into_an_unwrapped_one():
    wrapped = vgg("model")
    sched = compress.dict_config(wrapped, None, level_schedule("module.features.0.weight"))
    sched.on_epoch_begin(0)
    plain = vgg("none")
    other = compress.dict_config(plain, None, level_schedule("features.module.0.weight"))
    other.load_state_dict(sched.state_dict())
    assert torch.equal(conv0(plain) == 0, conv0(wrapped) == 0)


def thinning_schedule(protected: list[str]) -> dict:
    return {"pruners": {"f": {"class": "L1RankedStructureParameterPruner", "group_type": "Filters",
                              "desired_sparsity": 0.5, "weights": ["features.module.2.weight"]}},
            "extensions": {"t": {"class": "StructureRemover", "thinning_func_str": "remove_filters",
                                 "protected": protected}},
            "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]},
                         {"extension": {"instance_name": "t"}, "epochs": [0]}]}


def test_thinning_sees_through_dataparallel():
    model = vgg("features")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = compress.dict_config(model, opt, thinning_schedule([]), dummy_input=torch.zeros(1, 3, 32, 32))
    batch = (torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    run_scheduled(model, opt, sched, 1, [batch], loss=nn.functional.cross_entropy)
    features = model.features.module
    assert features[2].out_channels == 2 and features[5].in_channels == 2 and features[5].out_channels == 8


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_protected_layers_take_distiller_names(wrapping):
    sched = compress.dict_config(vgg(wrapping), None, thinning_schedule(["features.module.5"]),
                                 dummy_input=torch.zeros(1, 3, 32, 32))
    assert sched.ctx.groups.protected == ["features.5"]
    with pytest.raises(compress.ScheduleError, match="'features.99' is not a layer of the model"):
        compress.dict_config(vgg(wrapping), None, thinning_schedule(["module.features.99"]))
