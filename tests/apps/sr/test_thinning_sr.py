"""Thinning C2SRCNN: the original design's filter_prune.yaml runs, the checkpoint reloads thin."""
import copy
from pathlib import Path

import torch

import compress
from apps.sr.models import C2SRCNN, build_model
from apputils.checkpoint import load_checkpoint, rebuild_model, save_checkpoint
from compress.pruning.groups import group_mask
from compress.thinning import TracedGroups, count_macs, count_params, thin
from tests.scheduled import run_scheduled

SCHEDULE = Path(__file__).resolve().parents[3] / "schedules" / "sr" / "filter_prune.yaml"


def test_every_prunable_layer_halved_masked_equals_thinned():
    model = C2SRCNN(d=16, s=8, m=2).eval()
    with torch.no_grad():
        model.last_part.weight.normal_(std=0.1)
    x = torch.rand(2, 1, 12, 12)
    resolver = TracedGroups(model, x)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    masks: dict[str, torch.Tensor] = {}
    weights = [n for n, p in model.named_parameters() if p.dim() == 4 and n != "last_part.weight"]
    for w in weights:
        group = resolver.group(w, "filters")
        for n, m in group_mask(group, torch.arange(group.size) % 2 == 0, shapes).items():
            masks[n] = masks[n] * m if n in masks else m
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
        expected = model(x)
    dense_macs, dense_params = count_macs(model, x), count_params(model)
    thin(model, x, masks, "filters")
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert model.first_part[0].out_channels == 8 and model.mid_part[1].in_channels == 4
    assert count_macs(model, x) < 0.35 * dense_macs and count_params(model) < 0.35 * dense_params


def test_filter_prune_yaml_trains_saves_and_reloads_into_the_app_model(tmp_path):
    model = C2SRCNN()
    x, y = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.file_config(model, opt, SCHEDULE)  # Distiller's call: traced on the first forward
    widths = []
    run_scheduled(model, opt, sched, 2, [(x, y)] * 2,
                  record=lambda epoch, i: widths.append(model.mid_part[1].out_channels))
    assert widths == [12, 8, 8, 8]  # thinned in epoch 0's first forward (queued until the input is known)
    assert model.mid_part[0][0].out_channels == 8 and model.mid_part[1].out_channels == 8
    assert model.mid_part[1].in_channels == 8 and model.mid_part[3].in_channels == 8
    ckpt = {"format": 1, "app": "SR", "arch": {"name": "C2SRCNN", "kwargs": {}}, "model": model.state_dict(),
            "schedule": sched.schedule, "scheduler": sched.state_dict(), "optimizer": opt.state_dict(),
            "epoch": 1, "best_metric": 0.0, "options": {}}
    path = save_checkpoint(ckpt, tmp_path / "best.pth")
    loaded = load_checkpoint(path, app="SR")
    rebuilt, _, rebuilt_opt = rebuild_model(loaded, build_model,
                                            optimizer_factory=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3))
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x), atol=0, rtol=0)
    assert count_params(rebuilt) == count_params(model) < count_params(C2SRCNN())
    state = rebuilt_opt.state_dict()["state"]
    params = list(rebuilt.parameters())
    assert len(state) == len(params) and all(state[i]["exp_avg"].shape == p.shape for i, p in enumerate(params))
    copy.deepcopy(rebuilt)  # a plain module: no thinning hooks or wrappers left on it
