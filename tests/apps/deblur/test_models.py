"""DeblurGAN's generator and critic: shapes for any image size, DeblurGAN's parameter names, residual start."""
import pytest
import torch
from torch import nn

from apps.deblur.models import PRESETS, NLayerDiscriminator, ResnetGenerator, build_critic, build_generator


@pytest.mark.parametrize("size", [(5, 7), (17, 23), (32, 32), (33, 30), (64, 47)])
def test_generator_keeps_any_image_size(size):
    g = ResnetGenerator(ngf=4, n_blocks=2).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_untrained_generator_returns_nearly_its_input():
    g = ResnetGenerator(ngf=4, n_blocks=2).eval()
    x = torch.rand(1, 3, 24, 24) * 0.8 + 0.1
    with torch.no_grad():
        assert float((g(x) - x).abs().max()) < 0.05  # the tail starts near zero: it learns the residual


def test_layout_and_parameter_names_are_deblurgans():
    g = ResnetGenerator(**PRESETS["DeblurGAN"])
    names = dict(g.named_parameters())
    assert names["model.1.weight"].shape == (64, 3, 7, 7)
    assert names["model.4.weight"].shape == (128, 64, 3, 3) and names["model.7.weight"].shape == (256, 128, 3, 3)
    for b in range(10, 19):
        assert names[f"model.{b}.conv_block.1.weight"].shape == (256, 256, 3, 3)
        assert names[f"model.{b}.conv_block.6.weight"].shape == (256, 256, 3, 3)
    assert isinstance(g.model[10].conv_block[4], nn.Dropout) and g.model[10].conv_block[4].p == 0.5
    assert isinstance(g.model[19], nn.ConvTranspose2d) and isinstance(g.model[22], nn.ConvTranspose2d)
    assert names["model.26.weight"].shape == (3, 64, 7, 7) and isinstance(g.model[27], nn.Tanh)
    assert sum(p.numel() for p in g.parameters()) == 11_378_179  # DeblurGAN's generator
    cpu = ResnetGenerator(**PRESETS["DeblurGAN-CPU"])
    assert set(dict(cpu.named_parameters())) == set(names)  # the same names: schedules fit both
    assert isinstance(cpu.model[10].conv_block[4], nn.Identity)


def test_norms_and_biases_follow_deblurgan():
    inst = ResnetGenerator(ngf=4, n_blocks=1, norm="instance")
    batch = ResnetGenerator(ngf=4, n_blocks=1, norm="batch")
    assert isinstance(inst.model[2], nn.InstanceNorm2d) and not inst.model[2].affine
    assert inst.model[1].bias is not None  # convs before InstanceNorm keep their bias
    assert isinstance(batch.model[2], nn.BatchNorm2d) and batch.model[1].bias is None
    assert ResnetGenerator(ngf=4, n_blocks=1, affine=True).model[2].affine


def test_patchgan_critic_scores_patches():
    d = NLayerDiscriminator(ndf=8)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 11, 11)
    assert d(torch.rand(1, 3, 256, 256)).shape == (1, 1, 35, 35)


def test_builders_refuse_unknown_architectures():
    assert isinstance(build_generator("ResnetGenerator", {"ngf": 4, "n_blocks": 1}), ResnetGenerator)
    assert isinstance(build_critic("NLayerDiscriminator", {"ndf": 4}), NLayerDiscriminator)
    with pytest.raises(ValueError, match="valid: ResnetGenerator"):
        build_generator("UNet", {})
