"""Multiply-accumulate counts per layer, dense and effective (non-zero weights only).

Counted per input sample by compress.thinning.stats.call_macs (which count_macs sums), on the given input, by forward hooks on
every convolution (1-3 D, transposed, grouped and depthwise) and linear layer; biases, activations
and element-wise ops are not MACs. Formulas, with W the weight:

* Conv:           prod(output spatial size) * numel(W)   (= Cout*Hout*Wout * Cin/groups*kh*kw)
* ConvTranspose:  prod(input spatial size) * numel(W)    (= Cin*Hin*Win * Cout/groups*kh*kw)
* Linear:         (input rows per sample) * numel(W)     (= rows * in * out)

Effective MACs replace numel(W) by the number of non-zero weights: what a sparse kernel would do.
Volumes (elements of input, output) are per sample too; shapes are shown as seen, batch included.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from compress.masks import canonical
from compress.modules import eval_mode
from compress.thinning.stats import call_macs

from .workbooks import write_table_with_bar_chart

COUNTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass
class LayerMacs:
    """One call of a counted layer."""

    name: str
    type: str
    attributes: str
    input_shape: str
    output_shape: str
    input_volume: int
    output_volume: int
    weight_volume: int
    weight_nnz: int
    macs: int
    effective_macs: int


def _attributes(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        k = "x".join(str(v) for v in module.kernel_size)
        s = "x".join(str(v) for v in module.stride)
        p = module.padding if isinstance(module.padding, str) else "x".join(str(v) for v in module.padding)
        d = "x".join(str(v) for v in module.dilation)
        return f"k={k} s={s} p={p} d={d} groups={module.groups}"
    return f"in={module.in_features} out={module.out_features}"


def _shape(t: Any) -> str:
    return "x".join(str(v) for v in t.shape) if torch.is_tensor(t) else type(t).__name__


def _first_tensor(value: Any) -> Any:
    if isinstance(value, (tuple, list)) and value:
        return value[0]
    return value


def layer_macs(model: nn.Module, dummy_input: torch.Tensor | Sequence[torch.Tensor]) -> list[LayerMacs]:
    """Run the model once on `dummy_input` and return one record per call of a counted layer (per sample)."""
    records: list[LayerMacs] = []
    calls: dict[str, int] = {}
    names = {m: canonical(n) for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x, y = _first_tensor(inputs), _first_tensor(output)
        base = names[module]
        calls[base] = calls.get(base, 0) + 1
        name = base if calls[base] == 1 else f"{base}#{calls[base]}"
        dense, effective, n = call_macs(module, x, y)
        records.append(LayerMacs(name, type(module).__name__, _attributes(module), _shape(x), _shape(y),
                                 x.numel() // n, y.numel() // n, module.weight.numel(),
                                 int((module.weight != 0).sum()), dense, effective))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, COUNTED)]
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with eval_mode(model), torch.no_grad():
            if isinstance(dummy_input, (tuple, list)):
                model(*[t.to(device) for t in dummy_input])
            else:
                model(dummy_input.to(device))
    finally:
        for h in handles:
            h.remove()
    return records


def macs_table(model: nn.Module, dummy_input: torch.Tensor | Sequence[torch.Tensor]) -> pd.DataFrame:
    """Per-layer MACs with shares of the total, weight sparsity, and a Total row."""
    records = layer_macs(model, dummy_input)
    df = pd.DataFrame([asdict(r) for r in records],
                      columns=[f.name for f in LayerMacs.__dataclass_fields__.values()])
    total = int(df["macs"].sum())
    df["weight_sparsity_%"] = 100.0 * (1 - df["weight_nnz"] / df["weight_volume"].where(df["weight_volume"] > 0))
    df["share_%"] = 100.0 * df["macs"] / total if total else 0.0
    effective = int(df["effective_macs"].sum())
    total_row = {c: None for c in df.columns}
    total_row.update({"name": "Total", "type": "", "attributes": "", "input_shape": "", "output_shape": "",
                      "input_volume": int(df["input_volume"].sum()),
                      "output_volume": int(df["output_volume"].sum()),
                      "weight_volume": int(df["weight_volume"].sum()), "weight_nnz": int(df["weight_nnz"].sum()),
                      "macs": total, "effective_macs": effective,
                      "weight_sparsity_%": 100.0 * (1 - df["weight_nnz"].sum() / df["weight_volume"].sum())
                      if len(df) else 0.0,
                      "share_%": 100.0 if total else 0.0})
    return pd.concat([df, pd.DataFrame([total_row])], ignore_index=True)


def model_macs(model: nn.Module, dummy_input: torch.Tensor | Sequence[torch.Tensor]) -> tuple[int, int]:
    """(dense, effective) MACs of the whole model per sample of `dummy_input`."""
    records = layer_macs(model, dummy_input)
    return sum(r.macs for r in records), sum(r.effective_macs for r in records)


def write_macs_workbook(df: pd.DataFrame, path: str | Path, dummy_shape: str) -> Path:
    """The MACs table on sheet 'macs' with a bar chart of dense vs effective MACs per layer."""
    return write_table_with_bar_chart(
        df, path, "macs", "name", ["macs", "effective_macs"], "MACs per layer", "MACs",
        [("tool", "macs_display"), ("dummy_input", dummy_shape),
         ("counted", "Conv (incl. transposed, grouped, depthwise) and Linear; biases and element-wise ops "
                     "are not counted"),
         ("effective_macs", "MACs with only the non-zero weights (what a sparse kernel would do)")],
        chart_rows=len(df) - 1)
