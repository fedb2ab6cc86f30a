"""ONNX export of float and quantized SR models, checked in ONNX Runtime; the SR quantization schedules.

Exactness is asserted on every CPU: the portable weight grid gives ONNX Runtime's output exactly
everywhere; the full int8 grid does on CPUs whose integer kernels do not saturate and is refused with a
clear error where they do (apputils.ort_probe tells which kind of CPU runs the tests).
"""
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import compress
from apps.sr.models import C2SRCNN, EDSR, ESPCN, FSRCNN, build_model
from apputils.execution_env import UserError
from apputils.onnx_export import (
    EXACT_ON_EVERY_X86,
    EXACT_ON_VNNI,
    ExportCheckError,
    ExportError,
    transform_to_onnx,
)
from apputils.ort_probe import probe_exact, u8s8_saturates
from compress.quantization import PORTABLE_WEIGHT_CODE
from compress.quantization.core import Grid
from compress.quantization.export import qlinear_add
from compress.schedule_source import read_schedule

SCHEDULES = Path(__file__).resolve().parents[2] / "schedules" / "sr"
QUANT_SCHEDULES = ["quantization_DoReFa.yaml", "quantization_PACT.yaml", "quantization_linear_w8a8.yaml",
                   "post_train_w8a8.yaml", "agp_prune_then_quant.yaml"]


