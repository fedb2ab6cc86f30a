"""Quantizers through the scheduler: prepare, timing, overrides, PACT's clip, pruning + quantization, resume."""
import copy
import io

import pytest
import torch
from torch import nn

import compress
from compress.quantization import (
    DorefaQuantizer,
    PACTQuantizer,
    PostTrainLinearQuantizer,
    QuantActivation,
    QuantLayer,
    fold_batchnorm,
)
from tests.scheduled import run_scheduled


class PNet(nn.Module):
    """A small SR-like net: PReLU and ReLU activations and a global residual."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.act1 = nn.PReLU(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        return x + self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


def schedule(quantizer: dict, start: int = 0, end: int = 10, pruner: dict | None = None) -> dict:
    sched = {"version": 1, "quantizers": {"q": quantizer},
             "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": start, "ending_epoch": end}]}
    if pruner:
        sched["pruners"] = {"p": pruner}
        sched["policies"].append({"pruner": {"instance_name": "p"}, "starting_epoch": 0, "ending_epoch": 3})
    return sched


def batches(n: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)) for _ in range(n)]


def train(model, opt, sched, epochs, data):
    run_scheduled(model, opt, sched, epochs, data)


def test_constructor_leaves_model_alone_and_prepare_keeps_names():
    model = PNet()
    names = [n for n, _ in model.named_parameters()]
    DorefaQuantizer(model, None, bits_weights=4)
    assert not any(isinstance(m, (QuantLayer, QuantActivation)) for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    compress.dict_config(model, opt, schedule({"class": "DorefaQuantizer", "bits_weights": 4}))
    assert isinstance(model.conv2, QuantLayer) and isinstance(model.act1, QuantActivation)
    assert [n for n, _ in model.named_parameters()] == names  # schedules and masks keep their names
    assert len(opt.param_groups) == 1


def test_quantization_starts_with_its_policy():
    torch.manual_seed(0)
    model = PNet()
    reference = copy.deepcopy(model)
    sched = compress.dict_config(model, None, schedule({"class": "DorefaQuantizer", "bits_weights": 2,
                                                       "bits_activations": 2}, start=2))
    x = torch.rand(1, 1, 8, 8)
    sched.on_epoch_begin(0)
    assert torch.equal(model(x), reference(x))  # before starting_epoch: float
    sched.on_epoch_begin(2)
    assert not torch.allclose(model(x), reference(x), atol=1e-3)


def test_overrides_first_match_wins():
    model = PNet()
    overrides = {"conv1": {"bits_weights": None}, "conv.*": {"bits_weights": 4}, "conv2": {"bits_weights": 2}}
    q = DorefaQuantizer(model, None, bits_weights=8, overrides=overrides)
    assert q.settings_for("conv1")["bits_weights"] is None
    assert q.settings_for("conv2")["bits_weights"] == 4  # 'conv.*' comes before 'conv2'
    assert q.settings_for("act1")["bits_weights"] == 8
    assert q.settings_for("module.conv3")["bits_weights"] == 4  # DataParallel prefix ignored
    compress.dict_config(model, None, schedule({"class": "DorefaQuantizer", "overrides": overrides}))
    assert model.conv1.weight_quant is None and model.conv2.weight_quant.bits == 4


@pytest.mark.parametrize("overrides, where, message", [
    ({"conv[": {"bits_weights": 4}}, "quantizers.q.overrides.conv[", "not a valid regular expression"),
    ({"conv1": {"bits_weight": 4}}, "quantizers.q.overrides.conv1.bits_weight", "did you mean 'bits_weights'"),
    ({"conv9": {"bits_weights": 4}}, "quantizers.q.overrides.conv9", "matches no module"),
    ({"conv1": {"bits_weights": 40}}, "quantizers.q.overrides.conv1.bits_weights", "from 1 to 16"),
    ({"conv1": {"input_range": [1.0, 0.0]}}, "quantizers.q.overrides.conv1.input_range", "lo < hi"),
    ({"conv1": {"input_range": 1.0}}, "quantizers.q.overrides.conv1.input_range", "must be list or tuple"),
    ({"conv1": {"weight_range": "portabel"}}, "quantizers.q.overrides.conv1.weight_range", "did you mean 'portable'"),
])
def test_bad_overrides_are_refused_with_their_key(overrides, where, message):
    with pytest.raises(compress.ScheduleError) as err:
        compress.dict_config(PNet(), None, schedule({"class": "DorefaQuantizer", "overrides": overrides}))
    assert where in str(err.value) and message in str(err.value)


@pytest.mark.parametrize("cls", ["DorefaQuantizer", "PACTQuantizer", "WRPNQuantizer",
                                 "QuantAwareTrainRangeLinearQuantizer", "PostTrainLinearQuantizer"])
def test_weight_range_portable_by_default_full_by_choice_and_per_layer(cls):
    """Every quantizer takes weight_range (default portable: int8 codes within +-64); overrides set it per layer."""
    model = PNet()
    compress.dict_config(model, None, schedule({"class": cls, "weight_range": "full",
                                               "overrides": {"conv2": {"weight_range": "portable"}}}))
    assert model.conv1.weight_quant.weight_range == "full" and model.conv1.weight_quant.max_code == 127
    assert model.conv2.weight_quant.weight_range == "portable" and model.conv2.weight_quant.max_code == 64
    default = PNet()
    compress.dict_config(default, None, schedule({"class": cls}))
    assert {m.weight_quant.weight_range for m in default.modules() if isinstance(m, QuantLayer)} == {"portable"}
    with pytest.raises(compress.ScheduleError) as err:
        compress.dict_config(PNet(), None, schedule({"class": cls, "weight_range": "ful"}))
    assert "quantizers.q.weight_range" in str(err.value) and "did you mean 'full'" in str(err.value)


def test_bad_arguments_are_refused():
    with pytest.raises(compress.ScheduleError, match="bits_activations"):
        compress.dict_config(PNet(), None, schedule({"class": "PACTQuantizer", "bits_activations": 0}))
    with pytest.raises(compress.ScheduleError, match="ASYMMETRIC_UNSIGNED"):
        compress.dict_config(PNet(), None, schedule({"class": "QuantAwareTrainRangeLinearQuantizer",
                                                     "mode": "ASYMMETRIC_UNSIGNE"}))


def test_pact_clip_has_its_own_group_and_moves():
    torch.manual_seed(0)
    model = PNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = compress.dict_config(model, opt, schedule({"class": "PACTQuantizer", "bits_activations": 4,
                                                      "bits_weights": 4, "act_clip_init_val": 0.05,
                                                      "act_clip_decay": 0.01}))
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["weight_decay"] == 0.01
    clips = opt.param_groups[1]["params"]
    assert {id(p) for p in clips} == {id(model.act1.act_quant.clip_hi), id(model.act1.act_quant.clip_lo),
                                      id(model.act2.act_quant.clip_hi)}
    before = [float(p.detach()) for p in clips]
    train(model, opt, sched, [0], batches())
    assert all(p.grad is not None for p in clips)
    assert [float(p.detach()) for p in clips] != before


def test_pruning_and_quantization_in_one_schedule():
    torch.manual_seed(0)
    model = PNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = compress.dict_config(model, opt, schedule(
        {"class": "DorefaQuantizer", "bits_weights": 4},
        pruner={"class": "AutomatedGradualPruner", "initial_sparsity": 0.2, "final_sparsity": 0.5,
                "weights": ["conv2.weight"]}))
    train(model, opt, sched, range(3), batches())
    w = model.conv2.weight
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.05
    wq = model.conv2.weight_quant(w)
    assert bool((wq[w == 0] == 0).all())  # pruned weights stay zero after quantization
    levels = (wq[w != 0].abs() * 15 - 1) / 2  # 4-bit DoReFa grid on [-1, 1]: |wq| = (2k + 1) / 15, k = 0..7
    assert torch.allclose(levels, levels.round(), atol=1e-4) and int(levels.round().max()) <= 7


def _save(model, opt, sched):
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict() if opt else None,
                "schedule": sched.schedule, "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _rebuild(ckpt, with_optimizer=True):
    model = PNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if with_optimizer else None
    sched = compress.dict_config(model, opt, ckpt["schedule"])
    sched.load_state_dict(ckpt["scheduler"])
    model.load_state_dict(ckpt["model"])
    if opt is not None:
        opt.load_state_dict(ckpt["optimizer"])
    return model, opt, sched


@pytest.mark.parametrize("quantizer", [
    {"class": "PACTQuantizer", "bits_activations": 4, "bits_weights": 4, "act_clip_init_val": 1.0},
    {"class": "QuantAwareTrainRangeLinearQuantizer", "mode": "ASYMMETRIC_UNSIGNED", "per_channel_wts": True,
     "ema_decay": 0.9},
])
def test_qat_resume_is_exact(quantizer):
    agp = {"class": "AutomatedGradualPruner", "initial_sparsity": 0.1, "final_sparsity": 0.4,
           "weights": ["conv2.weight"]}
    data = batches()

    def fresh():
        torch.manual_seed(0)
        model = PNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, compress.dict_config(model, opt, schedule(quantizer, pruner=agp))

    model, opt, sched = fresh()
    train(model, opt, sched, range(4), data)
    straight = model.state_dict()

    model, opt, sched = fresh()
    train(model, opt, sched, range(2), data)
    model, opt, sched = _rebuild(_save(model, opt, sched))
    train(model, opt, sched, range(2, 4), data)
    resumed = model.state_dict()
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_quantized_checkpoint_reloads_for_evaluation():
    model = PNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = compress.dict_config(model, opt, schedule({"class": "DorefaQuantizer", "bits_weights": 3,
                                                      "bits_activations": 4}))
    train(model, opt, sched, [0], batches())
    model.eval()
    x = torch.rand(1, 1, 12, 12)
    expected = model(x)
    rebuilt, _, _ = _rebuild(_save(model, opt, sched), with_optimizer=False)
    rebuilt.eval()
    assert torch.equal(rebuilt(x), expected)
    same_weights_in_float = PNet().eval()
    same_weights_in_float.load_state_dict(dict(rebuilt.named_parameters()))
    # the rebuilt model is quantized: the float network with its very weights computes something else
    assert not torch.allclose(same_weights_in_float(x), expected, atol=1e-3)


def test_post_training_quantizer_calibrates_then_quantizes():
    model = PNet().eval()
    float_model = copy.deepcopy(model)
    sched = compress.dict_config(model, None, schedule({"class": "PostTrainLinearQuantizer",
                                                       "calibration_batches": 2, "per_channel_wts": True}))
    q = sched.policies[0].component
    x = torch.rand(1, 1, 8, 8)
    with torch.no_grad():
        model(x)  # calibration batches: weights quantized, activations measured in float
        assert model.act2.act_quant.calibrating and not q.calibrated
        model(x)
        assert q.calibrated and float(model.act2.act_quant.hi) > 0
        out = model(x)
    assert not torch.equal(out, float_model(x)) and torch.allclose(out, float_model(x), atol=0.05)
    state = q.state_dict()
    assert state["calibrated"] and "act2.act_quant.hi" in state["ranges"]


def test_explicit_calibration():
    model = PNet().eval()
    q = PostTrainLinearQuantizer(model, None, calibration_batches=100, clip_acts="AVG")
    q.prepare(compress.Context(model, None, compress.MaskStore(model), None))
    q.calibrate([torch.rand(1, 1, 8, 8) for _ in range(3)])
    assert q.calibrated and q.state_dict()["active"] and bool(model.act2.act_quant.initialized)


@pytest.mark.parametrize("cls", ["PostTrainLinearQuantizer", "QuantAwareTrainRangeLinearQuantizer"])
def test_input_range_puts_the_grid_on_8_bit_images(cls):
    """An 8-bit image / 255 passes an input quantizer on [0, 1] unchanged; a measured range re-rounds it."""
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(40, 200, (2, 1, 8, 8), generator=g).float() / 255 for _ in range(3)]
    quantized = {}
    for name, overrides in (("fixed", {"conv1": {"input_range": [0.0, 1.0]}}), ("measured", None)):
        model = PNet().train(cls != "PostTrainLinearQuantizer")
        sched = compress.dict_config(model, None, schedule({"class": cls, "calibration_batches": 3,
                                                           "overrides": overrides} if cls.startswith("Post")
                                                          else {"class": cls, "overrides": overrides}))
        sched.on_epoch_begin(0)
        with torch.no_grad():
            for x in images:  # calibration batches, or EMA steps
                model(x)
        iq = model.conv1.input_quant
        assert iq.mode == ("fixed" if name == "fixed" else "calib" if cls.startswith("Post") else "ema")
        quantized[name] = iq(images[0])
    assert torch.allclose(quantized["fixed"], images[0], atol=1e-6)
    assert (quantized["measured"] - images[0]).abs().max() > 1e-3


def test_fold_batchnorm_keeps_outputs():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net[1].weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.rand(2, 1, 6, 6)
    before = net(x)
    assert fold_batchnorm(net) == ["0"]
    assert isinstance(net[1], nn.Identity)
    assert torch.allclose(net(x), before, atol=1e-5)


def test_pact_without_optimizer_and_state_round_trip():
    model = PNet()
    q = PACTQuantizer(model, None, bits_activations=4, act_clip_init_val=2.0)
    q.prepare(compress.Context(model, None, compress.MaskStore(model), None))
    model.act2.act_quant.clip_hi.data.fill_(1.5)
    q.set_active(True)
    state = q.state_dict()
    other = PNet()
    q2 = PACTQuantizer(other, None, bits_activations=4, act_clip_init_val=2.0)
    q2.load_state_dict(state)  # before prepare: kept until prepare
    q2.prepare(compress.Context(other, None, compress.MaskStore(other), None))
    assert float(other.act2.act_quant.clip_hi.detach()) == 1.5 and q2.active


def distiller_asymmetric(w: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Distiller's asymmetric linear quantization of `w` on its [min, max] range (zero included), written out
    with integer codes: [0, 2**bits - 1] unsigned, [-2**(bits-1), 2**(bits-1) - 1] signed (zero point shifted)."""
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = (2 ** bits - 1) / (hi - lo)  # Distiller's scale: codes per unit
    offset = 2 ** (bits - 1) if signed else 0
    zero_point = round(scale * lo) + offset
    codes = torch.clamp(torch.round(scale * w.double() - zero_point), -offset, 2 ** bits - 1 - offset)
    if signed:
        assert codes.min() < 0 < codes.max()  # the signed codes really are signed
    return ((codes + zero_point) / scale).float()


