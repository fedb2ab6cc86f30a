"""export_mode: the per-layer INT8 configuration, which adds ONNX Runtime fuses, and a clean exit."""
import pytest
import torch
from torch import nn

import compress
from compress.quantization import ActQuant, QuantLayer, export_mode, in_export_mode
from compress.quantization.export import ExportActQuant, ExportConv2d


class Residual(nn.Module):
    """conv -> ReLU -> conv, plus the skip; `reuse` also feeds the sum to a second conv (two consumers),
    `out` returns the sum itself (a graph output)."""

    def __init__(self, tail: str = "conv"):
        super().__init__()
        self.head = nn.Conv2d(1, 4, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.tail = nn.Conv2d(4, 1, 3, padding=1)
        self.mode = tail

    def forward(self, x):
        h = self.head(x)
        s = h + self.body(h)
        if self.mode == "out":
            return s
        y = self.tail(s)
        return y + self.tail(s).detach() if self.mode == "reuse" else y


def quantized(model: nn.Module, weight_range: str = "portable") -> nn.Module:
    sched = compress.dict_config(model, None, {
        "version": 1, "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "per_channel_wts": True,
                                           "mode": {"weights": "SYMMETRIC", "activations": "ASYMMETRIC_UNSIGNED"},
                                           "weight_range": weight_range}},
        "policies": [{"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 2}]})
    sched.on_epoch_begin(0)
    model.train()
    with torch.no_grad():
        for seed in range(3):
            model(torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def test_config_is_fixed_on_entry_and_everything_is_restored_on_exit():
    torch.manual_seed(0)
    model = quantized(Residual()).train()
    x = torch.rand(1, 1, 12, 12)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = {n: type(m) for n, m in model.named_modules()}
    with export_mode(model, x) as config:
        assert in_export_mode(model) and not model.training  # ranges cannot move while exporting
        assert isinstance(model.head, ExportConv2d) and isinstance(model.head.output_quant, ExportActQuant)
        assert set(config.layers) == {"head", "body.0", "body.2", "tail"}
        head = config.layers["head"]
        assert head.input_grid is not None and float(head.input_grid.scale) == float(model.head.input_quant.grid().scale)
        assert head.weight_codes.dtype == torch.int8 and head.bias_codes.dtype == torch.int32
        assert head.weight_codes.shape == model.head.weight.shape and head.weight_scale.shape == (4,)
        assert config.weights_exact and config.max_weight_code == 64 and config.weight_ranges == ["portable"]
        # the body's second conv reads the ReLU's quantized output: its input grid is that quantizer's
        assert float(config.layers["body.2"].input_grid.scale) == float(model.body[1].act_quant.grid().scale)
        with pytest.raises(RuntimeError, match="already in export mode"):
            with export_mode(model, x):
                pass
    assert not in_export_mode(model) and model.training
    assert {n: type(m) for n, m in model.named_modules()} == classes
    assert not any(hasattr(m, "export_config") for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_full_weight_range_uses_the_whole_int8_grid():
    torch.manual_seed(0)
    with export_mode(quantized(Residual(), "full"), torch.rand(1, 1, 12, 12)) as config:
        assert config.max_weight_code == 127 and config.weight_ranges == ["full"] and config.weights_exact


@pytest.mark.parametrize("tail, fused", [("conv", 1), ("reuse", 0), ("out", 0)])
def test_an_add_is_fused_only_when_one_quantizer_consumes_it(tail, fused):
    """ONNX Runtime fuses DQ, DQ -> Add -> Q into QLinearAdd only when that Q is the sum's one consumer."""
    torch.manual_seed(0)
    model = quantized(Residual(tail))
    with export_mode(model, torch.rand(1, 1, 12, 12)) as config:
        assert config.fused_adds == fused


def test_fused_add_computes_onnx_runtimes_codes_on_the_quantizers_grid():
    """Inside export mode the sum arrives at its quantizer already on its grid, so the quantizer keeps it."""
    torch.manual_seed(0)
    model = quantized(Residual())
    x = torch.rand(1, 1, 12, 12)
    seen = []
    handle = model.tail.input_quant.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    with export_mode(model, x), torch.no_grad():
        model(x)
    handle.remove()
    sum_in, quantized_out = seen[-1]  # the first call is export_mode's own planning pass
    assert torch.equal(sum_in, quantized_out)
    scale = float(model.tail.input_quant.grid().scale)
    assert float((sum_in / scale - torch.round(sum_in / scale)).abs().max()) < 1e-3


def test_unknown_quantized_layer_class_is_refused():
    model = quantized(Residual())

    class Custom(type(model.head)):
        pass

    model.head.__class__ = Custom
    with pytest.raises(ValueError, match="no INT8 export for the quantized layer class Custom"):
        with export_mode(model, torch.rand(1, 1, 12, 12)):
            pass
    assert isinstance(model.head, QuantLayer) and all(type(m) is ActQuant for m in model.modules()
                                                      if isinstance(m, ActQuant))
