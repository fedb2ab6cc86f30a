"""Channel dependencies of a traced network: which tensor channels form one prunable unit.

The model is traced with torch.fx (`symbolic_trace` plus `ShapeProp` on the dummy input), so
every operation comes with its real arguments (concat dim, PixelShuffle factor) and shapes. Each
channel of each intermediate tensor is an element of a union-find; operations join the elements
they couple (an add joins its inputs channel by channel, a concat joins each input to its offset
slice, PixelShuffle joins r^2 input channels to one output channel, a depthwise conv joins each
filter to its input channel). A resulting *class* is one unit that is kept or removed as a whole.
A class that reaches the model's input or output, a protected layer's filters, or an operation
whose channel semantics are not known here is *blocked*: it is never removed.

Torch-Pruning 1.6's DependencyGraph is not used: it treats PixelShuffle as element-wise, so a
concat after a PixelShuffle gets wrong offsets and pruning the upsampler removes the skip
branch's channels instead (see docs/pruning-thinning.md, "Why torch.fx and not Torch-Pruning").
"""
from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..masks import canonical
from ..modules import WRAPPERS, eval_mode, unwrap
from ..pruning.groups import ChannelGroup, GroupMember, Kind

log = logging.getLogger(__name__)

Role = Literal["filter", "channel", "aux"]


class ThinningError(ValueError):
    """Thinning cannot be done as asked; the model has not been changed."""


@dataclass(frozen=True)
class Slot:
    """One index of one parameter dimension that belongs to a channel class.

    `role` is 'filter' for a producing layer's output dimension, 'channel' for a consuming
    layer's input dimension and 'aux' for per-channel extras (bias, BatchNorm, PReLU).
    """

    param: str
    dim: int
    index: int
    role: Role


@dataclass
class Layer:
    """A layer thinning can edit: the channel class of each output and each input channel."""

    name: str
    type: str
    out_classes: list[int]
    in_classes: list[int]


@dataclass
class Analysis:
    """Result of tracing: thinnable layers, the slots of every class, and the blocked classes."""

    layers: dict[str, Layer]
    slots: dict[int, list[Slot]]
    blocked: dict[int, str]
    num_classes: int
    protected: list[str] = field(default_factory=list)


_CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)

_CHANNELWISE_FUNCS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.neg,
    torch.add, torch.sub, torch.mul, torch.div, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    torch.neg, torch.abs, torch.exp, torch.square, torch.sqrt,
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d,
    F.dropout3d, F.interpolate, F.upsample, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
}
_CHANNELWISE_METHODS = {
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid",
    "tanh", "clamp", "clamp_", "neg", "abs", "exp", "sqrt", "square", "contiguous", "clone",
    "float", "double", "half", "to", "type_as",
}
_RESHAPES_FUNCS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Tracer(fx.Tracer):
    """fx tracer that keeps protected custom modules opaque and remembers where tracing failed."""

    def __init__(self, opaque: set[str]):
        super().__init__()
        self.opaque = opaque
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, WRAPPERS):
            return False
        return canonical(module_qualified_name) in self.opaque or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(m, WRAPPERS):  # DataParallel / DDP anywhere in the model: trace what they wrap
            return self.call_module(m.module, m.module.forward, args, kwargs)
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.stack[-1]
            raise
        finally:
            self.stack.pop()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _symbolic_trace(model: nn.Module, opaque: set[str]) -> fx.Graph:
    tracer = _Tracer(opaque)
    try:
        return tracer.trace(model)
    except Exception as exc:
        where = f"module '{tracer.failed_in}' ({type(model.get_submodule(tracer.failed_in)).__name__})" \
            if tracer.failed_in else f"the forward() of {type(model).__name__}"
        raise ThinningError(
            f"cannot trace the model for thinning: torch.fx failed in {where} ({_first_line(exc)}). "
            "Thinning needs a forward() without Python control flow that depends on tensor values; "
            "move that logic out, or list the module under the extension's `protected` so it is "
            "kept whole and not traced inside") from None


def _trace(model: nn.Module, dummy_input: Any, opaque: set[str]) -> fx.GraphModule:
    gm = fx.GraphModule(model, _symbolic_trace(model, opaque))
    inputs = dummy_input if isinstance(dummy_input, (tuple, list)) else (dummy_input,)
    try:  # in eval mode: BatchNorm must not update its running statistics on the dummy input
        with eval_mode(model), torch.no_grad():
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:  # ShapeProp names the node and chains the operation's own error
        raise ThinningError(f"cannot run the model on the dummy input for thinning ({_first_line(exc.__cause__ or exc)}); "
                            "pass a dummy_input the model accepts, e.g. torch.zeros(1, C, H, W)") from None
    return gm


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _flat_nodes(args: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: out.append(n) or n)
    return out


