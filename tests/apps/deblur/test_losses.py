"""Content losses (L1 / VGG19 conv3_3 from a user-given torchvision file) and WGAN-GP's gradient penalty."""
import pytest
import torch
from torch import nn

from apps.deblur.losses import VGG19_TO_CONV3_3, PerceptualLoss, gradient_penalty, vgg19_to_conv3_3
from apputils.execution_env import UserError


def _torchvision_vgg19_state(with_classifier: bool = True) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's vgg19 keys and shapes (random values): features.0 ... features.34."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
    state, i, cin = {}, 0, 3
    for v in cfg:
        if v == "M":
            i += 1
            continue
        state[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3) * 0.05
        state[f"features.{i}.bias"] = torch.randn(v) * 0.05
        cin, i = v, i + 2
    if with_classifier:
        state["classifier.0.weight"] = torch.randn(8, 4)
    return state


def test_vgg_layers_use_torchvisions_indices():
    feats = vgg19_to_conv3_3()
    assert len(feats) == 15 and isinstance(feats[14], nn.Conv2d) and feats[14].out_channels == 256
    assert [i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)] == [4, 9]
    assert [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)] == [i for i, _, _ in VGG19_TO_CONV3_3]


def test_perceptual_loss_loads_a_torchvision_file_and_compares_features(tmp_path):
    state = _torchvision_vgg19_state()
    torch.save(state, tmp_path / "vgg19.pth")
    loss = PerceptualLoss.from_file(tmp_path / "vgg19.pth")
    assert torch.equal(loss.features[14].weight, state["features.14.weight"])
    assert not any(p.requires_grad for p in loss.parameters())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    assert float(loss(x, x.detach()).detach()) == 0.0
    value = loss(x, torch.rand(2, 3, 32, 32))
    value.backward()
    assert float(value) > 0 and x.grad is not None and loss.train().training is False


@pytest.mark.parametrize(("content", "expect"), [
    ({"features.0.weight": torch.zeros(64, 3, 3, 3)}, "lacks features.0.bias"),
    ("shapes", "is not VGG19: features.14.weight"),
    ([1, 2], "holds a list, not a state dict"),
])
def test_unusable_weight_files_are_refused(tmp_path, content, expect):
    if content == "shapes":
        content = _torchvision_vgg19_state()
        content["features.14.weight"] = torch.zeros(128, 256, 3, 3)
    torch.save(content, tmp_path / "w.pth")
    with pytest.raises(UserError, match=expect):
        PerceptualLoss.from_file(tmp_path / "w.pth")


def test_a_pickled_object_is_not_loaded(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "model.pth")  # a whole pickled module: weights_only refuses it
    with pytest.raises(UserError, match="cannot read"):
        PerceptualLoss.from_file(tmp_path / "model.pth")


def test_gradient_penalty_measures_the_critics_gradient_norm():
    w = torch.randn(3, 8, 8)
    real, fake = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    for norm, expected in ((1.0, 0.0), (3.0, 4.0)):
        scaled = w / w.norm() * norm

        def critic(x, scaled=scaled):
            return (x * scaled).flatten(1).sum(1)  # gradient = scaled everywhere

        assert float(gradient_penalty(critic, real, fake)) == pytest.approx(expected, abs=1e-5)
