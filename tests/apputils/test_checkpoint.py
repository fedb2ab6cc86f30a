"""Checkpoints: atomic writes, weights_only reads, RNG round-trip, and rebuilding compressed models."""
import random

import numpy as np
import pytest
import torch

import apputils.checkpoint as ckpt_mod
from apps.sr.models import C2SRCNN, build_model
from apputils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rebuild_model,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from tests.scheduled import run_scheduled

AGP = {"version": 1,
       "pruners": {"p": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.2, "final_sparsity": 0.6,
                         "weights": ["mid_part.1.weight", "mid_part.3.weight"]}},
       "policies": [{"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 2, "frequency": 1}]}
FILTERS = {"version": 1,
           "pruners": {"f": {"class": "L1RankedStructureParameterPruner",
                             "reg_regims": {"mid_part.0.0.weight": [0.4, "3D"], "mid_part.1.weight": [0.4, "3D"]}}},
           "extensions": {"t": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
           "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]},
                        {"extension": {"instance_name": "t"}, "epochs": [0]}]}
ARCH = {"name": "C2SRCNN", "kwargs": {"num_channels": 1, "upscale_factor": 2}}
DUMMY = torch.zeros(1, 1, 32, 32)


def _state(model, sched=None, opt=None, epoch=0):
    return {"format": 1, "app": "SR", "arch": ARCH, "model": model.state_dict(),
            "schedule": sched.schedule if sched else None, "scheduler": sched.state_dict() if sched else None,
            "optimizer": opt.state_dict() if opt else None, "epoch": epoch, "best_metric": 30.0,
            "options": {"lr": 1e-3, "compress": None}, "rng": rng_states()}


def _train(model, opt, sched, epochs):
    x = torch.rand(4, 1, 24, 24)
    run_scheduled(model, opt, sched, epochs, [(x, x)] * 3, loss=lambda out, y: ((out - y) ** 2).mean())


def test_save_is_atomic_and_loads_weights_only(tmp_path):
    path = tmp_path / "run" / "latest.pth"
    model = C2SRCNN()
    save_checkpoint(_state(model), path)
    assert [p.name for p in path.parent.iterdir()] == ["latest.pth"]  # no temp file left
    loaded = load_checkpoint(path, "SR")
    assert torch.equal(loaded["model"]["last_part.weight"], model.state_dict()["last_part.weight"])


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    save_checkpoint(_state(C2SRCNN(), epoch=1), path)

    def torn(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", torn)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(C2SRCNN(), epoch=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]


class Payload:
    """A class that must never be unpickled from a checkpoint."""


def test_pickled_code_and_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"format": 1, "app": "SR", "arch": ARCH, "model": {}, "x": Payload()}, bad)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "text.pth")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth")
    save_checkpoint(_state(C2SRCNN()), tmp_path / "sr.pth")
    with pytest.raises(CheckpointError, match="--optform=SR"):
        load_checkpoint(tmp_path / "sr.pth", "Deblur")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(_state(C2SRCNN()), tmp_path / "c.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    set_rng_states(load_checkpoint(tmp_path / "c.pth")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_rebuild_pruned_model_restores_masks_and_optimizer(tmp_path):
    import compress

    model = C2SRCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.dict_config(model, opt, AGP)
    _train(model, opt, sched, 2)
    save_checkpoint(_state(model, sched, opt, epoch=1), tmp_path / "c.pth")
    ck = load_checkpoint(tmp_path / "c.pth")
    rebuilt, rsched, ropt = rebuild_model(ck, build_model, optimizer_factory=lambda m: torch.optim.Adam(m.parameters()))
    assert set(rsched.masks) == {"mid_part.1.weight", "mid_part.3.weight"}
    w = rebuilt.state_dict()["mid_part.1.weight"]
    assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=0.01)
    assert ropt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    x = torch.rand(1, 1, 20, 20)
    assert torch.equal(rebuilt(x), model(x))


def test_rebuild_thinned_model_gives_the_same_outputs(tmp_path):
    import compress

    model = C2SRCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.dict_config(model, opt, FILTERS, dummy_input=DUMMY)
    _train(model, opt, sched, 1)
    assert model.mid_part[0][0].out_channels == 8  # really thinned (12 filters, 40% -> 4 removed)
    save_checkpoint(_state(model, sched, opt), tmp_path / "c.pth")
    ck = load_checkpoint(tmp_path / "c.pth")
    rebuilt, _, _ = rebuild_model(ck, build_model, dummy_input=DUMMY)
    assert rebuilt.mid_part[0][0].out_channels == 8
    x = torch.rand(1, 1, 20, 20)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_weights_that_do_not_fit_are_reported(tmp_path):
    state = _state(C2SRCNN())
    state["arch"] = {"name": "C2SRCNN", "kwargs": {"num_channels": 1, "upscale_factor": 2, "d": 32}}
    save_checkpoint(state, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="do not fit"):
        rebuild_model(load_checkpoint(tmp_path / "c.pth"), build_model)


QUANT = {"version": 1,
         "quantizers": {"q": {"class": "DorefaQuantizer", "bits_activations": 8, "bits_weights": 8,
                              "quantize_bias": True}},
         "lr_schedulers": {"lr": {"class": "MultiStepLR", "milestones": [1], "gamma": 0.5}},
         "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 3, "frequency": 1},
                      {"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0, "ending_epoch": 3,
                       "frequency": 1}]}


def test_rebuild_quantized_model_for_inference_gives_the_same_outputs(tmp_path):
    import compress

    model = C2SRCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.dict_config(model, opt, QUANT, dummy_input=DUMMY)
    _train(model, opt, sched, 2)
    model.eval()
    save_checkpoint(_state(model, sched, opt), tmp_path / "c.pth")
    rebuilt, rsched, _ = rebuild_model(load_checkpoint(tmp_path / "c.pth"), build_model, dummy_input=DUMMY)
    rebuilt.eval()
    x = torch.rand(1, 1, 20, 20)
    torch.testing.assert_close(rebuilt(x), model(x))
    saved = sched.state_dict()["policies"]["lr_scheduler:lr"]
    assert saved["last_epoch"] == 2 and rsched.state_dict()["policies"]["lr_scheduler:lr"] == saved


def test_base_record_keeps_the_structure_only():
    from apputils.checkpoint import base_record

    teacher = {"model.weight": torch.ones(64, 64)}
    ckpt = {"schedule": {"version": 1}, "base": None, "scheduler": {
        "version": 1, "masks": {"masks": {"conv.weight": torch.ones(3)}, "grad_masked": ["conv.weight"]},
        "policies": {"distiller:kd": {"teacher": teacher}, "pruner:p": {"level": 0.5},
                     "extension:thin": {"recipes": [{"kind": "filters"}]}}}}
    base = base_record(ckpt)
    assert base["schedule"] == {"version": 1} and base["scheduler"]["masks"] == {"masks": {}}
    assert base["scheduler"]["policies"] == {"extension:thin": {"recipes": [{"kind": "filters"}]}}
    assert base_record({"schedule": None, "base": base}) is base  # a never-compressed model passes its base on