@pytest.mark.parametrize("mode,signed", [("ASYMMETRIC_UNSIGNED", False), ("ASYMMETRIC_SIGNED", True)])
def test_asymmetric_modes_give_distillers_values(mode, signed):
    torch.manual_seed(0)
    model = PNet()
    with torch.no_grad():  # zero point 0.6 / (1.6 / 15) = 5.625: rounding it, not truncating, matters here
        w = model.conv2.weight
        w.copy_(torch.linspace(-0.6, 1.0, w.numel()).reshape_as(w))
    sched = compress.dict_config(model, None, schedule({"class": "QuantAwareTrainRangeLinearQuantizer",
                                                       "mode": mode, "bits_weights": 4}))
    sched.on_epoch_begin(0)
    for layer in (model.conv1, model.conv2, model.conv3):
        expected = distiller_asymmetric(layer.weight.detach(), 4, signed)
        torch.testing.assert_close(layer.weight_quant(layer.weight.detach()), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", ["DorefaQuantizer", "PACTQuantizer", "WRPNQuantizer",
                                 "QuantAwareTrainRangeLinearQuantizer", "PostTrainLinearQuantizer"])
def test_every_quantizer_trains_a_prelu_network(cls):
    torch.manual_seed(0)
    model = PNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = compress.dict_config(model, opt, schedule({"class": cls, "bits_weights": 4, "bits_activations": 4}))
    train(model, opt, sched, [0], batches(2))
    model.eval()
    x = torch.rand(1, 1, 8, 8)
    out = model(x)
    assert torch.isfinite(out).all()
    acts = model.act1.act_quant.grid()  # the PReLU output is on a signed 4-bit grid
    assert acts.qmax - acts.qmin <= 15 and float(acts.lo) < 0
