"""Thinning inside training: optimizer state follows, the schedule runs it, the checkpoint reloads thin."""
import copy

import pytest
import torch
import torch.nn.functional as F

import compress
from compress.masks import MaskStore
from compress.thinning import TracedGroups, thin
from tests.scheduled import run_scheduled

from .helpers import mask_half, randomize, train_steps
from .nets import ZOO, Residual

TARGETS = ZOO["residual"][2]


@pytest.mark.parametrize("make_opt", [lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                                      lambda p: torch.optim.Adam(p, lr=1e-2)], ids=["sgd", "adam"])
def test_optimizer_state_is_thinned_and_training_continues(make_opt):
    model = randomize(Residual())
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    masks = mask_half(model, TracedGroups(model, x[:1]), TARGETS)
    opt = make_opt(model.parameters())
    store = MaskStore(model)
    for name, mask in masks.items():
        store.set(name, mask, opt)
    train_steps(model, opt, store, x, y, 2)

    thin_model, thin_opt = copy.deepcopy((model, opt))
    thin_store = MaskStore(thin_model)
    for name, mask in masks.items():
        thin_store.set(name, mask)
    old_state = {n: {k: v.clone() for k, v in thin_opt.state[p].items() if torch.is_tensor(v)}
                 for n, p in thin_model.named_parameters()}
    step = thin(thin_model, x[:1], masks, "filters", optimizer=thin_opt, mask_store=thin_store)

    params = list(thin_model.parameters())
    assert [id(p) for p in thin_opt.param_groups[0]["params"]] == [id(p) for p in params]
    keep = {e.name: e.keep_out for e in step.layers}["head"]
    for name, p in thin_model.named_parameters():
        for key, value in thin_opt.state[p].items():
            if torch.is_tensor(value) and value.dim() > 0:
                assert value.shape == p.shape, (name, key)
        assert thin_store.masks[name].shape == p.shape if name in thin_store.masks else True
    buf = "momentum_buffer" if "momentum_buffer" in thin_opt.state[params[0]] else "exp_avg"
    assert torch.equal(thin_opt.state[thin_model.head.weight][buf], old_state["head.weight"][buf][keep])

    train_steps(model, opt, store, x, y, 3)
    train_steps(thin_model, thin_opt, thin_store, x, y, 3)
    model.eval()
    thin_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(thin_model(x), model(x), atol=1e-5, rtol=1e-5)


def plain(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


SCHEDULES = {
    "filters": {
        "version": 1,
        "pruners": {"filter_pruner": {"class": "L1RankedStructureParameterPruner",
                                      "reg_regims": {"head.weight": [0.5, "3D"], "b1.0.0.weight": [0.5, "3D"]}}},
        "extensions": {"net_thinner": {"class": "FilterRemover", "thinning_func_str": "remove_filters",
                                       "arch": "vgg19", "dataset": "imagenet"}},
        "policies": [{"pruner": {"instance_name": "filter_pruner"}, "epochs": [0]},
                     {"extension": {"instance_name": "net_thinner"}, "epochs": [0]}],
    },
    "channels": {
        "version": 1,
        "pruners": {"channel_pruner": {"class": "L1RankedStructureParameterPruner",
                                       "reg_regims": {"tail.weight": [0.5, "Channels"],
                                                      "b2.1.weight": [0.5, "Channels"]}}},
        "extensions": {"net_thinner": {"class": "ChannelRemover", "thinning_func_str": "remove_channels"}},
        "policies": [{"pruner": {"instance_name": "channel_pruner"}, "epochs": [0]},
                     {"extension": {"instance_name": "net_thinner"}, "epochs": [0]}],
    },
}


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_schedule_thins_trains_saves_and_reloads(kind, tmp_path):
    model = randomize(Residual())
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = compress.dict_config(model, opt, SCHEDULES[kind], dummy_input=x[:1])
    dense_params = sum(p.numel() for p in model.parameters())
    run_scheduled(model, opt, sched, [0], [(x, y)] * 2)
    assert sum(p.numel() for p in model.parameters()) < dense_params  # thinned in epoch 0
    run_scheduled(model, opt, sched, [1], [(x, y)] * 2)
    if kind == "filters":
        assert model.head.out_channels == 4 and model.b1[0][0].out_channels == 4
    else:
        assert model.tail.in_channels == 4 and model.b2[1].in_channels == 4
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "schedule": sched.schedule, "scheduler": sched.state_dict(),
                "optimizer": opt.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    recipe = ckpt["scheduler"]["policies"]["extension:net_thinner"]["recipe"]
    assert recipe and plain(recipe)

    fresh = Residual()
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.01, momentum=0.9)
    sched2 = compress.dict_config(fresh, fresh_opt, ckpt["schedule"])
    sched2.load_state_dict(ckpt["scheduler"])
    fresh.load_state_dict(ckpt["model"])
    fresh_opt.load_state_dict(ckpt["optimizer"])
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
    assert [p.shape for p in fresh_opt.param_groups[0]["params"]] == [p.shape for p in fresh.parameters()]
    # training resumes on the reloaded thin model
    fresh.train()
    F.mse_loss(fresh(x), y).backward()
    fresh_opt.step()


