"""Exact fake-quantized values on fixed tensors, for every quantizer kind and mode, and the STE gradients."""
import pytest
import torch

from compress.quantization.core import (
    PORTABLE_WEIGHT_CODE,
    ActQuant,
    NonFiniteRangeError,
    WeightQuant,
    asym_grid,
    fake_quant,
    round_ste,
    sym_grid,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def close(a, b):
    assert torch.allclose(a, b, atol=1e-6), (a, b)


def test_dorefa_weights_two_bits_and_zero_kept():
    w = t(-1.0, -0.2, 0.0, 0.3, 2.0)
    # tanh / (2 max|tanh|) + 0.5 = [0.105, 0.398, 0.5, 0.651, 1]; x3 rounds (half to even) to [0, 1, 2, 2, 3]
    close(WeightQuant(2, "dorefa")(w), t(-1, -1 / 3, 0, 1 / 3, 1))  # the exact zero stays zero
    close(WeightQuant(2, "dorefa", keep_scale=True)(w), t(-2, -2 / 3, 0, 2 / 3, 2))


def test_dorefa_one_bit_is_sign_times_mean_abs():
    close(WeightQuant(1, "dorefa")(t(-1.0, -0.2, 0.3, 2.0)), t(-0.875, -0.875, 0.875, 0.875))


def test_wrpn_weights_clip_then_symmetric():
    close(WeightQuant(3, "wrpn")(t(-1.5, -0.2, 0.1, 0.5, 0.9)), t(-1, -1 / 3, 0, 2 / 3, 1))


def test_linear_weights_symmetric_per_tensor_and_per_channel():
    close(WeightQuant(4, "linear", "sym")(t(-0.7, -0.1, 0.05, 0.35)), t(-0.7, -0.1, 0.0, 0.4))
    w = torch.tensor([[-0.7, 0.35], [0.2, -0.05]])
    out = WeightQuant(4, "linear", "sym", per_channel=True)(w)
    close(out, torch.tensor([[-0.7, 0.4], [0.2, -0.2 / 7 * 2]]))


def test_linear_weights_asymmetric():
    # range [-0.3, 0.6], 2 bits: scale 0.3, zero point 1
    close(WeightQuant(2, "linear", "asym")(t(-0.3, -0.1, 0.2, 0.6)), t(-0.3, 0.0, 0.3, 0.6))


def test_clipped_activation_unsigned_and_signed():
    relu = ActQuant(2, "fixed", "asym", lo=0.0, hi=1.0)
    close(relu(t(-0.5, 0.1, 0.2, 0.5, 0.9, 1.7)), t(0, 0, 1 / 3, 2 / 3, 1, 1))
    prelu = ActQuant(3, "fixed", "sym", lo=-1.0, hi=1.0)
    close(prelu(t(-2.0, -0.5, -0.1, 0.4, 1.5)), t(-1, -2 / 3, 0, 1 / 3, 1))


def test_pact_values_and_clip_gradient():
    q = ActQuant(2, "learned", "asym", lo=0.0, hi=2.0)
    x = t(-1.0, 0.3, 0.9, 1.5, 3.0).requires_grad_()
    y = q(x)
    close(y.detach(), t(0, 0, 2 / 3, 4 / 3, 2))
    y.sum().backward()
    assert q.clip_hi.grad.item() == 1.0  # one element (3.0) clipped to alpha
    close(x.grad, t(0, 1, 1, 1, 0))  # straight through inside the clip, zero outside


def test_pact_signed_range_learns_both_ends():
    q = ActQuant(2, "learned", "asym", lo=-1.0, hi=2.0, signed=True)
    x = t(-3.0, -0.4, 0.6, 1.5, 2.5)
    y = q(x)
    close(y.detach(), t(-1, 0, 1, 2, 2))  # scale 1, zero point 1
    y.sum().backward()
    assert q.clip_lo.grad.item() == 1.0 and q.clip_hi.grad.item() == 1.0


def test_ema_range_is_bias_corrected():
    q = ActQuant(8, "ema", "asym", ema_decay=0.5).train()
    q(t(-1.0, 3.0))
    close(torch.stack([q.lo, q.hi]), t(-1.0, 3.0))
    q(t(-2.0, 1.0))
    close(torch.stack([q.lo, q.hi]), t(-1.25 / 0.75, 1.25 / 0.75))
    q.eval()
    scale = (2.5 / 0.75) / 255
    close(q(t(0.5)), t(round(0.5 / scale) * scale))
    steps = int(q.ema_steps)
    q(t(100.0))
    assert int(q.ema_steps) == steps  # eval mode does not move the range


@pytest.mark.parametrize("clip, expected", [("NONE", (-3.0, 4.0)), ("AVG", (-2.0, 3.0))])
def test_calibration_min_max_and_average(clip, expected):
    q = ActQuant(8, "calib", "asym", calib_clip=clip)
    q.calibrating = True
    q(t(-1.0, 2.0))
    q(t(-3.0, 4.0))
    q.calibrating = False
    q.finish_calibration()
    close(torch.stack([q.lo, q.hi]), t(*expected))


def test_calibration_n_std():
    q = ActQuant(8, "calib", "asym", calib_clip="N_STD", num_stds=1.0)
    q.calibrating = True
    x = t(-1.0, 0.0, 1.0, 10.0)
    q(x)
    q.calibrating = False
    q.finish_calibration()
    mean, std = x.mean(), x.std(unbiased=False)  # 2.5 +- 4.39, never beyond what was seen
    close(torch.stack([q.lo, q.hi]), torch.stack([x.min(), mean + std]))


def test_grids_symmetric_and_asymmetric():
    g = sym_grid(torch.tensor(1.27), 8)
    assert (g.qmin, g.qmax) == (-127, 127) and abs(float(g.scale) - 0.01) < 1e-7
    g = asym_grid(torch.tensor(0.5), torch.tensor(2.0), 8)  # the range always contains zero
    assert float(g.zero_point) == 0 and abs(float(g.hi) - 2.0) < 1e-6


def test_straight_through_gradients():
    x = t(0.2, 1.6, -2.4).requires_grad_()
    round_ste(x).sum().backward()
    close(x.grad, t(1, 1, 1))
    w = t(0.3, -0.8, 0.05).requires_grad_()
    WeightQuant(4, "linear", "sym")(w).sum().backward()
    close(w.grad, t(1, 1, 1))
    x = t(0.3).requires_grad_()
    fake_quant(x, sym_grid(torch.tensor(1.0), 4)).backward()
    assert x.grad.item() == 1.0


def test_dorefa_weight_gradient_flows_through_tanh():
    w = t(0.1, -0.5, 0.9).requires_grad_()
    WeightQuant(4, "dorefa")(w).sum().backward()
    assert torch.all(w.grad != 0)


def codes(wq, scale):
    return torch.round(wq / scale)


@pytest.mark.parametrize("kind", ["linear", "wrpn"])
def test_portable_weight_grid_keeps_codes_within_64(kind):
    """8-bit symmetric weights: +-64 on the portable grid (2 * 255 * 64 <= 32767), +-127 on the full one;
    4 bits are the same on both."""
    w = torch.linspace(-1.0, 1.0, 1001).view(1, -1)  # one output channel
    portable, full = WeightQuant(8, kind), WeightQuant(8, kind, weight_range="full")
    assert portable.weight_range == "portable" and portable.max_code == PORTABLE_WEIGHT_CODE == 64
    for quant, top in ((portable, 64), (full, 127)):
        wq = quant(w)
        q = codes(wq, quant.code_scale(wq, 0))
        assert int(q.abs().max()) == top and len(torch.unique(q)) == 2 * top + 1  # every level used, none beyond
        assert torch.allclose(q * quant.code_scale(wq, 0), wq, atol=1e-7)  # the simulation lies on those codes
    assert torch.equal(WeightQuant(4, kind)(w), WeightQuant(4, kind, weight_range="full")(w))


@pytest.mark.parametrize("bits, weight_range, exact", [(6, "portable", True), (7, "portable", False),
                                                        (7, "full", True), (8, "full", False), (1, "portable", True)])
def test_dorefa_grids_exact_in_int8(bits, weight_range, exact):
    """DoReFa's k-bit grid has odd codes up to 2**k - 1: exact within +-64 up to 6 bits, +-127 up to 7."""
    quant = WeightQuant(bits, "dorefa", keep_scale=True, weight_range=weight_range)
    assert quant.exact_in_int8 == exact
    wq = quant(torch.linspace(-1.2, 1.2, 257).view(1, -1))
    ratio = wq / quant.code_scale(wq, 0)
    assert (float((ratio - torch.round(ratio)).abs().max()) < 1e-4) == exact or bits == 8
    assert float(ratio.abs().max()) <= quant.max_code + 1e-4 or not exact


def test_training_forward_reads_nothing_back_from_the_device():
    """The bias grid (input_scale x weight_scale) is computed from tensors only: a training step of a
    quantized layer never asks the device for a value (no .item(), bool(), float() on a tensor)."""
    from torch.overrides import TorchFunctionMode

    from compress.quantization.core import QuantConv2d, tag

    class HostReads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.reads = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist"):
                self.reads.append(name)
            return func(*args, **(kwargs or {}))

    for kind in ("linear", "dorefa", "wrpn"):
        conv = torch.nn.Conv2d(2, 3, 3)
        conv.__class__ = QuantConv2d
        conv.weight_quant = WeightQuant(8, kind, per_channel=True)
        conv.input_quant = conv.output_quant = None
        conv.bias_bits = 0
        x = tag(torch.rand(1, 2, 5, 5), sym_grid(torch.tensor(1.0), 8))
        with HostReads() as mode:
            conv(x).sum().backward()
        assert mode.reads == [], (kind, mode.reads)
        assert conv.bias.grad is not None


@pytest.mark.parametrize("bad", [[float("nan"), 1.0], [float("-inf"), float("inf")]])
def test_a_diverged_weight_is_refused_with_a_message_not_a_kernel_error(bad):
    """A channel whose range is inf / NaN has no zero point: one message saying training diverged, where
    torch's kernel would raise a bare '`zero_point` must be between `quant_min` and `quant_max`'."""
    w = torch.tensor([[0.5, -0.25], bad]).view(2, 2, 1, 1)
    with pytest.raises(NonFiniteRangeError, match="training has diverged; lower the learning rate"):
        WeightQuant(8, "linear", "asym", per_channel=True)(w)
