"""SR models: shapes, C2SRCNN's schedule-facing names, and the original design's schedules loading unchanged."""
import math
from pathlib import Path

import pytest
import torch

import compress
from apps.sr.models import C2SRCNN, EDSR, ESPCN, FSRCNN, MODELS, SRCNN, build_model, input_kind

ROOT = Path(__file__).resolve().parents[3]

ORIGINAL_AGP = """
version: 1
pruners:
  conv_pruner:
    class: 'AutomatedGradualPruner'
    initial_sparsity : 0.05
    final_sparsity: 0.4
    weights: ['mid_part.0.0.weight', 'mid_part.1.weight', 'mid_part.3.weight']
policies:
  - pruner:
      instance_name : 'conv_pruner'
    starting_epoch: 0
    ending_epoch: 300
    frequency: 1
"""


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("cls", [C2SRCNN, ESPCN, FSRCNN, SRCNN, EDSR])
def test_output_is_hr_size(cls, scale):
    model = cls(num_channels=1, upscale_factor=scale)
    lr = torch.rand(2, 1, 10, 12)
    x = torch.nn.functional.interpolate(lr, scale_factor=scale, mode="bicubic") if input_kind(model) == "bicubic" else lr
    assert model(x).shape == (2, 1, 10 * scale, 12 * scale)


def test_c2srcnn_names_and_residual_start():
    names = dict(C2SRCNN().named_parameters())
    for n in ("mid_part.0.0.weight", "mid_part.1.weight", "mid_part.3.weight", "mid_part.5.weight",
              "mid_part.7.weight", "mid_part.9.0.weight"):
        assert n in names
    x = torch.rand(1, 1, 24, 24)
    # an untrained network is close to its bicubic input: it only has to learn the detail
    assert (C2SRCNN()(x) - x).abs().max() < 0.02


def test_build_model_and_unknown_name():
    assert set(MODELS) == {"C2SRCNN", "ESPCN", "FSRCNN", "SRCNN", "EDSR"}
    assert isinstance(build_model("ESPCN", {"upscale_factor": 3}), ESPCN)
    assert isinstance(build_model("EDSR", {"features": 16, "blocks": 2}), EDSR)
    with pytest.raises(ValueError, match="valid models"):
        build_model("VDSR")


def test_original_agp_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "agp.yaml"
    path.write_text(ORIGINAL_AGP)
    model = C2SRCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = compress.file_config(model, opt, str(path))
    sched.on_epoch_begin(150, opt)
    sched.on_minibatch_end(150, 0, 1, opt)
    w = dict(model.named_parameters())["mid_part.1.weight"]
    # on its way along the AGP curve: epoch 150 of the 300 scheduled (0 .. 299), Zhu & Gupta's cubic
    level = 0.4 + (0.05 - 0.4) * (1 - 150 / 299) ** 3
    assert int((w == 0).sum()) == math.floor(level * w.numel())


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "schedules" / "sr").glob("*.yaml")))
def test_shipped_schedules_load(name):
    model = C2SRCNN()
    opt = torch.optim.Adam(model.parameters())
    sched = compress.file_config(model, opt, str(ROOT / "schedules" / "sr" / name),
                                 dummy_input=torch.zeros(1, 1, 32, 32), teachers={"teacher": C2SRCNN()})
    assert sched.schedule["policies"]
    assert (ROOT / "schedules" / "sr" / name).read_text().startswith("#")
