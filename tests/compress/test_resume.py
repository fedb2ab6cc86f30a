"""A run stopped at step k, saved, rebuilt from scratch and resumed ends bit-identical to an uninterrupted one."""
import io

import torch

import compress
from tests.scheduled import run_scheduled

from .nets import Plain

SCHEDULE = {
    "version": 1,
    "pruners": {
        "agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.0, "final_sparsity": 0.6,
                "weights": ["conv1.weight", "conv2.weight"]},
        "filters": {"class": "L1RankedStructureParameterPruner_AGP", "initial_sparsity": 0.1, "final_sparsity": 0.5,
                    "group_type": "Filters", "weights": ["conv3.weight"]},
    },
    "regularizers": {"lasso": {"class": "GroupLassoRegularizer", "reg_regims": {"conv2.weight": [1e-3, "Channels"]}}},
    "lr_schedulers": {"lr": {"class": "StepLR", "step_size": 2, "gamma": 0.5}},
    "policies": [
        {"pruner": {"instance_name": "agp", "args": {"mini_batch_pruning_frequency": 2}},
         "starting_epoch": 0, "ending_epoch": 4},
        {"pruner": {"instance_name": "filters"}, "starting_epoch": 1, "ending_epoch": 5, "frequency": 2},
        {"regularizer": {"instance_name": "lasso"}, "starting_epoch": 0, "ending_epoch": 6},
        {"lr_scheduler": {"instance_name": "lr"}, "starting_epoch": 0, "ending_epoch": 6},
    ],
}
EPOCHS, BATCHES = 6, 4


def fresh():
    torch.manual_seed(1)
    model = Plain()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, opt, compress.dict_config(model, opt, SCHEDULE)


def batch(epoch: int, i: int):
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(epoch * 100 + i))
    return x, x


def train(model, opt, sched, epochs):
    run_scheduled(model, opt, sched, epochs, batch, minibatches=BATCHES)


def test_resume_is_bit_exact():
    model, opt, sched = fresh()
    train(model, opt, sched, range(EPOCHS))

    for stop in (1, 3, 5):  # 5: after the pruners ended, only the saved masks keep weights pruned
        m1, o1, s1 = fresh()
        train(m1, o1, s1, range(stop))
        buffer = io.BytesIO()
        torch.save({"model": m1.state_dict(), "optimizer": o1.state_dict(), "scheduler": s1.state_dict()}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)

        m2, o2, s2 = fresh()  # rebuilt from scratch
        s2.load_state_dict(saved["scheduler"])
        m2.load_state_dict(saved["model"])
        o2.load_state_dict(saved["optimizer"])
        train(m2, o2, s2, range(stop, EPOCHS))

        for (name, a), b in zip(model.state_dict().items(), m2.state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{name} differs after resuming at epoch {stop}"
        assert sched.masks.keys() == s2.masks.keys()
        for name, mask in sched.masks.items():
            assert torch.equal(mask, s2.masks[name])
        assert o2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert int((model.conv1.weight == 0).sum()) == int(0.6 * 72)  # final sparsity, floor semantics
