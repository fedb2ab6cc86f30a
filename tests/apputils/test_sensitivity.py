"""Sensitivity analysis: correct pruning per level, model restored bit for bit, fast path == slow path."""
from __future__ import annotations

import copy

import openpyxl
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from apputils.conv_taps import TapsConv
from apputils.platform_summaries import sensitivity_analysis
from apputils.sensitivity import (
    DEFAULT_SPARSITIES,
    Evaluation,
    evaluators,
    prunable_weights,
    suggest_levels,
    tuning,
)
from compress.pruning.criteria import count_to_prune
from compress.pruning.groups import ChannelGroup, GroupMember


class Chain(nn.Module):
    """Branch-free: conv - relu - conv - relu - conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.calls = {"c1": 0}
        self.c1.register_forward_hook(lambda *a: self.calls.__setitem__("c1", self.calls["c1"] + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c3(self.relu(self.c2(self.relu(self.c1(x)))))


class Branchy(nn.Module):
    """A skip tensor crossing the pruned layers, an in-place add and an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.c1(x)
        y = self.c2(skip)
        y += skip
        y = self.act(self.bn(y))
        return self.fc(y.mean(dim=(2, 3)))


class ViewWrite(nn.Module):
    """A later node writes into a cached tensor through a view (no direct in-place user of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        y = self.c2(h)
        v = h[:, :1]
        v.mul_(2.0)
        return y + h.mean(dim=1, keepdim=True)


class Functional(nn.Module):
    """Parameters read directly (fx get_attr nodes), a method call and an input with a default value."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 1, 3, 3) * 0.3)
        self.c2 = nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, gain: float = 2.0) -> torch.Tensor:
        h = F.conv2d(x, self.w1, padding=1).relu()
        return self.c2(h).mul(gain)


def test_cached_path_runs_parameters_read_directly():
    model = Functional()
    ev = Evaluation(data((1, 12, 12)), mse_metrics)
    whole_runs = count_forwards(model)
    fast = sensitivity_analysis(model, None, ev, "element", progress=False)
    assert whole_runs["n"] == 3 + 1  # the baseline and the channels-last check: levels ran from the cache
    slow = sensitivity_analysis(model, None, ev, "element", use_cache=False, progress=False)
    assert set(fast["parameter"]) == {"w1", "c2.weight"}
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-6, atol=1e-9)


def test_cache_survives_writes_through_views():
    model = ViewWrite()
    ev = Evaluation(data((1, 12, 12)), mse_metrics)
    fast = sensitivity_analysis(model, None, ev, "element", progress=False)
    slow = sensitivity_analysis(model, None, ev, "element", use_cache=False, progress=False)
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-6, atol=1e-9)


def mse_metrics(out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    mse = float(((out - target) ** 2).mean())
    return {"mse": mse, "neg_mse": -mse}


def data(shape_out: tuple[int, ...], n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(2, 1, 12, 12, generator=g), torch.rand(2, *shape_out, generator=g)) for _ in range(n)]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
        assert after[k].dtype == v.dtype


