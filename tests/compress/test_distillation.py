"""Knowledge distillation: loss values, hooks, the frozen teacher, connectors, resume, and every refusal."""
import io
import math
import textwrap

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import compress
from compress import ScheduleError
from compress.distillation import channel_wise_divergence, kl_divergence, output_distance
from tests.scheduled import run_scheduled

from .nets import Plain, sgd

DUMMY = torch.zeros(1, 1, 6, 6)


def kd_schedule(epochs=(0, 3), **distiller):
    return {"version": 1,
            "distillers": {"kd": {"class": "KnowledgeDistillation", **distiller}},
            "policies": [{"distiller": {"instance_name": "kd"}, "starting_epoch": epochs[0], "ending_epoch": epochs[1]}]}


def batch(epoch: int, i: int):
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(epoch * 100 + i))
    return x, x.flip(-1)


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Counting(nn.Module):
    """A teacher that counts its calls."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


# ---- the losses on fixed tensors -----------------------------------------------------------------

def test_l1_and_l2_output_losses():
    s, t = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.5, 2.0], [1.0, 4.0]])
    assert output_distance("l1", s, t).item() == pytest.approx((0.5 + 0 + 2 + 0) / 4)
    assert output_distance("l2", s, t).item() == pytest.approx((0.25 + 0 + 4 + 0) / 4)


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_is_hintons_soft_target_loss_times_t_squared(temperature):
    s = [[0.0, 0.0, 1.0], [2.0, -1.0, 0.5]]
    t = [[math.log(3.0), 0.0, 0.2], [0.0, 1.0, -2.0]]
    expected = sum(_kl(_softmax([x / temperature for x in ti]), _softmax([x / temperature for x in si]))
                   for si, ti in zip(s, t, strict=True)) / 2 * temperature ** 2
    got = kl_divergence(torch.tensor(s), torch.tensor(t), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    torch_kl = F.kl_div(F.log_softmax(torch.tensor(s) / temperature, 1), F.softmax(torch.tensor(t) / temperature, 1),
                        reduction="batchmean") * temperature ** 2  # Distiller's formula
    assert got.item() == pytest.approx(torch_kl.item(), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_is_a_per_channel_spatial_kl(tau):
    s = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]], [[2.0, 1.0], [0.0, 0.0]]]])  # N=1, C=2, 2x2 maps
    t = torch.tensor([[[[math.log(3.0), 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]])
    expected = sum(_kl(_softmax([x / tau for x in t[0, c].flatten().tolist()]),
                       _softmax([x / tau for x in s[0, c].flatten().tolist()])) for c in range(2)) * tau ** 2 / 2
    assert channel_wise_divergence(s, t, tau).item() == pytest.approx(expected, rel=1e-5)
    assert channel_wise_divergence(t, t, tau).item() == pytest.approx(0.0, abs=1e-7)


class Constant(nn.Module):
    """A teacher that answers every input with the same tensor."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x):
        return self.value.expand_as(x)


def test_the_terms_are_named_weighted_and_added_to_the_loss():
    torch.manual_seed(0)
    model = Plain()
    opt = sgd(model)
    teacher = Constant(torch.full((1, 1, 6, 6), 0.25))
    sched = compress.dict_config(model, opt, kd_schedule(teacher="const", output_loss="l2", distill_weight=3.0,
                                                         student_weight=0.5), teachers={"const": teacher})
    x, y = batch(0, 0)
    sched.on_epoch_begin(0, opt)
    sched.on_minibatch_begin(0, 0, 1, opt)
    out = model(x)
    task = F.mse_loss(out, y)
    total, parts = sched.before_backward_pass(0, 0, 1, task, opt, return_loss_components=True)
    assert set(parts) == {"kd.output", "kd.student"}
    assert parts["kd.output"].item() == pytest.approx(3.0 * F.mse_loss(out, torch.full_like(out, 0.25)).item())
    assert parts["kd.student"].item() == pytest.approx(-0.5 * task.item())
    assert total.item() == pytest.approx(0.5 * task.item() + parts["kd.output"].item())


