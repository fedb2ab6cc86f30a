"""What this CPU's ONNX Runtime integer kernels do, found by running a tiny model (never by CPU name).

x86 CPUs without VNNI (AMD before Zen 4, Intel before Cascade Lake) multiply uint8 x int8 with
vpmaddubsw, which adds each pair of products in 16 bits with saturation: 2 * 255 * 127 = 64770 does not
fit, so INT8 models whose weight codes exceed +-64 compute something else there. VNNI CPUs (vpdpbusd)
sum in 32 bits. `u8s8_saturates()` runs one QLinearConv whose pairs overflow 16 bits and says which
kind of CPU this is; the answer is cached per process.
"""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

#: what the probe found, for messages and reports
SATURATING = "x86-64 without VNNI (ONNX Runtime's u8 x s8 kernels saturate 16-bit pair sums)"
NOT_SATURATING = "no 16-bit saturation in ONNX Runtime's u8 x s8 kernels (VNNI, or not x86)"


def probe_model(code: int, channels: int = 32) -> bytes:
    """A 1x1 QLinearConv of `channels` uint8 inputs of 255 with int8 weights `code`: the exact output is
    code 128 + 100 * sign(code) (output zero point 128)."""
    exact = 255 * abs(code) * channels
    inits = [numpy_helper.from_array(np.array(v, dtype), name) for v, dtype, name in (
        (1.0, np.float32, "x_scale"), (0, np.uint8, "x_zero"), (1.0, np.float32, "w_scale"),
        (0, np.int8, "w_zero"), (exact / 100, np.float32, "y_scale"), (128, np.uint8, "y_zero"))]
    inits.append(numpy_helper.from_array(np.full((8, channels, 1, 1), code, np.int8), "w"))
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale",
                                            "y_zero"], ["y"])
    graph = helper.make_graph([node], "u8s8_probe",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, channels, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def probe_exact(code: int, channels: int = 32) -> bool:
    """Whether ONNX Runtime computes probe_model(code) exactly on this CPU."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(probe_model(code, channels), opts, providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.full((1, channels, 8, 8), 255, np.uint8)})[0]
    return bool((y == 128 + 100 * np.sign(code)).all())


@functools.cache
def u8s8_saturates() -> bool:
    """Whether this CPU's ONNX Runtime uint8 x int8 kernels saturate 16-bit pair sums (x86 without VNNI)."""
    return not probe_exact(127)


def cpu_kind() -> str:
    """One line saying what the probe found on this CPU."""
    return SATURATING if u8s8_saturates() else NOT_SATURATING