def test_remover_arguments_are_checked():
    model = Residual()
    bad = copy.deepcopy(SCHEDULES["filters"])
    bad["extensions"]["net_thinner"]["thinning_func_str"] = "remove_channels"
    with pytest.raises(compress.ScheduleError, match="use class ChannelRemover"):
        compress.dict_config(model, None, bad)
    bad = copy.deepcopy(SCHEDULES["filters"])
    bad["extensions"]["net_thinner"]["protected"] = ["tial"]
    with pytest.raises(compress.ScheduleError, match="did you mean 'tail'"):
        compress.dict_config(model, None, bad)


def test_two_thinnings_replay_in_order_on_a_wrapped_model():
    cls, shape, targets = ZOO["chain"]
    model = torch.nn.DataParallel(randomize(cls())).eval()  # names get a 'module.' prefix
    x = torch.randn(shape)
    steps = []
    for target in targets:
        masks = mask_half(model, TracedGroups(model, x), [target])
        steps.append(thin(model, x, masks, "filters").to_dict())
    assert model.module.a[0].out_channels == 4 and model.module.conv.out_channels == 6
    fresh = cls().eval()
    compress.thinning.apply_recipe(fresh, steps)
    fresh.load_state_dict(model.module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)


def test_filter_pruner_on_a_residual_conv_masks_its_whole_traced_group():
    model = randomize(Residual())
    x = torch.randn(1, 3, 8, 8)
    schedule = {"version": 1,
                "pruners": {"p": {"class": "L1RankedStructureParameterPruner",
                                  "reg_regims": {"b1.1.weight": [0.5, "3D"]}}},
                "policies": [{"pruner": {"instance_name": "p"}, "epochs": [0]}]}
    sched = compress.dict_config(model, None, schedule, dummy_input=x)
    sched.on_epoch_begin(0)
    masks = sched.masks
    pruned = (masks["b1.1.weight"].flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    assert len(pruned) == 4
    for conv in ("head.weight", "b1.1.weight", "b2.1.weight"):  # every conv writing to the residual stream
        assert (masks[conv].flatten(1).sum(1) == 0).nonzero().flatten().tolist() == pruned
    for aux in ("head.bias", "b1.2.weight", "b1.2.bias", "b2.2.weight", "b2.2.bias"):
        assert masks[aux][pruned].eq(0).all() and masks[aux].sum() == 4
    for reader in ("b1.0.0.weight", "b2.0.0.weight", "tail.weight"):  # every conv reading it
        assert masks[reader][:, pruned].eq(0).all() and masks[reader].sum(dim=(0, 2, 3)).ne(0).sum() == 4