# ---- hooks, the frozen teacher ---------------------------------------------------------------------

def test_the_model_is_unchanged_when_the_policy_is_inactive():
    torch.manual_seed(0)
    plain = Plain()
    kd_model = Plain()
    kd_model.load_state_dict(plain.state_dict())
    teacher = Counting(Plain())
    o1, o2 = sgd(plain), sgd(kd_model)
    sched = compress.dict_config(kd_model, o2, kd_schedule((1, 2), teacher="t"), teachers={"t": teacher},
                                 dummy_input=DUMMY)
    calls_at_build = teacher.calls
    empty = compress.dict_config(plain, o1, {"version": 1})
    seen = []
    run_scheduled(kd_model, o2, sched, 1, batch, minibatches=3, record=lambda e, i: seen.append(hooks(kd_model)))
    run_scheduled(plain, o1, empty, 1, batch, minibatches=3)
    assert seen == [0, 0, 0] and teacher.calls == calls_at_build  # epoch 0: no hook, no teacher
    for a, b in zip(plain.state_dict().values(), kd_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    run_scheduled(kd_model, o2, sched, range(1, 2), batch, minibatches=3,
                  record=lambda e, i: seen.append(hooks(kd_model)))
    assert seen[3:] == [2, 2, 2] and teacher.calls == calls_at_build + 3
    assert hooks(kd_model) == 0  # removed in before_backward_pass
    with torch.no_grad():
        kd_model.eval()(batch(9, 9)[0])  # validation: the teacher does not run
    assert teacher.calls == calls_at_build + 3


def test_teacher_gradients_are_never_computed():
    torch.manual_seed(0)
    model, teacher = Plain(), Plain()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = sgd(model)
    schedule = kd_schedule(teacher="big", features=[{"student": "conv2", "teacher": "conv2", "loss": "l2"}])
    sched = compress.dict_config(model, opt, schedule, teachers={"big": teacher}, dummy_input=DUMMY)
    run_scheduled(model, opt, sched, 2, batch, minibatches=2)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())

    self_model = Plain()
    opt = sgd(self_model)
    sched = compress.dict_config(self_model, opt, kd_schedule(features=[{"student": "conv1", "teacher": "conv1"}]),
                                 dummy_input=DUMMY)
    run_scheduled(self_model, opt, sched, 2, batch, minibatches=2)
    copy = sched.policies[0].component.teacher
    assert copy is not self_model and not copy.training
    assert all(p.grad is None and not p.requires_grad for p in copy.parameters())
    assert not torch.equal(copy.conv1.weight, self_model.conv1.weight)  # the student moved, the teacher did not


def test_self_teacher_is_taken_before_that_epochs_pruning_and_without_fake_quantization():
    torch.manual_seed(0)
    model = Plain()
    opt = sgd(model)
    schedule = {"version": 1,
                "pruners": {"p": {"class": "SparsityLevelParameterPruner", "levels": {"conv2.weight": 0.5}}},
                "quantizers": {"q": {"class": "QuantAwareTrainRangeLinearQuantizer", "bits_weights": 4,
                                     "bits_activations": 4}},
                "distillers": {"kd": {"class": "KnowledgeDistillation", "output_loss": "l2"}},
                "policies": [{"pruner": {"instance_name": "p"}, "epochs": [1]},
                             {"quantizer": {"instance_name": "q"}, "starting_epoch": 0, "ending_epoch": 3},
                             {"distiller": {"instance_name": "kd"}, "starting_epoch": 1, "ending_epoch": 3}]}
    sched = compress.dict_config(model, opt, schedule)
    run_scheduled(model, opt, sched, 2, batch, minibatches=2)
    teacher = sched.policies[2].component.teacher
    assert int((model.conv2.weight == 0).sum()) == 288 and int((teacher.conv2.weight == 0).sum()) == 0
    assert model.conv2.quant_enabled and not teacher.conv2.quant_enabled
    x = batch(5, 0)[0]
    float_copy = Plain()
    float_copy.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in float_copy.state_dict()})
    assert torch.equal(teacher(x), float_copy(x))  # the teacher is the full-precision network