@pytest.mark.parametrize("sense_type", ["element", "filter", "channel"])
@pytest.mark.parametrize("net", ["chain", "branchy"])
def test_cached_path_equals_whole_model_path_and_model_is_unchanged(sense_type: str, net: str, tmp_path):
    model = Chain() if net == "chain" else Branchy()
    model.train()
    model.bn.eval() if net == "branchy" else None
    modes = {n: m.training for n, m in model.named_modules()}
    ev = Evaluation(data((1, 12, 12) if net == "chain" else (3,)), mse_metrics)
    before = snapshot(model)
    params_before = {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()}
    whole_runs = count_forwards(model)
    fast = sensitivity_analysis(model, tmp_path / "fast.xlsx", ev, sense_type, progress=False)
    fast_whole_runs = whole_runs["n"]
    assert_identical(model, before)
    slow = sensitivity_analysis(model, None, ev, sense_type, use_cache=False, progress=False)
    slow_whole_runs = whole_runs["n"] - fast_whole_runs
    naive = sensitivity_analysis(model, None, lambda m: ev(m), sense_type, progress=False,
                                 dummy_input=torch.zeros(1, 1, 12, 12))
    assert_identical(model, before)
    assert {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()} == params_before
    assert {n: m.training for n, m in model.named_modules()} == modes
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-6, atol=1e-9)
    pd.testing.assert_frame_equal(fast, naive, rtol=1e-6, atol=1e-9)
    assert list(fast.columns) == ["parameter", "sparsity", "actual_sparsity", "mse", "neg_mse"]
    # structured: the output layer's filters / the input layer's channels cannot be pruned and are skipped
    skipped = {("chain", "filter"): {"c3.weight"}, ("chain", "channel"): {"c1.weight"},
               ("branchy", "filter"): {"fc.weight"}, ("branchy", "channel"): {"c1.weight"}}.get((net, sense_type), set())
    assert set(fast["parameter"]) == set(prunable_weights(model)) - skipped
    assert len(fast) == len(set(fast["parameter"])) * len(DEFAULT_SPARSITIES)
    about = dict(openpyxl.load_workbook(tmp_path / "fast.xlsx")["about"].iter_rows(values_only=True))
    assert {k[len("skipped "):] for k in about if k.startswith("skipped ")} == skipped
    # pruning changes the metric of every weight that a level prunes (the table is not all baseline)
    for _, rows in fast.groupby("parameter"):
        assert rows["mse"].nunique() > 1 or (rows["actual_sparsity"] == 0).all()
    assert fast["mse"].nunique() > 3
    # the cached path really ran: the whole model ran only for the baseline (and, for the chain, the
    # channels-last check on the first batch), every pruned level from the cache; the whole-model
    # path ran the whole test per changed level
    n_batches, changed = 3, int((fast["actual_sparsity"] > 0).sum())
    assert fast_whole_runs == n_batches + (net == "chain")
    assert slow_whole_runs == n_batches * (1 + changed)


def count_forwards(model: nn.Module) -> dict[str, int]:
    """Counts the model's own (whole-model) forward calls, in ["n"]."""
    calls = {"n": 0}
    model.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


def test_fast_path_skips_layers_before_the_pruned_one():
    model = Chain()
    ev = Evaluation(data((1, 12, 12)), mse_metrics)
    model.calls["c1"] = 0
    sensitivity_analysis(model, None, ev, "element", progress=False)
    fast_calls = model.calls["c1"]
    model.calls["c1"] = 0
    sensitivity_analysis(model, None, ev, "element", use_cache=False, progress=False)
    slow_calls = model.calls["c1"]
    n_batches, n_levels = 3, len(DEFAULT_SPARSITIES)
    # whole-model path: baseline + every changed level of 3 weights, each over every batch
    assert slow_calls == n_batches * (1 + 3 * (n_levels - 1))
    # cached path: baseline, c1's own 9 levels, then once per later weight to fill the cache, plus the
    # channels-last check on the first batch (plain forward and traced run) and the choice of kernels
    # for the narrow c3 (one traced run)
    assert fast_calls == n_batches * (1 + (n_levels - 1) + 2) + 3


