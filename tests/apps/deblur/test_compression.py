"""Compressing the generator: masked == thinned through InstanceNorm (affine or not), BatchNorm, reflection
padding, ConvTranspose2d and the residual trunk; the shipped schedules on both presets; INT8 export."""
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import compress
from apps.deblur.models import PRESETS, ResnetGenerator, build_generator
from apputils.checkpoint import load_checkpoint, rebuild_model, save_checkpoint
from apputils.onnx_export import transform_to_onnx
from compress.thinning import TracedGroups, count_macs, count_params, thin
from tests.compress.thinning.helpers import mask_half, predict, randomize
from tests.scheduled import run_scheduled

SCHEDULES = Path(__file__).resolve().parents[3] / "schedules" / "deblur"


def _generator(**kw) -> ResnetGenerator:
    g = randomize(ResnetGenerator(ngf=4, n_blocks=2, **kw))
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, nn.InstanceNorm2d) and m.affine:  # a kept shift would show in the output
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
        g.model[-2].weight.normal_(std=0.1)  # a tail that passes the trunk's errors through
    return g.eval()


@pytest.mark.parametrize("kw", [{"norm": "instance"}, {"norm": "instance", "affine": True}, {"norm": "batch"}])
def test_every_removable_filter_group_halved_masked_equals_thinned(kw):
    g = _generator(**kw)
    x = torch.rand(2, 3, 21, 19)  # odd sizes: the input padding and the output crop are traced too
    resolver = TracedGroups(g, x[:1])
    weights = [n for n, p in g.named_parameters() if p.dim() == 4]
    tail = weights[-1]
    with pytest.raises(ValueError, match="cannot be pruned: it is a channel of the model's input"):  # global skip
        resolver.group(tail, "filters")
    targets = [(n, "filters") for n in weights if n != tail]
    trunk = resolver.group("model.10.conv_block.6.weight", "filters")
    trunk_members = {m.param for m in trunk.members}
    # the trunk's channels are one group: the down conv's filters, every block's output conv, their readers
    assert {"model.7.weight", "model.10.conv_block.6.weight", "model.11.conv_block.6.weight",
            "model.10.conv_block.1.weight", "model.12.weight"} <= trunk_members
    masks = mask_half(g, resolver, targets)
    with torch.no_grad():
        expected = g(x)
    dense = copy.deepcopy(g)
    step = thin(g, x[:1], masks, "filters")
    with torch.no_grad():
        torch.testing.assert_close(g(x), expected, atol=1e-5, rtol=1e-5)
    params, macs = predict(dense, step, x[:1])
    assert count_params(g) == params and count_macs(g, x[:1]) == macs
    assert g.model[12].in_channels == 8 and g.model[12].out_channels == 4  # ConvTranspose2d: 16 -> 8 in, 8 -> 4 out
    assert g.model[10].conv_block[2].num_features == 8


def test_filter_prune_yaml_thins_inner_convs_and_reloads_from_the_checkpoint(tmp_path):
    g = ResnetGenerator(ngf=4, n_blocks=9)
    x, y = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    sched = compress.file_config(g, opt, SCHEDULES / "filter_prune.yaml", dummy_input=x[:1])
    run_scheduled(g, opt, sched, 5, [(x, y)] * 2)
    for b in range(10, 19):
        block = g.model[b].conv_block
        assert block[1].out_channels == 8 and block[2].num_features == 8 and block[6].in_channels == 8
        assert block[6].out_channels == 16  # the trunk is untouched
    ckpt = {"format": 1, "app": "Deblur", "arch": {"name": "ResnetGenerator", "kwargs": {"ngf": 4, "n_blocks": 9}},
            "model": g.state_dict(), "schedule": sched.schedule, "scheduler": sched.state_dict(),
            "optimizer": opt.state_dict(), "epoch": 4, "options": {}}
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "best.pth"), app="Deblur")
    rebuilt, _, _ = rebuild_model(loaded, build_generator)  # no dummy input: the recipe replays
    g.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), g(x), atol=0, rtol=0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", ["agp_prune", "filter_prune", "kd_filter_prune", "quantization_linear_w8a8",
                                  "post_train_w8a8"])