# ---- connectors and resume -------------------------------------------------------------------------

FEATURES = [{"student": "conv2", "teacher": "conv2", "loss": "l2", "connector": "auto"},
            {"student": "conv1", "teacher": "conv1", "loss": "cwd", "tau": 2.0, "weight": 0.5}]


def test_connectors_train_with_the_model_and_are_saved_and_resumed():
    def fresh():
        torch.manual_seed(3)
        model, teacher = Plain(4), Plain(8)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = compress.dict_config(model, opt, kd_schedule((0, 4), teacher="wide", features=FEATURES),
                                     teachers={"wide": teacher}, dummy_input=DUMMY)
        return model, opt, sched

    model, opt, sched = fresh()
    kd = sched.policies[0].component
    conv = kd.connectors[0]
    assert set(kd.connectors) == {0, 1} and conv.in_channels == 4 and conv.out_channels == 8
    assert any(p is conv.weight for g in opt.param_groups for p in g["params"])
    assert set(model.state_dict()) == set(Plain(4).state_dict())  # not part of the model
    start = conv.weight.detach().clone()
    run_scheduled(model, opt, sched, 4, batch, minibatches=2)
    assert not torch.equal(start, conv.weight)  # trained
    assert "0" in sched.state_dict()["policies"]["distiller:kd"]["connectors"]

    m2, s2 = _resumed(fresh, 2, 4, 2)
    _same(model, m2)
    for i, c in kd.connectors.items():
        assert all(torch.equal(a, b) for a, b in zip(c.state_dict().values(),
                                                     s2.policies[0].component.connectors[i].state_dict().values(),
                                                     strict=True))


