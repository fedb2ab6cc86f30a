"""Distiller's quantizer arguments: DoReFa's weight scale, PostTrainLinearQuantizer's argument names and
statistics file, and a quantizers-only file (Distiller's --qe-config-file) applied without a policy."""
import pytest
import torch
import yaml

import compress
from compress.quantization import QuantLayer

from .test_quantizers import PNet, schedule


def dorefa_weights(**args) -> torch.Tensor:
    torch.manual_seed(0)
    model = PNet()
    with torch.no_grad():
        model.conv2.weight.mul_(20.0)
    compress.dict_config(model, None, schedule({"class": "DorefaQuantizer", "bits_weights": 4, **args}))
    return model.conv2.weight_quant(model.conv2.weight).detach(), model.conv2.weight.detach()


def test_dorefa_weights_are_on_minus_one_to_one_by_default_as_in_distiller():
    wq, w = dorefa_weights()
    assert float(wq.abs().max()) == pytest.approx(1.0)
    wq, w = dorefa_weights(keep_weight_scale=True)
    assert float(wq.abs().max()) == pytest.approx(float(w.abs().max()))


def ptq(**args) -> tuple[torch.nn.Module, compress.CompressionScheduler]:
    model = PNet()
    sched = compress.dict_config(model, None, {"quantizers": {"q": {"class": "PostTrainLinearQuantizer", **args}}})
    return model, sched


def test_a_quantizers_only_file_is_applied_as_distiller_applies_a_qe_config_file(tmp_path):
    model, sched = ptq(bits_activations=8, bits_parameters=8)
    assert isinstance(model.conv2, QuantLayer) and [p.kind for p in sched.policies] == ["quantizer"]


def test_bits_parameters_is_bits_weights():
    model, _ = ptq(bits_parameters=5)
    assert model.conv2.weight_quant.bits == 5
    model, _ = ptq(bits_activations=8, bits_parameters=None, overrides={"conv2": {"bits_weights": 4}})
    assert model.conv1.weight_quant is None and model.conv2.weight_quant.bits == 4


@pytest.mark.parametrize("args, message", [
    ({"bits_accum": 16}, "bits_accum': PostTrainLinearQuantizer: only 32 is supported"),
    ({"fpq_module": 16}, "fpq_module': PostTrainLinearQuantizer: Distiller's fpq_module"),
    ({"clip_acts": "LAPLACE"}, "clip_acts must be 'NONE' or 'AVG' or 'N_STD'"),
    ({"overrides": {"conv2": {"input_overrides": {1: {"from_output": True}}}}}, "layers quantized here have one input"),
    ({"model_activation_stats": "no/such/stats.yaml"}, "cannot read no/such/stats.yaml"),
])
def test_what_cannot_be_honoured_is_refused_at_build_time(args, message):
    with pytest.raises(compress.ScheduleError, match=message.replace("(", r"\(")):
        ptq(**args)


def stats(lo: float, hi: float) -> dict:
    return {"min": lo, "max": hi, "avg_min": lo / 2, "avg_max": hi / 2, "mean": 0.0, "std": hi / 4, "b": 0.1,
            "shape": "(1, 8, 8, 8)"}


@pytest.mark.parametrize("clip, expected", [("NONE", (-4.0, 8.0)), ("AVG", (-2.0, 4.0)), ("N_STD", (-4.0, 4.0))])
def test_activation_ranges_come_from_distillers_statistics_file(tmp_path, clip, expected):
    path = tmp_path / "stats.yaml"
    path.write_text(yaml.safe_dump({"conv2": {"inputs": {0: stats(-1.0, 2.0)}, "output": stats(-4.0, 8.0)},
                                    "act2": {"inputs": {0: stats(-4.0, 8.0)}, "output": stats(0.0, 6.0)}}))
    model, sched = ptq(model_activation_stats=str(path), clip_acts=clip, clip_n_stds=2)
    q = model.conv2.output_quant
    assert (q.mode, float(q.lo), float(q.hi)) == ("fixed", *expected)
    assert float(model.conv2.input_quant.hi) == {"NONE": 2.0, "AVG": 1.0, "N_STD": 1.0}[clip]
    assert model.conv1.output_quant.mode == "calib"  # no statistics: calibrated on the first batches


def test_incomplete_statistics_are_refused(tmp_path):
    path = tmp_path / "stats.yaml"
    path.write_text(yaml.safe_dump({"conv2": {"output": {"min": -1.0, "max": 1.0}}}))
    with pytest.raises(compress.ScheduleError, match="the output statistics of 'conv2' lack avg_min, avg_max"):
        ptq(model_activation_stats=str(path))


def test_per_layer_clip_and_input_overrides():
    model, _ = ptq(clip_acts="AVG", inputs_quant_auto_fallback=False, overrides={
        "conv1": {"input_overrides": {0: {"from_output": True}}},
        "conv3": {"clip_acts": "NONE", "input_overrides": {0: {"clip_acts": "AVG"}}}})
    assert model.conv1.input_quant.calib_clip == "AVG"
    assert model.conv3.output_quant.calib_clip == "NONE" and model.conv3.input_quant.calib_clip == "AVG"