def ort_run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def quantize(model, schedule_file: str, steps: int = 3, start_epoch: int = 0, **quantizer_changes):
    """Build the schedule (its quantizer changed by `quantizer_changes`) and run a few training steps on
    random images so ranges are tracked."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = read_schedule(SCHEDULES / schedule_file).data
    for quantizer in schedule["quantizers"].values():
        quantizer.update(quantizer_changes)
    sched = compress.dict_config(model, opt, schedule)
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


def int8_weights(path) -> list[np.ndarray]:
    """The int8 constants (weight codes) of an exported graph."""
    graph = onnx.load(str(path)).graph
    return [onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
            if n.op_type == "Constant" and n.attribute[0].t.data_type == onnx.TensorProto.INT8]


@pytest.mark.parametrize("cls, schedule, seed", [(C2SRCNN, "quantization_linear_w8a8.yaml", 0),
                                                 (ESPCN, "quantization_linear_w8a8.yaml", 0),
                                                 (C2SRCNN, "quantization_PACT.yaml", 0),
                                                 # a seed whose residual add lands values on QLinearAdd's
                                                 # rounding ties (summing the floats is 0.0033 off there)
                                                 (partial(EDSR, features=16, blocks=2), "quantization_linear_w8a8.yaml",
                                                  2)])
def test_quantized_export_runs_integer_kernels_and_matches(tmp_path, cls, schedule, seed):
    torch.manual_seed(seed)
    model, _ = quantize(cls(1, 2), schedule)
    x = torch.rand(1, 1, 96, 96)  # large enough that float sums hit rounding ties
    check = transform_to_onnx(model, tmp_path / "q.onnx", x, True)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert check["integer_ops"].get("QLinearConv") == convs  # every conv runs on int8
    assert check["integer_ops"].get("QLinearAdd", 0) == (1 if "EDSR" in str(cls) else 0)
    # ... and the PyTorch side computes QLinearConv's and QLinearAdd's arithmetic: not one value differs,
    # on this CPU whatever its kind (the default, portable, weight grid)
    assert check["passed"] and check["max_abs_diff"] == 0.0
    assert check["weight_range"] == "portable" and check["exact_on"] == EXACT_ON_EVERY_X86
    assert check["weights_exact"] and check["simulation_max_abs_diff"] <= 4 * check["tolerance"]
    int8 = int8_weights(tmp_path / "q.onnx")
    assert len(int8) >= convs  # the weights are stored as int8 ...
    assert max(int(np.abs(q.astype(np.int16)).max()) for q in int8) == check["max_weight_code"] <= PORTABLE_WEIGHT_CODE
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "q.onnx")).metadata_props}
    assert meta["quantization.exact_on"] == EXACT_ON_EVERY_X86 and meta["quantization.weight_range"] == "portable"
    y = torch.rand(1, 1, 20, 12)  # dynamic size, quantized: within one output step (but rounding ties)
    with torch.no_grad():
        expected = model(y).numpy()
    errors = np.abs(ort_run(tmp_path / "q.onnx", y) - expected)
    assert (errors <= check["tolerance"]).mean() >= 0.99 and errors.max() <= 8 * check["tolerance"]


def test_dorefa_8bit_export_reports_the_reround(tmp_path):
    model, _ = quantize(C2SRCNN(1, 2), "quantization_DoReFa.yaml")
    check = transform_to_onnx(model, tmp_path / "d.onnx", torch.rand(1, 1, 16, 16), True)
    assert check["passed"] and not check["weights_exact"] and check["max_abs_diff"] == 0.0
    assert 0 < check["simulation_max_abs_diff"] < 0.05
    # re-rounded onto the portable grid: every code within the bound, the bound reached
    assert max(int(np.abs(q.astype(np.int16)).max()) for q in int8_weights(tmp_path / "d.onnx")) == PORTABLE_WEIGHT_CODE


@pytest.mark.parametrize("schedule", ["quantization_linear_w8a8.yaml", "post_train_w8a8.yaml",
                                      "quantization_PACT.yaml", "quantization_DoReFa.yaml"])
def test_portable_codes_stay_within_the_bound_and_are_the_simulation_grid(tmp_path, schedule):
    """2 * 255 * |code| <= 32767 for every exported weight; where the grid is exact, the simulation's
    fake-quantized weight is code x scale (to float rounding: DoReFa computes its levels in float)."""
    torch.manual_seed(0)
    model, _ = quantize(C2SRCNN(1, 2), schedule)
    check = transform_to_onnx(model, tmp_path / "q.onnx", torch.rand(1, 1, 24, 24), True)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    consts = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    exported = [(consts[n.input[0]], consts[n.input[1]]) for n in graph.node
                if n.op_type == "DequantizeLinear" and consts.get(n.input[0], np.zeros(0)).dtype == np.int8]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(exported) == len(convs)
    for (codes, scale), conv in zip(exported, convs, strict=True):
        assert 2 * 255 * int(np.abs(codes.astype(np.int16)).max()) <= 32767
        if check["weights_exact"]:
            with torch.no_grad():
                simulated = conv.weight_quant(conv.weight)
            ratio = simulated / torch.tensor(scale).view(-1, 1, 1, 1)
            assert torch.equal(torch.round(ratio), torch.from_numpy(codes.astype(np.float32)))
            assert float((ratio - torch.round(ratio)).abs().max()) < 1e-4
    assert check["weights_exact"] == (schedule != "quantization_DoReFa.yaml")


def test_full_weight_grid_is_exact_with_vnni_and_refused_without(tmp_path):
    """weight_range: full is exact where the integer kernels do not saturate; where they do (the probe says
    so), the export raises one clear line and leaves no model.onnx behind."""
    torch.manual_seed(0)
    model, _ = quantize(C2SRCNN(1, 2), "quantization_linear_w8a8.yaml", weight_range="full")
    path = tmp_path / "model.onnx"
    path.write_bytes(b"an older export")
    x = torch.rand(1, 1, 96, 96)
    if u8s8_saturates():
        with pytest.raises(ExportCheckError) as err:
            transform_to_onnx(model, path, x, True)
        message = str(err.value)
        assert isinstance(err.value, UserError) and "\n" not in message
        assert "max |diff|" in message and "within one step" in message  # what differed
        assert "16 bits and saturate" in message and "weight_range: portable" in message  # cause and fix
        assert not path.exists() and (tmp_path / "model.onnx.failed").exists()
        assert err.value.check["max_weight_code"] > PORTABLE_WEIGHT_CODE and err.value.check["max_abs_diff"] > 0
    else:
        check = transform_to_onnx(model, path, x, True)
        assert check["passed"] and check["max_abs_diff"] == 0.0 and check["exact_on"] == EXACT_ON_VNNI
        assert check["weight_range"] == "full" and check["max_weight_code"] > PORTABLE_WEIGHT_CODE


def test_the_probe_and_the_portable_bound():
    """Codes up to +-64 never saturate (2 * 255 * 64 <= 32767), on every CPU; one more saturates exactly
    where the full grid does (the probe's CPU kind)."""
    assert probe_exact(PORTABLE_WEIGHT_CODE) and probe_exact(-PORTABLE_WEIGHT_CODE) and probe_exact(1)
    for code in (PORTABLE_WEIGHT_CODE + 1, -PORTABLE_WEIGHT_CODE - 1, 127, -127):
        assert probe_exact(code) != u8s8_saturates(), code


def qdq_add_session(scales, zero_points):
    """DQ(a), DQ(b) -> Add -> Q, which ONNX Runtime runs as one QLinearAdd."""
    names = ("a", "b", "c")
    inits = [numpy_helper.from_array(np.array(s, np.float32), f"s{n}") for s, n in zip(scales, names, strict=True)]
    inits += [numpy_helper.from_array(np.array(z, np.uint8), f"z{n}") for z, n in zip(zero_points, names, strict=True)]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
             helper.make_node("Add", ["fa", "fb"], ["sum"]), helper.make_node("QuantizeLinear", ["sum", "sc", "zc"], ["c"])]
    shape = [1, 16, 33, 33]
    graph = helper.make_graph(nodes, "qdq_add", [helper.make_tensor_value_info(n, TensorProto.UINT8, shape) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.UINT8, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_qlinear_add_emulation_is_onnx_runtimes():
    """ONNX Runtime's QLinearAdd is not round((a + b) / s_c): near rounding ties it lands elsewhere. The
    emulation gives its output code for code; the plain float sum does not (so this test can fail)."""
    rng = np.random.default_rng(0)
    plain_misses = 0
    for _ in range(40):
        scales = rng.uniform(1e-3, 3e-2, 3).astype(np.float32)
        zero_points = rng.integers(0, 256, 3)
        a, b = (rng.integers(0, 256, (1, 16, 33, 33), dtype=np.uint8) for _ in range(2))
        got = qdq_add_session(scales, zero_points).run(None, {"a": a, "b": b})[0].astype(np.float32)
        grids = [Grid(torch.tensor(s), torch.tensor(float(z)), 0, 255) for s, z in zip(scales, zero_points, strict=True)]
        fa, fb = ((torch.from_numpy(q.astype(np.float32)) - float(z)) * torch.tensor(s)
                  for q, s, z in ((a, scales[0], zero_points[0]), (b, scales[1], zero_points[1])))
        emulated = qlinear_add(fa, fb, *grids) / torch.tensor(scales[2]) + float(zero_points[2])
        assert torch.equal(torch.round(emulated), torch.from_numpy(got))
        plain = torch.clamp(torch.round((fa + fb) / torch.tensor(scales[2])) + float(zero_points[2]), 0, 255)
        plain_misses += int((plain != torch.from_numpy(got)).sum())
    assert plain_misses > 0


def test_plain_model_is_quantized_post_training_for_int8_export(tmp_path):
    torch.manual_seed(0)
    model = ESPCN(1, 2).eval()
    x = torch.rand(2, 1, 16, 16)
    check = transform_to_onnx(model, tmp_path / "p.onnx", x, True)
    assert check["passed"] and check["calibrated_on_dummy_input"] and check["integer_ops"]["QLinearConv"] == 3
    assert check["max_abs_diff"] == 0.0 and check["exact_on"] == EXACT_ON_EVERY_X86
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
    assert check["passed"] and check["weights_exact"] and check["max_abs_diff"] == 0.0
    graph = onnx.load(str(tmp_path / "pq.onnx"))
    int8 = [onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.graph.node if n.op_type == "Constant"
            and n.attribute[0].t.data_type == onnx.TensorProto.INT8 and n.attribute[0].t.dims == [12, 12, 3, 3]]
    assert int8 and max(float((q == 0).mean()) for q in int8) > 0.4  # pruned weights are int8 zeros


def test_fsrcnn_transposed_conv_exports(tmp_path):
    model, _ = quantize(FSRCNN(1, 2), "quantization_linear_w8a8.yaml")
    check = transform_to_onnx(model, tmp_path / "t.onnx", torch.rand(1, 1, 12, 12), True)
    assert check["passed"]