def _arg(node: fx.Node, pos: int, name: str, default: Any = None) -> Any:
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


class _Builder:
    """Walks the fx graph once and joins / blocks channel elements."""

    def __init__(self, gm: fx.GraphModule, protected: set[str]):
        self.gm = gm
        self.protected = protected
        self.uf = _UnionFind()
        self.base: dict[fx.Node, int] = {}
        self.block_reason: dict[int, str] = {}
        self.layers: dict[str, Layer] = {}
        self.slots: list[tuple[int, Slot]] = []

    # elements -------------------------------------------------------------------------------
    def channels(self, node: Any) -> int | None:
        shape = _shape(node)
        return shape[1] if shape is not None and len(shape) >= 2 else None

    def elem(self, node: fx.Node, c: int) -> int:
        return self.base[node] + c

    def elems(self, node: fx.Node) -> list[int]:
        n = self.channels(node)
        return [] if n is None or node not in self.base else [self.base[node] + c for c in range(n)]

    def block(self, nodes: Iterable[Any], reason: str) -> None:
        for node in nodes:
            if isinstance(node, fx.Node):
                for e in self.elems(node):
                    self.block_reason.setdefault(e, reason)

    def join_channelwise(self, a: fx.Node, b: fx.Node) -> None:
        for ea, eb in zip(self.elems(a), self.elems(b), strict=True):
            self.uf.union(ea, eb)

    # node kinds ------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            c = self.channels(node)
            if c is not None:
                self.base[node] = self.uf.add(c)
            if node.op == "placeholder":
                self.block([node], "it is a channel of the model's input")
            elif node.op == "output":
                self.block(_flat_nodes(node.args), "it reaches the model's output")
            elif node.op == "get_attr":
                self.block([node], f"it is the tensor '{node.target}' used directly in forward()")
            elif node.op == "call_module":
                self.module(node)
            elif node.op in ("call_function", "call_method"):
                self.function(node)

    def unknown(self, node: fx.Node, what: str) -> None:
        inputs = _flat_nodes((node.args, node.kwargs))
        self.block(inputs + [node], f"it passes through {what}, whose channel handling thinning does not know")

    def channelwise(self, node: fx.Node, inputs: Sequence[Any]) -> None:
        """Join each tensor input's channels to the output's, allowing broadcasting over channels."""
        out = _shape(node)
        if out is None or len(out) < 2:
            self.unknown(node, f"'{node.name}'")
            return
        for inp in inputs:
            shape = _shape(inp)
            if shape is None:
                continue
            offset = len(out) - len(shape)
            aligned = 1 - offset
            size = shape[aligned] if 0 <= aligned < len(shape) else 1
            if len(shape) == len(out) and size == out[1]:
                self.join_channelwise(inp, node)
            elif size != 1:
                self.unknown(node, f"'{node.name}' (broadcast over channels)")
                return

    def module(self, node: fx.Node) -> None:
        module = self.gm.get_submodule(str(node.target))
        name = canonical(str(node.target))
        first = node.args[0] if node.args else None
        if name in self.protected and not _is_thinnable(module):
            self.block(_flat_nodes((node.args, node.kwargs)) + [node], f"'{name}' is listed as protected")
            return
        if isinstance(module, nn.modules.conv._ConvNd):
            self.conv(node, name, module, first)
        elif isinstance(module, nn.Linear):
            self.linear(node, name, module, first)
        elif isinstance(module, _NORMS):
            self.norm(node, name, module, first)
        elif isinstance(module, nn.PReLU):
            self.channelwise(node, [first])
            if module.num_parameters > 1:
                self.record(name, module, node, first, out_slots=[], aux=["weight"])
        elif isinstance(module, nn.PixelShuffle):
            self.shuffle(node, first, module.upscale_factor)
        elif isinstance(module, nn.PixelUnshuffle):
            self.unshuffle(node, first, module.downscale_factor)
        elif isinstance(module, nn.Flatten):
            self.reshape(node, first)
        elif isinstance(module, _CHANNELWISE_MODULES):
            self.channelwise(node, [first])
        else:
            self.unknown(node, f"module '{name}' ({type(module).__name__})")
        if name in self.protected and _is_thinnable(module):
            self.block([node], f"'{name}' is listed as protected")

    def function(self, node: fx.Node) -> None:
        target = node.target
        method = node.op == "call_method"
        tensors = [n for n in _flat_nodes((node.args, node.kwargs)) if _shape(n) is not None]
        meta = node.meta.get("tensor_meta")
        if meta is None:
            return  # sizes, shapes and other non-tensor values
        if not isinstance(meta, TensorMetadata):  # several tensors out (split, chunk, max with indices)
            self.unknown(node, f"'{node.name}'")
            return
        if (method and target in _CHANNELWISE_METHODS) or (not method and target in _CHANNELWISE_FUNCS):
            self.channelwise(node, tensors)
        elif not method and target is F.pad:
            pad = _arg(node, 1, "pad", ())
            if len(pad) <= 2 * (len(_shape(node)) - 2):
                self.channelwise(node, tensors[:1])
            else:
                self.unknown(node, f"'{node.name}' (pads channels)")
        elif not method and target in _CAT_FUNCS:
            self.cat(node, list(_arg(node, 0, "tensors")), _arg(node, 1, "dim", 0))
        elif not method and target in (F.pixel_shuffle, torch.pixel_shuffle):
            self.shuffle(node, node.args[0], _arg(node, 1, "upscale_factor"))
        elif not method and target in (F.pixel_unshuffle, torch.pixel_unshuffle):
            self.unshuffle(node, node.args[0], _arg(node, 1, "downscale_factor"))
        elif (method and target in _RESHAPE_METHODS) or (not method and target in _RESHAPES_FUNCS):
            self.reshape(node, node.args[0])
        elif (method and target in _REDUCE_METHODS) or (not method and target in _REDUCE_FUNCS):
            dims = _arg(node, 1, "dim")
            rank = len(_shape(node.args[0]) or ())
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            out = _shape(node)
            if dims and all(d % rank >= 2 for d in dims) and out is not None and len(out) >= 2:
                self.join_channelwise(node.args[0], node)
            else:
                self.unknown(node, f"'{node.name}' (reduces over channels)")
        else:
            label = f".{target}()" if method else getattr(target, "__name__", str(target))
            self.unknown(node, f"'{label}' (node '{node.name}')")

    # specific operations -----------------------------------------------------------------------
    def cat(self, node: fx.Node, inputs: list[Any], dim: int) -> None:
        out = _shape(node)
        if out is None or dim % len(out) != 1:
            self.channelwise(node, inputs)
            return
        offset = 0
        for inp in inputs:
            c = self.channels(inp)
            if c is None:
                self.unknown(node, f"'{node.name}'")
                return
            for k in range(c):
                self.uf.union(self.elem(inp, k), self.elem(node, offset + k))
            offset += c

    def shuffle(self, node: fx.Node, inp: fx.Node, r: int) -> None:
        group = r * r
        for c in range(self.channels(node)):
            for s in range(group):
                self.uf.union(self.elem(inp, c * group + s), self.elem(node, c))

    def unshuffle(self, node: fx.Node, inp: fx.Node, r: int) -> None:
        group = r * r
        for c in range(self.channels(inp)):
            for s in range(group):
                self.uf.union(self.elem(node, c * group + s), self.elem(inp, c))

    def reshape(self, node: fx.Node, inp: fx.Node) -> None:
        src, dst = _shape(inp), _shape(node)
        if src is None or dst is None or len(src) < 2 or len(dst) < 2 or src[0] != dst[0]:
            self.unknown(node, f"'{node.name}' (reshape)")
            return
        inner = math.prod(src[2:])
        if dst[1] == src[1] and math.prod(dst[2:]) == inner:
            self.join_channelwise(inp, node)
        elif len(dst) == 2 and dst[1] == src[1] * inner:
            for f in range(dst[1]):
                self.uf.union(self.elem(node, f), self.elem(inp, f // inner))
        else:
            self.unknown(node, f"'{node.name}' (reshape {src} -> {dst})")

    def record(self, name: str, module: nn.Module, node: fx.Node, inp: Any,
               out_slots: list[tuple[str, int, Role]], aux: list[str], in_slot: tuple[str, int] | None = None,
               in_positions: int | None = None) -> None:
        """Register a layer: its output/input elements and the parameter slots of each."""
        if _shape(inp) is None:
            self.unknown(node, f"module '{name}'")
            return
        outs, ins = self.elems(node), self.elems(inp)
        if name in self.layers:  # a layer called more than once: its channels are shared by all calls
            layer = self.layers[name]
            for a, b in zip(layer.out_classes, outs, strict=True):
                self.uf.union(a, b)
            for a, b in zip(layer.in_classes, ins, strict=True):
                self.uf.union(a, b)
            return
        self.layers[name] = Layer(name, type(module).__name__, outs, ins)
        prefix = f"{name}." if name else ""
        for pname, dim, role in out_slots:
            if getattr(module, pname, None) is not None:
                for f, e in enumerate(outs):
                    self.slots.append((e, Slot(canonical(prefix + pname), dim, f, role)))
        for pname in aux:
            if getattr(module, pname, None) is not None:
                for f, e in enumerate(outs):
                    self.slots.append((e, Slot(canonical(prefix + pname), 0, f, "aux")))
        if in_slot is not None:
            pname, dim = in_slot
            for c, e in enumerate(ins):
                index = c % in_positions if in_positions else c
                self.slots.append((e, Slot(canonical(prefix + pname), dim, index, "channel")))

    def conv(self, node: fx.Node, name: str, m: nn.modules.conv._ConvNd, inp: Any) -> None:
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        g = m.groups
        if transposed and g != 1:
            self.unknown(node, f"grouped transposed conv '{name}'")
            return
        out_dim, in_dim = (1, 0) if transposed else (0, 1)
        outs = [("weight", out_dim, "filter"), ("bias", 0, "aux")]
        in_per_g, out_per_g = m.in_channels // g, m.out_channels // g
        if g == 1:
            self.record(name, m, node, inp, outs, [], in_slot=("weight", in_dim))
        elif in_per_g == 1:  # depthwise (with a channel multiplier): filters follow their input channel
            for f in range(m.out_channels):
                self.uf.union(self.elem(node, f), self.elem(inp, f // out_per_g))
            self.record(name, m, node, inp, outs, [])
        else:  # grouped: position i of every group goes together, on both sides
            for i in range(in_per_g):
                for j in range(1, g):
                    self.uf.union(self.elem(inp, i), self.elem(inp, j * in_per_g + i))
            for k in range(out_per_g):
                for j in range(1, g):
                    self.uf.union(self.elem(node, k), self.elem(node, j * out_per_g + k))
            self.record(name, m, node, inp, outs, [], in_slot=("weight", in_dim), in_positions=in_per_g)

    def linear(self, node: fx.Node, name: str, m: nn.Linear, inp: Any) -> None:
        shape = _shape(inp)
        if shape is None or len(shape) != 2:
            self.unknown(node, f"linear layer '{name}' on a {len(shape or ())}-D input")
            return
        self.record(name, m, node, inp, [("weight", 0, "filter"), ("bias", 0, "aux")], [],
                    in_slot=("weight", 1))

    def norm(self, node: fx.Node, name: str, m: nn.Module, inp: Any) -> None:
        self.channelwise(node, [inp])
        self.record(name, m, node, inp, [], ["weight", "bias"])

    # result ----------------------------------------------------------------------------------
    def result(self) -> Analysis:
        roots: dict[int, int] = {}

        def cls(e: int) -> int:
            return roots.setdefault(self.uf.find(e), len(roots))

        for node in self.gm.graph.nodes:  # number classes in graph order
            for e in self.elems(node):
                cls(e)
        layers = {n: Layer(layer.name, layer.type, [cls(e) for e in layer.out_classes],
                           [cls(e) for e in layer.in_classes]) for n, layer in self.layers.items()}
        slots: dict[int, list[Slot]] = {}
        for e, slot in self.slots:
            bucket = slots.setdefault(cls(e), [])
            if slot not in bucket:
                bucket.append(slot)
        blocked: dict[int, str] = {}
        for e, reason in self.block_reason.items():
            blocked.setdefault(cls(e), reason)
        return Analysis(layers, slots, blocked, len(roots), sorted(self.protected))


def _is_thinnable(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, *_NORMS, nn.PReLU))


def _opaque(model: nn.Module, protected: set[str]) -> set[str]:
    """The protected modules the tracer keeps whole (every protected module thinning cannot edit)."""
    modules = {canonical(n): m for n, m in model.named_modules()}
    missing = sorted(protected - set(modules))
    if missing:
        raise ThinningError(f"protected layer(s) {missing} are not modules of the model")
    return {n for n in protected if not _is_thinnable(modules[n])}


def check_traceable(model: nn.Module, protected: Iterable[str] = ()) -> None:
    """Raise ThinningError if torch.fx cannot trace `model` (needs no input: nothing is run)."""
    model = unwrap(model)
    _symbolic_trace(model, _opaque(model, {canonical(p) for p in protected}))


def analyse(model: nn.Module, dummy_input: Any, protected: Iterable[str] = ()) -> Analysis:
    """Trace `model` on `dummy_input` and compute its channel classes."""
    model = unwrap(model)
    protected = {canonical(p) for p in protected}
    builder = _Builder(_trace(model, dummy_input, _opaque(model, protected)), protected)
    builder.run()
    return builder.result()


def batchnorm_after(model: nn.Module, dummy_input: Any) -> dict[str, str]:
    """Each Conv2d whose output goes only into a BatchNorm2d, as {conv name: BatchNorm name} (canonical)."""
    gm = _trace(unwrap(model), dummy_input, set())
    pairs = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or type(gm.get_submodule(str(node.target))) is not nn.Conv2d:
            continue
        users = list(node.users)
        if (len(users) == 1 and users[0].op == "call_module"
                and isinstance(gm.get_submodule(str(users[0].target)), nn.BatchNorm2d)):
            pairs[canonical(str(node.target))] = canonical(str(users[0].target))
    return pairs


class TracedGroups:
    """GroupResolver from the traced graph: a parameter's filters or channels with everything coupled.

    A group lists only classes that can be removed (blocked ones are left out), so a pruner ranks
    and masks exactly what thinning can later take away. The analysis is redone when parameter
    shapes change (after thinning), so the resolver stays valid for the whole run.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, protected: Sequence[str] = ()):
        self.model = model
        self.dummy_input = dummy_input
        self._protected = [canonical(p) for p in protected]
        self._analysis: Analysis | None = None
        self._signature: tuple | None = None
        self._cache: dict[tuple[str, str], ChannelGroup] = {}
        self.refresh()

    def _shapes(self) -> tuple:
        return tuple((n, tuple(p.shape)) for n, p in self.model.named_parameters())

    def refresh(self) -> None:
        """Trace the model again (its structure changed)."""
        self._analysis = analyse(self.model, self.dummy_input, self._protected)
        self._signature = self._shapes()
        self._cache.clear()

    @property
    def analysis(self) -> Analysis:
        """The channel analysis of the model as it is now."""
        if self._signature != self._shapes():
            self.refresh()
        return self._analysis

    @property
    def protected(self) -> list[str]:
        """Layers whose filters are never removed (the user's list; model outputs are kept anyway)."""
        return list(self._protected)

    def group(self, param: str, kind: Kind) -> ChannelGroup:
        """The removable channel classes of `param`'s filters or input channels, with all members."""
        param = canonical(param)
        key = (param, kind)
        analysis = self.analysis
        if key in self._cache:
            return self._cache[key]
        layer_name, _, local = param.rpartition(".")
        layer = analysis.layers.get(layer_name)
        module = (None if layer is None else
                  {canonical(n): m for n, m in unwrap(self.model).named_modules()}[layer_name])
        if local != "weight" or not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            raise ValueError(f"'{param}' is not the weight of a conv or linear layer found when tracing "
                             "the model; only such weights can be pruned by filters or channels")
        source = layer.out_classes if kind == "filters" else layer.in_classes
        classes = list(dict.fromkeys(source))
        free = [c for c in classes if c not in analysis.blocked]
        if not free:
            reason = analysis.blocked[classes[0]] if classes else "it has none"
            raise ValueError(f"the {kind} of '{param}' cannot be pruned: {reason}")
        rank_role = "filter" if kind == "filters" else "channel"
        per_member: dict[tuple[str, int], list[list[int]]] = {}
        roles: dict[tuple[str, int], str] = {}
        for k, c in enumerate(free):
            for slot in analysis.slots.get(c, []):
                key2 = (slot.param, slot.dim)
                lists = per_member.setdefault(key2, [[] for _ in free])
                lists[k].append(slot.index)
                roles.setdefault(key2, slot.role)
        members = [GroupMember(p, d, tuple(tuple(sorted(set(ix))) for ix in lists), roles[(p, d)] == rank_role)
                   for (p, d), lists in per_member.items()]
        members.sort(key=lambda m: m.param != param)
        group = ChannelGroup(len(free), tuple(members))
        self._cache[key] = group
        return group
