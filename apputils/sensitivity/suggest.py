"""Reading a sensitivity table: the highest level per weight that stays within a tolerance."""
from __future__ import annotations

import pandas as pd


def suggest_levels(df: pd.DataFrame, metric: str, tolerance: float, *,
                   higher_is_better: bool = True) -> dict[str, float]:
    """Per weight, the highest tested level that costs at most `tolerance` of `metric`.

    The cost is measured from the weight's lowest tested level (0.0 by default, i.e. the unpruned
    model); a level counts only if it and every lower level stay within the tolerance, so a noisy
    recovery at a high level is not suggested.
    """
    if metric not in df.columns:
        raise ValueError(f"metric '{metric}' is not in the sensitivity table; it has "
                         f"{[c for c in df.columns if c not in ('parameter', 'sparsity', 'actual_sparsity')]}")
    out: dict[str, float] = {}
    for name, rows in df.groupby("parameter", sort=False):
        rows = rows.sort_values("sparsity")
        ref = float(rows[metric].iloc[0])
        best = float(rows["sparsity"].iloc[0])
        for level, value in zip(rows["sparsity"], rows[metric], strict=True):
            cost = ref - value if higher_is_better else value - ref
            if not cost <= tolerance:
                break
            best = float(level)
        out[str(name)] = best
    return out
