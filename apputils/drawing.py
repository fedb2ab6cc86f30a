"""Draw a model as a Graphviz graph: layer names, types, attributes, output shapes and weight sparsity.

The data flow comes from a torch.fx trace run on the dummy input (so residual adds and concats show
as joins); a model that does not trace is drawn as its layers in execution order instead. The PNG is
rendered by Graphviz's `dot`; where `dot` is not installed the .dot source is written and the log
says how to install Graphviz and render it.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from compress.masks import canonical
from compress.modules import eval_mode, unwrap

from .workbooks import save_atomic

log = logging.getLogger(__name__)

FORMATS = ("png", "svg", "pdf")
INSTALL_HINT = ("install Graphviz (Debian/Ubuntu: sudo apt-get install graphviz; Fedora: sudo dnf install "
                "graphviz; macOS: brew install graphviz; conda: conda install -c conda-forge graphviz)")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _module_text(name: str, module: nn.Module) -> list[str]:
    lines = [name, type(module).__name__]
    if isinstance(module, nn.modules.conv._ConvNd):
        k = "x".join(str(v) for v in module.kernel_size)
        s = "x".join(str(v) for v in module.stride)
        extra = f" groups={module.groups}" if module.groups != 1 else ""
        lines.append(f"{module.in_channels}->{module.out_channels} k={k} s={s}{extra}")
    elif isinstance(module, nn.Linear):
        lines.append(f"{module.in_features}->{module.out_features}")
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
        sparsity = 100.0 * float((weight == 0).sum()) / weight.numel()
        lines.append(f"weight {tuple(weight.shape)}, sparsity {sparsity:.1f}%")
    return lines


def _shape_of(node: torch.fx.Node) -> str | None:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return None
    if hasattr(meta, "shape"):
        return "x".join(str(v) for v in meta.shape)
    return None


def _op_name(node: torch.fx.Node) -> str:
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _traced_dot(model: nn.Module, args: Sequence[torch.Tensor]) -> str:
    gm = torch.fx.symbolic_trace(model)
    ShapeProp(gm).propagate(*args)
    modules = dict(gm.named_modules())
    lines = ["digraph model {", '  rankdir=TB; node [fontname="Helvetica", fontsize=10];']
    drawn: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            continue
        if node.op == "placeholder":
            text, style = [f"input {node.target}"], 'shape=oval, style=filled, fillcolor="#dbe9f6"'
        elif node.op == "output":
            text, style = ["output"], 'shape=oval, style=filled, fillcolor="#dbe9f6"'
        elif node.op == "call_module":
            text = _module_text(canonical(str(node.target)), modules[node.target])
            style = 'shape=box, style="rounded,filled", fillcolor="#f6f0db"'
        else:
            text, style = [_op_name(node)], 'shape=box, style="rounded"'
        shape = _shape_of(node) if node.op != "output" else None
        if shape is not None:
            text.append(f"out {shape}")
        lines.append(f"  {node.name} [label={_quote(chr(10).join(text))}, {style}];")
        drawn.add(node.name)
    for node in gm.graph.nodes:
        if node.name not in drawn:
            continue
        for src in node.all_input_nodes:
            if src.name in drawn:
                lines.append(f"  {src.name} -> {node.name};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _sequence_dot(model: nn.Module, args: Sequence[torch.Tensor], reason: str) -> str:
    """Leaf modules in the order they ran, for models torch.fx cannot trace."""
    order: list[tuple[str, nn.Module, str]] = []
    names = {m: canonical(n) for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) and output else output
        shape = "x".join(str(v) for v in out.shape) if torch.is_tensor(out) else type(out).__name__
        order.append((names[module], module, shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(*args)
    finally:
        for h in handles:
            h.remove()
    lines = ["digraph model {", '  rankdir=TB; node [fontname="Helvetica", fontsize=10];',
             f"  label={_quote('layers in execution order (data flow not traced: ' + reason + ')')};",
             '  input [label="input", shape=oval];']
    prev = "input"
    for i, (name, module, shape) in enumerate(order):
        text = _module_text(name, module) + [f"out {shape}"]
        lines.append(f'  n{i} [label={_quote(chr(10).join(text))}, shape=box, style="rounded"];')
        lines.append(f"  {prev} -> n{i};")
        prev = f"n{i}"
    lines += ['  output [label="output", shape=oval];', f"  {prev} -> output;", "}"]
    return "\n".join(lines) + "\n"


def model_to_dot(model: nn.Module, dummy_input: torch.Tensor | Sequence[torch.Tensor]) -> str:
    """Graphviz source of the model's graph on `dummy_input` (the model is left as it was)."""
    inner = unwrap(model)
    device = next((p.device for p in inner.parameters()), torch.device("cpu"))
    args = [t.to(device) for t in dummy_input] if isinstance(dummy_input, (tuple, list)) \
        else [dummy_input.to(device)]
    with eval_mode(inner), torch.no_grad():
        try:
            return _traced_dot(inner, args)
        except Exception as err:  # noqa: BLE001 - any trace failure: draw the execution order instead
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            log.info("draw_model_to_file: torch.fx could not trace the model (%s); drawing layers in "
                     "execution order", reason)
            return _sequence_dot(inner, args, reason)


def render_dot(source: str, out_file: str | Path) -> Path:
    """Render Graphviz source to `out_file` (format from its suffix); without `dot`, write the .dot.

    Returns the file written: the image, or the .dot source next to where the image would be.
    """
    out_file = Path(out_file)
    fmt = out_file.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"'{out_file}': the drawing's format comes from its suffix; use one of "
                         f"{', '.join('.' + f for f in FORMATS)}")
    dot = shutil.which("dot")
    dot_file = out_file.with_suffix(".dot")
    if dot is None:
        save_atomic(dot_file, lambda tmp: tmp.write_text(source))
        log.warning("Graphviz 'dot' is not on PATH, so %s was not drawn; wrote the graph source %s. "
                    "To get the image, %s, then run: dot -T%s '%s' -o '%s'",
                    out_file, dot_file, INSTALL_HINT, fmt, dot_file, out_file)
        return dot_file
    with tempfile.TemporaryDirectory() as tmpdir:
        src = Path(tmpdir) / "model.dot"
        src.write_text(source)

        def run_dot(tmp: Path) -> None:
            proc = subprocess.run([dot, f"-T{fmt}", str(src), "-o", str(tmp)], capture_output=True, text=True,
                                  timeout=120, check=False)
            if proc.returncode != 0:
                save_atomic(dot_file, lambda t: t.write_text(source))
                raise RuntimeError(f"Graphviz 'dot' failed to render {out_file} (exit {proc.returncode}): "
                                   f"{proc.stderr.strip()[:500]}; the graph source is in {dot_file}")

        save_atomic(out_file, run_dot)
    return out_file


def draw_model_to_file(model: nn.Module, png_fname: str | Path,
                       dummy_input: torch.Tensor | Sequence[torch.Tensor]) -> Path:
    """Draw `model` run on `dummy_input` to `png_fname` (.png/.svg/.pdf); returns the file written."""
    return render_dot(model_to_dot(model, dummy_input), png_fname)
