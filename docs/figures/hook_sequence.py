"""Draw the compression scheduler's hook sequence in a training loop: docs/figures/hook_sequence.png.

    python docs/figures/hook_sequence.py [OUT.png]

The picture is the loop of docs/own-loop.md: the scheduler's hooks (blue) between the user's own steps
(grey), and what the schedule's components do at each hook. `make docs` runs this script, so the picture
follows any change made here; the PNG carries no timestamp, so an unchanged script writes the same file.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)
from matplotlib.patches import FancyBboxPatch  # noqa: E402

HOOK, USER = "#dbe9f6", "#eeeeee"
HOOK_EDGE, USER_EDGE = "#2f6ea5", "#8c8c8c"


@dataclass(frozen=True)
class Row:
    """One line of the loop: a call at an indent level, its kind, and what acts there."""

    call: str
    level: int
    kind: str  # "hook": a scheduler hook, "user": the user's code, "loop": a loop header
    acts: str = ""


ROWS = [
    Row("scheduler = compress.file_config(model, optimizer, 'schedule.yaml')", 0, "hook",
        "the whole schedule is checked, then built"),
    Row("for epoch in range(epochs):", 0, "loop"),
    Row("on_epoch_begin(epoch, optimizer)", 1, "hook", "pruners set this epoch's masks"),
    Row("for i, (x, y) in enumerate(loader):", 1, "loop"),
    Row("on_minibatch_begin(epoch, i, n, optimizer)", 2, "hook",
        "minibatch-frequency pruning; thinning; teacher hooks"),
    Row("loss = criterion(model(x), y)", 2, "user", "the teacher runs on the same input"),
    Row("loss = before_backward_pass(epoch, i, n, loss, optimizer)", 2, "hook",
        "+ regularizer and distillation terms"),
    Row("optimizer.zero_grad(); loss.backward()", 2, "user"),
    Row("before_parameter_optimization(epoch, i, n, optimizer)", 2, "hook", "optional: mask gradients"),
    Row("optimizer.step()", 2, "user"),
    Row("on_minibatch_end(epoch, i, n, optimizer)", 2, "hook", "masks re-applied: no pruned weight revives"),
    Row("on_epoch_end(epoch, optimizer, metrics=...)", 1, "hook", "LR schedules step; thinning at epoch end"),
]
STEP, INDENT, RIGHT = 0.42, 0.4, 5.3  # row height, indent per level, right edge of the boxes (inches)


def draw(out: Path) -> None:
    """Draw ROWS as indented code lines, the hooks and the user's steps boxed, what acts beside each."""
    width, height = 10.2, STEP * len(ROWS) + 0.5
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))  # one axis unit = one inch
    ax.set_xlim(0, width)
    ax.set_ylim(-STEP * len(ROWS), 0.45)
    ax.axis("off")
    ax.text(0.0, 0.38, "The compression scheduler and its hooks (blue) in your own training loop (grey: your code)",
            fontsize=10, weight="bold", va="top")
    for k, row in enumerate(ROWS):
        x, y = 0.05 + INDENT * row.level, -STEP * k - STEP / 2
        if row.kind == "loop":
            ax.text(x, y, row.call, fontsize=9, family="monospace", va="center", color="#555555")
            last = max(m for m, r in enumerate(ROWS) if m > k and r.level > row.level
                       and all(q.level > row.level for q in ROWS[k + 1:m + 1]))
            ax.plot([x + 0.12] * 2, [y - 0.2, -STEP * last - STEP / 2 - 0.05], color="#b0b0b0", linewidth=1)
            continue
        hook = row.kind == "hook"
        ax.add_patch(FancyBboxPatch((x, y - 0.15), RIGHT - x, 0.3, boxstyle="round,pad=0.01,rounding_size=0.05",
                                    facecolor=HOOK if hook else USER, edgecolor=HOOK_EDGE if hook else USER_EDGE,
                                    linewidth=1))
        ax.text(x + 0.08, y, row.call, fontsize=8.5, family="monospace", va="center",
                color="#123b5e" if hook else "#333333")
        if row.acts:
            ax.annotate(row.acts, xy=(RIGHT + 0.03, y), xytext=(RIGHT + 0.3, y), fontsize=9, va="center",
                        arrowprops={"arrowstyle": "-", "color": "#b0b0b0"})
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_suffix(".png")
    draw(target)
    print(f"wrote {target}")