def _resumed(fresh, stop: int, end: int, minibatches: int):
    """Train a fresh run to `stop`, save it, rebuild it from scratch, load it and train on to `end`."""
    m1, o1, s1 = fresh()
    run_scheduled(m1, o1, s1, stop, batch, minibatches=minibatches)
    buffer = io.BytesIO()
    torch.save({"model": m1.state_dict(), "optimizer": o1.state_dict(), "scheduler": s1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    m2, o2, s2 = fresh()
    s2.load_state_dict(saved["scheduler"])
    m2.load_state_dict(saved["model"])
    o2.load_state_dict(saved["optimizer"])
    run_scheduled(m2, o2, s2, range(stop, end), batch, minibatches=minibatches)
    return m2, s2


def _same(a: nn.Module, b: nn.Module):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), f"{name} differs"


AGP_QAT_KD = {
    "version": 1,
    "pruners": {"agp": {"class": "AutomatedGradualPruner", "initial_sparsity": 0.0, "final_sparsity": 0.5,
                        "weights": ["conv1.weight", "conv2.weight"]}},
    "quantizers": {"pact": {"class": "PACTQuantizer", "bits_weights": 4, "bits_activations": 4,
                            "act_clip_init_val": 2.0}},
    "distillers": {"kd": {"class": "KnowledgeDistillation", "teacher": "self", "output_loss": "l1",
                          "student_weight": 0.5, "distill_weight": 2.0,
                          "features": [{"student": "conv2", "teacher": "conv2", "loss": "cwd", "tau": 2.0}]}},
    "policies": [
        {"pruner": {"instance_name": "agp", "args": {"mini_batch_pruning_frequency": 1}},
         "starting_epoch": 0, "ending_epoch": 3},
        {"quantizer": {"instance_name": "pact"}, "starting_epoch": 2, "ending_epoch": 5},
        {"distiller": {"instance_name": "kd"}, "starting_epoch": 1, "ending_epoch": 5},
    ],
}


def test_agp_qat_and_kd_in_one_schedule_resume_bit_exactly():
    def fresh():
        torch.manual_seed(1)
        model = Plain()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, compress.dict_config(model, opt, AGP_QAT_KD, dummy_input=DUMMY)

    model, opt, sched = fresh()
    run_scheduled(model, opt, sched, 5, batch, minibatches=3)
    assert int((model.conv1.weight == 0).sum()) == 36
    for stop in (1, 2, 4):  # before the teacher exists, after it, with quantization on
        m2, s2 = _resumed(fresh, stop, 5, 3)
        _same(model, m2)
        _same(sched.policies[2].component.teacher, s2.policies[2].component.teacher)


@pytest.mark.parametrize("kd_start", [0, 1])  # a dense teacher (taken before thinning), a thinned one
def test_a_self_teacher_resumes_across_thinning(kd_start):
    schedule = {"version": 1,
                "pruners": {"f": {"class": "L1RankedStructureParameterPruner",
                                  "reg_regims": {"conv1.weight": [0.5, "3D"]}}},
                "extensions": {"thin": {"class": "FilterRemover", "thinning_func_str": "remove_filters"}},
                "distillers": {"kd": {"class": "KnowledgeDistillation", "output_loss": "l2"}},
                "policies": [{"pruner": {"instance_name": "f"}, "epochs": [0]},
                             {"extension": {"instance_name": "thin"}, "epochs": [0]},
                             {"distiller": {"instance_name": "kd"}, "starting_epoch": kd_start, "ending_epoch": 3}]}

    def fresh():
        torch.manual_seed(2)
        model = Plain()
        opt = sgd(model)
        return model, opt, compress.dict_config(model, opt, schedule, dummy_input=DUMMY)

    model, opt, sched = fresh()
    run_scheduled(model, opt, sched, 3, batch, minibatches=2)
    teacher = sched.policies[2].component.teacher
    assert model.conv1.out_channels == 4 and teacher.conv1.out_channels == (8 if kd_start == 0 else 4)
    m2, s2 = _resumed(fresh, 2, 3, 2)
    _same(model, m2)
    _same(teacher, s2.policies[2].component.teacher)


def test_without_an_optimizer_distillers_are_checked_not_built():
    model = Plain()
    sched = compress.dict_config(model, None, kd_schedule(teacher="not_passed"))
    assert [(p.kind, type(p.component).__name__) for p in sched.policies] == [("distiller", "Inactive")]
    loss = torch.ones(())
    assert sched.before_backward_pass(0, 0, 1, loss) is loss  # inactive: adds nothing
    with pytest.raises(ScheduleError, match="unknown argument 'temprature'"):
        compress.dict_config(model, None, kd_schedule(temprature=2.0))


# ---- refusals --------------------------------------------------------------------------------------

def refuse(tmp_path, distiller: str, *expected: str, teachers=None, dummy=DUMMY, model=None) -> ScheduleError:
    path = tmp_path / "kd.yaml"
    path.write_text("version: 1\ndistillers:\n  kd:\n    class: KnowledgeDistillation\n"
                    + textwrap.indent(textwrap.dedent(distiller), "    ")
                    + "policies:\n  - distiller: {instance_name: kd}\n    starting_epoch: 0\n    ending_epoch: 2\n")
    model = model or Plain()
    opt = sgd(model)
    groups = len(opt.param_groups)
    with pytest.raises(ScheduleError) as info:
        compress.file_config(model, opt, path, teachers=teachers, dummy_input=dummy)
    message = str(info.value)
    assert str(path) in message and "line" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert len(opt.param_groups) == groups and hooks(model) == 0
    return info.value


def test_unknown_layers_suggest_the_nearest(tmp_path):
    refuse(tmp_path, "features:\n  - {student: conv_2, teacher: conv2}\n", "line 6", "distillers.kd.features[0].student",
           "the model has no layer 'conv_2'", "did you mean 'conv2'?")
    refuse(tmp_path, "teacher: t\nfeatures:\n  - {student: conv2, teacher: cnv3}\n", "features[0].teacher",
           "teacher 't' has no layer 'cnv3'", "did you mean 'conv3'?", teachers={"t": Plain()})


def test_a_channel_mismatch_without_a_connector_is_refused(tmp_path):
    refuse(tmp_path, "teacher: wide\nfeatures:\n  - {student: conv2, teacher: conv2, connector: none}\n",
           "features[0].connector", "'conv2' has 4 channels, the teacher's 'conv2' 8", "use connector: auto",
           teachers={"wide": Plain(8)}, model=Plain(4))


def test_features_need_a_shape_probe(tmp_path):
    refuse(tmp_path, "features:\n  - {student: conv2, teacher: conv2}\n", "distillers.kd.features",
           "pass dummy_input=torch.zeros(1, C, H, W)", dummy=None)


class Half(nn.Module):
    def forward(self, x):
        return x[..., ::2, ::2]


def test_a_teacher_with_another_output_shape_is_refused_with_both_shapes(tmp_path):
    refuse(tmp_path, "teacher: small\n", "distillers.kd.teacher", "teacher 'small' gives outputs of shape (1, 1, 3, 3), "
           "the model (1, 1, 6, 6) for the dummy input", teachers={"small": Half()})
    model = Plain()  # no dummy input: refused at the first step
    opt = sgd(model)
    sched = compress.dict_config(model, opt, kd_schedule(teacher="small"), teachers={"small": Half()})
    with pytest.raises(ScheduleError, match=r"distillers.kd.teacher.*shape \(2, 1, 3, 3\), the model \(2, 1, 6, 6\) "
                       r"\(found at the first distillation step\)"):
        run_scheduled(model, opt, sched, 1, batch, minibatches=1)
    assert hooks(model) == 0


def test_a_teacher_that_cannot_take_the_input_is_refused(tmp_path):
    refuse(tmp_path, "teacher: rgb\n", "teacher 'rgb' cannot run on the model's input (1, 1, 6, 6)",
           teachers={"rgb": nn.Conv2d(3, 1, 3)})


def test_a_teacher_name_not_passed_in_names_the_passed_ones(tmp_path):
    refuse(tmp_path, "teacher: edsr\n", "line 5", "distillers.kd.teacher",
           "no teacher named 'edsr' was passed in (passed: 'edsr2', 'srcnn')", "did you mean 'edsr2'?",
           teachers={"edsr2": Plain(), "srcnn": Plain()})
    refuse(tmp_path, "teacher: edsr\n", "(passed: none)", "teachers={'edsr': module}")


def test_wrapped_trained_or_foreign_teachers_are_refused(tmp_path):
    refuse(tmp_path, "teacher: t\n", "wrapped in DataParallel", "pass the bare module",
           teachers={"t": nn.DataParallel(Plain())})
    model = Plain()
    refuse(tmp_path, "teacher: t\n", "is the model being trained", "use teacher: self", teachers={"t": model},
           model=model)
    refuse(tmp_path, "teacher: t\n", "is a str, not a torch module", teachers={"t": "edsr.pth"})


@pytest.mark.parametrize("text, expected", [
    ("output_loss: KL\n", ["distillers.kd.output_loss", "did you mean 'kl'?"]),
    ("temperature: 4.0\n", ["distillers.kd.temperature", "temperature applies to output_loss: kl, not l1"]),
    ("output_loss: kl\ntemperature: 0\n", ["distillers.kd.temperature", "must be > 0"]),
    ("output_loss: kl\n", ["distillers.kd.output_loss", "kl over a single channel is always 0"]),
    ("distill_weight: -1\n", ["distillers.kd.distill_weight", "must be >= 0"]),
    ("features:\n  - {student: conv2, teacher: conv2, los: l1}\n", ["features[0].los", "did you mean 'loss'?"]),
    ("features:\n  - {student: conv2, teacher: conv2, loss: cdw}\n", ["features[0].loss", "did you mean 'cwd'?"]),
    ("features:\n  - {student: conv2, teacher: conv2, tau: 2}\n", ["features[0].tau", "tau applies to loss: cwd"]),
    ("features:\n  - {student: conv2}\n", ["features[0]", "needs 'teacher'"]),
    ("features:\n  - {student: conv2, teacher: conv2, connector: linear}\n", ["features[0].connector", "'auto' or 'none'"]),
])
def test_bad_arguments_are_refused(tmp_path, text, expected):
    refuse(tmp_path, text, *expected)