def test_shipped_schedules_fit_both_presets(preset, name):
    g = ResnetGenerator(**PRESETS[preset])
    compress.file_config(g, torch.optim.Adam(g.parameters()), SCHEDULES / f"{name}.yaml",
                         dummy_input=torch.zeros(1, 3, 32, 32))
    header = (SCHEDULES / f"{name}.yaml").read_text().splitlines()[:12]
    assert header[0].startswith("# ") and any(line.startswith("# What:") for line in header)


def test_agp_prunes_the_trunk_convs_to_half():
    g = ResnetGenerator(ngf=4, n_blocks=9)
    x = torch.rand(2, 3, 16, 16)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    sched = compress.file_config(g, opt, SCHEDULES / "agp_prune.yaml")
    run_scheduled(g, opt, sched, 6, [(x, x)] * 2)
    for b in range(10, 19):
        for i in (1, 6):
            w = g.model[b].conv_block[i].weight
            assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((g.model[7].weight == 0).float().mean()) == 0.0


def _qat_generator(tmp_path: Path) -> ResnetGenerator:
    g = ResnetGenerator(ngf=4, n_blocks=2)
    x = torch.rand(4, 3, 24, 24)
    opt = torch.optim.Adam(g.parameters(), lr=1e-3)
    sched = compress.file_config(g, opt, SCHEDULES / "quantization_linear_w8a8.yaml", dummy_input=x[:1])
    run_scheduled(g, opt, sched, 1, [(x, x)] * 4)
    return g.eval()


def test_qat_generator_exports_an_int8_model_that_onnx_runtime_runs_to_one_8bit_level(tmp_path):
    # InstanceNorm stays float between the integer layers and ONNX Runtime sums its statistics in another
    # order, so the check asks for agreement to one 8-bit level (root mean square), not for exactness
    check = transform_to_onnx(_qat_generator(tmp_path), tmp_path / "g.onnx", torch.rand(1, 3, 30, 26), True)
    assert check["passed"] and check["exact_on"].startswith("none: InstanceNorm2d run in float")
    assert 0 < check["rms_tolerance"] <= 1 / 255 and check["rms_diff"] <= check["rms_tolerance"]
    assert check["max_weight_code"] <= 64  # the portable grid: no 16-bit saturation on any x86 CPU
    assert check["integer_ops"].get("QLinearConv", 0) == 8  # every Conv2d; InstanceNorm and ConvTranspose2d float


@pytest.mark.parametrize("levels, passes", [(0.5, True), (2.0, False)])
def test_the_generators_int8_check_fails_beyond_one_8bit_level(tmp_path, monkeypatch, levels, passes):
    from apputils import onnx_export

    class Shifted(onnx_export.ort.InferenceSession):
        """ONNX Runtime's output moved by `levels` 8-bit levels of a [0, 1] image."""

        def run(self, *args, **kwargs):
            return [out + levels / 255 for out in super().run(*args, **kwargs)]

    monkeypatch.setattr(onnx_export.ort, "InferenceSession", Shifted)
    g, x = _qat_generator(tmp_path), torch.rand(1, 3, 30, 26)
    if passes:
        assert transform_to_onnx(g, tmp_path / "g.onnx", x, True)["passed"]
        return
    with pytest.raises(onnx_export.ExportCheckError, match=r"differs from PyTorch by .* root mean square, more than "
                                                            r"one 8-bit level of the output's range"):
        transform_to_onnx(g, tmp_path / "g.onnx", x, True)
    assert (tmp_path / "g.onnx.failed").is_file() and not (tmp_path / "g.onnx").exists()
