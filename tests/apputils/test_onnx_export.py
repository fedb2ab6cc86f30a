"""ONNX export of float and quantized SR models, checked in ONNX Runtime; the SR quantization schedules."""
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import compress
from apps.sr.models import C2SRCNN, EDSR, ESPCN, FSRCNN, build_model
from apputils.onnx_export import ExportError, transform_to_onnx

SCHEDULES = Path(__file__).resolve().parents[2] / "schedules" / "sr"
QUANT_SCHEDULES = ["quantization_DoReFa.yaml", "quantization_PACT.yaml", "quantization_linear_w8a8.yaml",
                   "post_train_w8a8.yaml", "agp_prune_then_quant.yaml"]


def ort_run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def quantize(model, schedule_file: str, steps: int = 3, start_epoch: int = 0):
    """Build the schedule and run a few training steps on random images so ranges are tracked."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.file_config(model, opt, SCHEDULES / schedule_file)
    sched.on_epoch_begin(start_epoch, opt)
    model.train()
    g = torch.Generator().manual_seed(0)
    for i in range(steps):
        x = torch.rand(2, 1, 16, 16, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.on_minibatch_end(start_epoch, i, steps, opt)
    return model.eval(), sched


@pytest.mark.parametrize("cls", [C2SRCNN, ESPCN])
def test_float_export_matches_and_keeps_dynamic_size(tmp_path, cls):
    model = cls(1, 2).eval()
    check = transform_to_onnx(model, tmp_path / "m.onnx", torch.rand(1, 1, 16, 16), False)
    assert check["passed"] and check["max_abs_diff"] <= 1e-4 and not check["integer_ops"]
    x = torch.rand(1, 1, 23, 31)  # another size than the dummy input
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(ort_run(tmp_path / "m.onnx", x) - expected).max() <= 1e-4


@pytest.mark.parametrize("cls, schedule, exact", [(C2SRCNN, "quantization_linear_w8a8.yaml", True),
                                                  (ESPCN, "quantization_linear_w8a8.yaml", True),
                                                  (C2SRCNN, "quantization_PACT.yaml", True),
                                                  # residual adds: ONNX Runtime's QLinearAdd rounds its own way
                                                  (partial(EDSR, features=16, blocks=2), "quantization_linear_w8a8.yaml",
                                                   False)])
def test_quantized_export_runs_integer_kernels_and_matches(tmp_path, cls, schedule, exact):
    torch.manual_seed(0)
    model, _ = quantize(cls(1, 2), schedule)
    x = torch.rand(1, 1, 96, 96)  # large enough that float sums hit rounding ties
    check = transform_to_onnx(model, tmp_path / "q.onnx", x, True)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert check["integer_ops"].get("QLinearConv") == convs  # every conv runs on int8
    # ... and the PyTorch side computes QLinearConv's integer arithmetic: not one value differs
    assert check["passed"] and check["within_tolerance"] >= 0.999
    assert check["max_abs_diff"] == 0.0 or not exact
    assert check["weights_exact"] and check["simulation_max_abs_diff"] <= 4 * check["tolerance"]
    graph = onnx.load(str(tmp_path / "q.onnx"))
    int8 = [n for n in graph.graph.node if n.op_type == "Constant"
            and n.attribute[0].t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= convs  # the weights are stored as int8
    y = torch.rand(1, 1, 20, 12)  # dynamic size, quantized: within one output step (but rounding ties)
    with torch.no_grad():
        expected = model(y).numpy()
    errors = np.abs(ort_run(tmp_path / "q.onnx", y) - expected)
    assert (errors <= check["tolerance"]).mean() >= 0.99 and errors.max() <= 8 * check["tolerance"]


def test_dorefa_8bit_export_reports_the_reround(tmp_path):
    model, _ = quantize(C2SRCNN(1, 2), "quantization_DoReFa.yaml")
    check = transform_to_onnx(model, tmp_path / "d.onnx", torch.rand(1, 1, 16, 16), True)
    assert check["passed"] and not check["weights_exact"]
    assert 0 < check["simulation_max_abs_diff"] < 0.05


def test_plain_model_is_quantized_post_training_for_int8_export(tmp_path):
    torch.manual_seed(0)
    model = ESPCN(1, 2).eval()
    x = torch.rand(2, 1, 16, 16)
    check = transform_to_onnx(model, tmp_path / "p.onnx", x, True)
    assert check["passed"] and check["calibrated_on_dummy_input"] and check["integer_ops"]["QLinearConv"] == 3
    assert not any(compress.quantization.is_quantized(m) for m in model.modules())  # caller's model untouched
    with torch.no_grad():
        assert np.abs(ort_run(tmp_path / "p.onnx", x) - model(x).numpy()).max() < 0.05


def test_quantized_model_exports_as_float_without_the_flag(tmp_path):
    model, _ = quantize(C2SRCNN(1, 2), "quantization_linear_w8a8.yaml")
    check = transform_to_onnx(model, tmp_path / "f.onnx", torch.rand(1, 1, 16, 16), False)
    assert check["passed"] and not check["integer_ops"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "f.onnx")).graph.node}
    assert "QuantizeLinear" not in ops


def test_export_errors_are_clear(tmp_path):
    model = ESPCN(1, 2)
    with pytest.raises(ExportError, match="dummy_input"):
        transform_to_onnx(model, tmp_path / "m.onnx", [1, 2], False)
    with pytest.raises(ExportError, match=r"\.onnx"):
        transform_to_onnx(model, tmp_path / "m.txt", torch.rand(1, 1, 8, 8), False)
    opt = torch.optim.Adam(model.parameters())
    compress.file_config(model, opt, SCHEDULES / "quantization_linear_w8a8.yaml").on_epoch_begin(0, opt)
    with pytest.raises(ExportError, match="without a range"):  # QAT never ran a training step
        transform_to_onnx(model, tmp_path / "m.onnx", torch.rand(1, 1, 8, 8), True)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name", QUANT_SCHEDULES)
def test_sr_quantization_schedules_load_on_c2srcnn(name):
    model = C2SRCNN(1, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = compress.file_config(model, opt, SCHEDULES / name)
    assert any(isinstance(m, compress.quantization.QuantLayer) for m in model.modules())
    assert [n for n, _ in model.named_parameters()][:2] == ["first_part.0.weight", "first_part.0.bias"]
    assert sched.schedule["version"] == 1


@pytest.mark.parametrize("model", ["ESPCN", "FSRCNN", "SRCNN", "EDSR"])
@pytest.mark.parametrize("name", [n for n in QUANT_SCHEDULES if "prune" not in n])  # pruning names C2SRCNN's weights
def test_sr_quantization_schedules_load_on_every_model(name, model):
    net = build_model(model, {"upscale_factor": 2})
    compress.file_config(net, torch.optim.Adam(net.parameters()), SCHEDULES / name)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert all(isinstance(m, compress.quantization.QuantLayer) for m in convs)


def test_prune_then_quantize_checkpoint_reloads_and_exports(tmp_path):
    torch.manual_seed(0)
    model = C2SRCNN(1, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = compress.file_config(model, opt, SCHEDULES / "agp_prune_then_quant.yaml")
    x = torch.rand(2, 1, 16, 16)
    for epoch in (0, 3, 4):  # pruning epochs, then the first quantized one
        sched.on_epoch_begin(epoch, opt)
        for i in range(2):
            sched.on_minibatch_begin(epoch, i, 2, opt)
            loss = model(x).sub(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.on_minibatch_end(epoch, i, 2, opt)
        sched.on_epoch_end(epoch, opt)
    w = model.mid_part[1].weight
    assert float((w == 0).float().mean()) > 0.4
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "schedule": sched.schedule, "scheduler": sched.state_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    rebuilt = C2SRCNN(1, 2)
    again = compress.dict_config(rebuilt, None, ckpt["schedule"])
    again.load_state_dict(ckpt["scheduler"])
    rebuilt.load_state_dict(ckpt["model"])
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    check = transform_to_onnx(rebuilt, tmp_path / "pq.onnx", x, True)
    assert check["passed"] and check["weights_exact"]
    graph = onnx.load(str(tmp_path / "pq.onnx"))
    int8 = [onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.graph.node if n.op_type == "Constant"
            and n.attribute[0].t.data_type == onnx.TensorProto.INT8 and n.attribute[0].t.dims == [12, 12, 3, 3]]
    assert int8 and max(float((q == 0).mean()) for q in int8) > 0.4  # pruned weights are int8 zeros


def test_fsrcnn_transposed_conv_exports(tmp_path):
    model, _ = quantize(FSRCNN(1, 2), "quantization_linear_w8a8.yaml")
    check = transform_to_onnx(model, tmp_path / "t.onnx", torch.rand(1, 1, 12, 12), True)
    assert check["passed"]
