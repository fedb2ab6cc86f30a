"""Sparsity summary: how sparse each weight is, element-wise and by structure, as a DataFrame."""
from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from .masks import canonical

COLUMNS = ["Name", "Shape", "NNZ (dense)", "NNZ (sparse)", "Fine (%)", "Filters/3D (%)", "Channels (%)",
           "Rows (%)", "Cols (%)", "Std", "Mean", "Abs-Mean"]


def _zero_fraction(nonzero_per_slice: torch.Tensor) -> float:
    return 100.0 * float((nonzero_per_slice == 0).sum()) / max(nonzero_per_slice.numel(), 1)


def structure_sparsity(weight: torch.Tensor) -> dict[str, float]:
    """Percent of all-zero filters (dim 0), input channels (dim 1), rows and columns of a weight.

    Rows and columns are those of the weight viewed as a matrix (output x everything else for 2-D
    weights; kernel rows x kernel columns across filters and channels for 4-D ones).
    """
    nz = weight.detach() != 0
    filters = nz.reshape(nz.shape[0], -1).any(dim=1)
    channels = nz.transpose(0, 1).reshape(nz.shape[1], -1).any(dim=1)
    if nz.dim() == 4:
        rows = nz.any(dim=3).reshape(-1)
        cols = nz.any(dim=2).reshape(-1)
    else:
        rows, cols = filters, nz.reshape(nz.shape[0], -1).any(dim=0)
    return {"Filters/3D (%)": _zero_fraction(filters), "Channels (%)": _zero_fraction(channels),
            "Rows (%)": _zero_fraction(rows), "Cols (%)": _zero_fraction(cols)}


def sparsity_summary(model: nn.Module, param_dims: tuple[int, ...] = (2, 3, 4, 5)) -> pd.DataFrame:
    """One row per weight of the given dimensionalities, plus a Total row (Fine % over all of them)."""
    rows = []
    for name, param in model.named_parameters():
        if param.dim() not in param_dims:
            continue
        w = param.detach().float()
        nnz = int((w != 0).sum())
        rows.append({"Name": canonical(name), "Shape": str(tuple(w.shape)), "NNZ (dense)": w.numel(),
                     "NNZ (sparse)": nnz, "Fine (%)": 100.0 * (1 - nnz / w.numel()), **structure_sparsity(w),
                     "Std": float(w.std()) if w.numel() > 1 else 0.0, "Mean": float(w.mean()),
                     "Abs-Mean": float(w.abs().mean())})
    df = pd.DataFrame(rows, columns=COLUMNS)
    dense, sparse = int(df["NNZ (dense)"].sum()), int(df["NNZ (sparse)"].sum())
    total = {c: float("nan") for c in COLUMNS}
    total.update({"Name": "Total", "Shape": "", "NNZ (dense)": dense, "NNZ (sparse)": sparse,
                  "Fine (%)": 100.0 * (1 - sparse / dense) if dense else 0.0,
                  "Abs-Mean": float((df["Abs-Mean"] * df["NNZ (dense)"]).sum() / dense) if dense else 0.0})
    return pd.concat([df, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)


def model_sparsity(model: nn.Module, param_dims: tuple[int, ...] = (2, 3, 4, 5)) -> float:
    """Percent of zero elements over all weights of the given dimensionalities."""
    df = sparsity_summary(model, param_dims)
    return float(df["Fine (%)"].iloc[-1])