class Flattening(nn.Module):
    """`.view()` after a conv: fails on a channels-last tensor, so 'auto' must fall back to NCHW."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        return self.fc(h.view(h.shape[0], -1))


@pytest.mark.parametrize("net", [Chain, Flattening])
def test_memory_format_auto_matches_contiguous(net, caplog, monkeypatch):
    torch.manual_seed(0)
    model = net()
    ev = Evaluation(data((1, 12, 12) if net is Chain else (3,)), mse_metrics)
    chosen = []
    real = evaluators.choose_memory_format

    def spy(runner, *args):
        real(runner, *args)
        chosen.append(runner.channels_last)

    with monkeypatch.context() as patch:
        patch.setattr(evaluators, "choose_memory_format", spy)
        with caplog.at_level("INFO", logger="apputils.sensitivity"):
            auto = sensitivity_analysis(model, None, ev, "element", progress=False)
    nchw = sensitivity_analysis(model, None, ev, "element", memory_format="contiguous", progress=False)
    assert chosen == [net is Chain]
    if net is Flattening:
        assert "does not run channels-last" in caplog.text
    pd.testing.assert_frame_equal(auto, nchw, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="memory_format='nhwc' is not supported"):
        sensitivity_analysis(model, None, ev, "element", memory_format="nhwc", progress=False)


def test_element_levels_prune_exactly_and_level_zero_is_baseline():
    model = Chain()
    seen = []

    def test_func(m: nn.Module) -> dict[str, float]:
        seen.append(float((m.c2.weight == 0).float().mean()))
        return {"one": 1.0}

    df = sensitivity_analysis(model, None, test_func, "element", sparsities=[0.0, 0.25, 0.5],
                              weights=["c2.weight"], progress=False)
    n = model.c2.weight.numel()
    assert df["actual_sparsity"].tolist() == [0.0, count_to_prune(0.25, n) / n, count_to_prune(0.5, n) / n]
    assert seen[1:] == df["actual_sparsity"].tolist()[1:]  # baseline call, then the two pruned levels


def test_traced_groups_prune_the_coupled_input_channels_of_the_next_layer():
    model = Chain()
    seen = {}

    def test_func(m: nn.Module) -> dict[str, float]:
        seen["c2_filters"] = int((m.c2.weight.detach().flatten(1).abs().sum(1) == 0).sum())
        seen["c3_channels"] = int((m.c3.weight.detach().transpose(0, 1).flatten(1).abs().sum(1) == 0).sum())
        return {"x": 0.0}

    sensitivity_analysis(model, None, test_func, "filter", sparsities=[0.5], weights=["c2.weight"],
                         dummy_input=torch.zeros(1, 1, 12, 12), progress=False)
    assert seen == {"c2_filters": 3, "c3_channels": 3}


def test_explicitly_requested_weight_that_cannot_be_pruned_is_refused():
    with pytest.raises(ValueError, match="'c3.weight' cannot be analysed by filter"):
        sensitivity_analysis(Chain(), None, lambda m: {"x": 0.0}, "filter", weights=["c3.weight"],
                             dummy_input=torch.zeros(1, 1, 12, 12), progress=False)


def test_filter_levels_zero_whole_filters_and_bias():
    model = Chain()
    zeros = []

    def test_func(m: nn.Module) -> dict[str, float]:
        w = m.c2.weight.detach()
        zeros.append((int((w.flatten(1).abs().sum(1) == 0).sum()), int((m.c2.bias == 0).sum())))
        return {"x": 0.0}

    sensitivity_analysis(model, None, test_func, "filter", sparsities=[0.5], weights=["c2.weight"], progress=False)
    k = count_to_prune(0.5, 6)
    assert zeros[-1] == (k, k)


def test_coupled_group_is_pruned_together():
    model = Chain()
    state = {}

    class Coupled:
        def group(self, param: str, kind: str) -> ChannelGroup:
            return ChannelGroup(6, (GroupMember("c2.weight", 0), GroupMember("c2.bias", 0, rank=False),
                                    GroupMember("c3.weight", 1, rank=False)))

    def test_func(m: nn.Module) -> dict[str, float]:
        state["c3_zero_channels"] = int((m.c3.weight.detach().transpose(0, 1).flatten(1).abs().sum(1) == 0).sum())
        return {"x": 0.0}

    before = snapshot(model)
    sensitivity_analysis(model, None, test_func, "filter", sparsities=[0.5], weights=["c2.weight"],
                         group_resolver=Coupled(), progress=False)
    assert state["c3_zero_channels"] == 3
    assert_identical(model, before)


def test_model_restored_when_test_func_raises():
    model = Chain()
    model.train()
    before = snapshot(model)
    calls = {"n": 0}

    def failing(m: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 4:
            assert float((m.c1.weight == 0).float().mean()) > 0  # it really was pruned
            raise RuntimeError("boom")
        return {"x": 0.0}

    with pytest.raises(RuntimeError, match="boom"):
        sensitivity_analysis(model, None, failing, "element", progress=False)
    assert_identical(model, before)
    assert model.training and model.c1.training


def test_model_restored_when_metrics_raise_in_fast_path():
    model = Chain()
    before = snapshot(model)
    calls = {"n": 0}

    def metrics(out, y):
        calls["n"] += 1
        if calls["n"] == 20:
            raise ValueError("bad metric")
        return {"m": 0.0}

    with pytest.raises(ValueError, match="bad metric"):
        sensitivity_analysis(model, None, Evaluation(data((1, 12, 12)), metrics), "filter", progress=False)
    assert_identical(model, before)


@pytest.mark.parametrize("sense_type", ["element", "filter"])
@pytest.mark.parametrize("cached", [True, False])
def test_no_deepcopy(monkeypatch, sense_type, cached):
    # deep-copying any module deep-copies its parameters, however `deepcopy` was imported
    def refuse(self, memo):
        raise AssertionError("a parameter was deep-copied")

    monkeypatch.setattr(nn.Parameter, "__deepcopy__", refuse)
    with pytest.raises(AssertionError, match="deep-copied"):  # the guard catches a copy of a submodule
        copy.deepcopy(Chain().c1)
    ev = Evaluation(data((1, 12, 12), 1), mse_metrics)
    sensitivity_analysis(Chain(), None, ev if cached else (lambda m: ev(m)), sense_type, progress=False,
                         dummy_input=torch.zeros(1, 1, 12, 12))


def test_workbook_sheets_columns_chart_and_csv(tmp_path):
    model = Chain()
    path = tmp_path / "sense_file.xlsx"
    df = sensitivity_analysis(model, path, Evaluation(data((1, 12, 12), 1), mse_metrics), "element",
                              sparsities=[0.0, 0.3, 0.6], progress=False)
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["mse", "neg_mse", "long", "about"]
    ws = wb["mse"]
    header = [c.value for c in ws[1]]
    assert header == ["parameter", 0.0, 0.3, 0.6]
    assert [ws.cell(r, 1).value for r in range(2, ws.max_row + 1)] == ["c1.weight", "c2.weight", "c3.weight"]
    assert ws.cell(3, 3).value == pytest.approx(df[(df.parameter == "c2.weight") & (df.sparsity == 0.3)]["mse"].item())
    assert len(ws._charts) == 1 and type(ws._charts[0]).__name__ == "LineChart"
    assert len(ws._charts[0].series) == 3  # one line per weight
    long = pd.read_excel(path, sheet_name="long")
    assert list(long.columns) == ["parameter", "sparsity", "actual_sparsity", "mse", "neg_mse"]
    csv = pd.read_csv(path.with_suffix(".csv"))
    pd.testing.assert_frame_equal(csv, df, check_dtype=False)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"sense_type": "rows"}, ValueError, "sense_type='rows' is not supported"),
    ({"sparsities": [0.0, 1.0]}, ValueError, "outside \\[0, 1\\)"),
    ({"sparsities": [0.1, 0.1]}, ValueError, "a level twice"),
    ({"weights": ["c2.weigth"]}, ValueError, "did you mean 'c2.weight'"),
])
def test_bad_arguments_are_refused_clearly(kwargs, err, match):
    args = {"sense_type": "element", **kwargs}
    with pytest.raises(err, match=match):
        sensitivity_analysis(Chain(), None, lambda m: {"x": 0.0}, progress=False, **args)


def test_test_func_must_return_named_metrics():
    with pytest.raises(TypeError, match="must return a non-empty dict of named metrics"):
        sensitivity_analysis(Chain(), None, lambda m: 3.0, "element", progress=False)


def test_xlsx_suffix_required(tmp_path):
    with pytest.raises(ValueError, match="end.*xlsx"):
        sensitivity_analysis(Chain(), tmp_path / "s.xls", lambda m: {"x": 0.0}, "element", sparsities=[0.0],
                             progress=False)


def test_suggest_levels_stops_at_first_level_over_tolerance():
    df = pd.DataFrame({"parameter": ["a"] * 4 + ["b"] * 4, "sparsity": [0.0, 0.1, 0.2, 0.3] * 2,
                       "psnr": [30.0, 29.95, 29.7, 29.95, 30.0, 30.0, 29.99, 29.95],
                       "loss": [1.0, 1.05, 1.2, 1.0, 1.0, 1.0, 1.0, 1.3]})
    assert suggest_levels(df, "psnr", 0.1) == {"a": 0.1, "b": 0.3}
    assert suggest_levels(df, "loss", 0.1, higher_is_better=False) == {"a": 0.1, "b": 0.2}


def test_evaluation_with_dict_batches_and_split_weights_batches_by_size():
    model = Chain()
    g = torch.Generator().manual_seed(3)
    batches = [{"lr": torch.rand(n, 1, 12, 12, generator=g), "hr": torch.rand(n, 1, 12, 12, generator=g),
                "name": ["img"] * n} for n in (1, 3)]
    ev = Evaluation(batches, mse_metrics, split=lambda b: (b["lr"], b["hr"]))
    with torch.no_grad():
        per_sample = [float(((model(b["lr"][k:k + 1]) - b["hr"][k:k + 1]) ** 2).mean())
                      for b in batches for k in range(b["lr"].shape[0])]
    assert ev(model)["mse"] == pytest.approx(sum(per_sample) / 4, rel=1e-6)
    df = sensitivity_analysis(model, None, ev, "element", sparsities=[0.0, 0.5], progress=False)
    assert df.loc[0, "mse"] == pytest.approx(sum(per_sample) / 4, rel=1e-6)


def test_evaluation_refuses_batches_that_are_not_pairs():
    with pytest.raises(TypeError, match="split\\(batch\\)"):
        Evaluation([torch.zeros(1, 1, 4, 4)], mse_metrics)(Chain())


def test_narrow_output_layer_levels_run_stacked(monkeypatch):
    model = Chain()  # c3 has one output channel: its 9 changed levels fit one stacked convolution
    ev = Evaluation(data((1, 12, 12)), mse_metrics)
    used = []
    real = evaluators.CachedEvaluation.stacked
    monkeypatch.setattr(evaluators.CachedEvaluation, "stacked",
                        lambda self, steps: used.append(r := real(self, steps)) or r)
    fast = sensitivity_analysis(model, None, ev, "element", progress=False)
    assert [r is not None for r in used] == [False, False, True]  # c1, c2 are too wide
    slow = sensitivity_analysis(model, None, ev, "element", use_cache=False, progress=False)
    pd.testing.assert_frame_equal(fast, slow, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("taps_faster", [True, False])
@pytest.mark.parametrize("stack_levels", [True, False])
def test_narrow_convs_run_by_taps_when_measured_faster(monkeypatch, taps_faster, stack_levels):
    model = Chain()  # c3 (6 -> 1 channels, 3x3) can run by taps; c1, c2 are too wide
    ev = Evaluation(data((1, 12, 12)), mse_metrics)
    monkeypatch.setattr(tuning, "best_times", lambda fns, value, repeats: [1.0, 2.0] if taps_faster else [2.0, 1.0])
    if not stack_levels:  # c3's own levels then run by taps too, reading its pruned weight
        monkeypatch.setattr(evaluators.CachedEvaluation, "stacked", lambda self, steps: None)
    convs = []
    real = TapsConv.__call__
    monkeypatch.setattr(TapsConv, "__call__", lambda self, x: convs.append(self.conv) or real(self, x))
    fast = sensitivity_analysis(model, None, ev, "element", progress=False)
    assert set(convs) == {model.c3}
    n_batches, changed = 3, len(DEFAULT_SPARSITIES) - 1
    # one check on the first batch; then, if faster, every level of c1 and c2 (and of c3 unless stacked)
    assert len(convs) == 1 + taps_faster * n_batches * changed * (2 + (not stack_levels))
    plain = sensitivity_analysis(model, None, ev, "element", fast_kernels=False, progress=False)
    pd.testing.assert_frame_equal(fast, plain, rtol=1e-5, atol=1e-8)


def test_sensitivity_costs_are_measured_per_node_and_split_at_the_pruned_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 1, 3, padding=1)).eval()
    runner = evaluators.try_trace(model)
    seconds = runner.node_seconds(torch.rand(1, 1, 16, 16))
    assert len(seconds) == len(runner.nodes) and seconds[0] == 0.0 and seconds[-1] == 0.0
    assert all(t > 0 for t in seconds[runner.body:-1])
    params = dict(model.named_parameters())
    evaluation = Evaluation([(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))] * 3, mse_metrics)
    cached = evaluators.CachedEvaluation(runner, evaluation, model, params, "contiguous", False)
    cached.node_costs = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0]  # input, 5 layers, output
    assert cached.cost(["2.weight"]) == (3 * (1.0 + 2.0), 3 * (3.0 + 4.0 + 5.0))  # 3 batches
    assert cached.cost(["0.weight", "4.weight"]) == (0.0, 3 * 15.0)  # from the first layer either reads
    assert evaluators.WholeModel(model, evaluation, params).cost(["2.weight"]) == (0.0, 1.0)
