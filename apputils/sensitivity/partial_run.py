"""Running part of a model: a torch.fx trace run from any node, given the values that cross that point.

The runner executes the graph's nodes itself (placeholder, get_attr, call_function, call_method,
call_module, output), so it can start anywhere, stop anywhere, free each value after its last reader,
keep 4-D values channels-last, and run chosen modules through a faster function of their input.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.node import map_arg

Env = dict[torch.fx.Node, Any]

_IN_PLACE_OPERATORS = {"iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior", "ixor",
                       "ilshift", "irshift", "imatmul", "setitem"}


class PartialRunner:
    """Runs a torch.fx trace of the model from any node, given the values that cross that point.

    The traced GraphModule shares the model's submodules and parameters, so a weight changed in
    place in the model is seen here.
    """

    def __init__(self, model: nn.Module):
        self.gm = torch.fx.symbolic_trace(model)
        self.nodes = list(self.gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        if not self.nodes or self.nodes[-1].op != "output":
            raise RuntimeError("the traced graph does not end in an output node")
        #: index of the first node after the inputs: running from here is running the whole model
        self.body = sum(1 for n in self.nodes if n.op == "placeholder")
        self._in_place: dict[int, bool] = {}
        #: per node index, the nodes whose value is read for the last time there (freed afterwards,
        #: as a plain forward frees them: keeping every activation alive made runs ~2x slower on CPU)
        self._free_after: list[list[torch.fx.Node]] = [[] for _ in self.nodes]
        for node in self.nodes:
            if node.users:
                self._free_after[max(self.index[u] for u in node.users)].append(node)
        #: when True, every 4-D value is kept channels-last (NHWC), which CPU convolution kernels run
        #: faster than NCHW (measured 1.6x on C2SRCNN); see `tuning.choose_memory_format`
        self.channels_last = False
        #: per call_module node, a faster function of its single input that gives the same value
        #: (apputils.conv_taps for narrow-output convolutions); see `tuning.choose_kernels`
        self.kernels: dict[torch.fx.Node, Callable[[torch.Tensor], torch.Tensor]] = {}

    def module(self, node: torch.fx.Node) -> nn.Module:
        """The submodule a call_module node calls."""
        return self.gm.get_submodule(str(node.target))

    def _value(self, node: torch.fx.Node, env: Env, inputs: list[Any]) -> Any:
        """The value of one node, its arguments read from `env` (placeholders take `inputs` in order)."""
        if node.op == "placeholder":
            if str(node.target).startswith("*"):  # *args: every input left
                rest, inputs[:] = list(inputs), []
                return tuple(rest)
            if inputs:
                return inputs.pop(0)
            if node.args:  # an argument with a default value
                return node.args[0]
            raise TypeError(f"the model's input '{node.target}' was not given")
        if node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        args = map_arg(node.args, env.__getitem__)
        kwargs = map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        if node.op == "call_module":
            kernel = self.kernels.get(node)
            return kernel(args[0]) if kernel is not None else self.module(node)(*args, **kwargs)
        raise RuntimeError(f"cannot run fx node {node.name} of kind {node.op!r} here")

    def _run(self, env: Env, start: int, stop: int, inputs: Iterable[Any] = ()) -> None:
        """Run nodes [start, stop) into `env`, dropping each value after its last reader."""
        pending = list(inputs)
        for i in range(start, stop):
            node = self.nodes[i]
            value = self._value(node, env, pending)
            if self.channels_last and torch.is_tensor(value) and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
            env[node] = value
            for done in self._free_after[i]:
                env.pop(done, None)

    def node_seconds(self, x: Any) -> list[float]:
        """Wall seconds each node takes when the whole graph runs on input x (inputs and output: 0)."""
        seconds = [0.0] * len(self.nodes)
        env: Env = {}
        self._run(env, 0, self.body, (x,))
        for i in range(self.body, len(self.nodes) - 1):
            t0 = time.perf_counter()
            self._run(env, i, i + 1)
            seconds[i] = time.perf_counter() - t0
        return seconds

    def first_use(self, params: Iterable[str]) -> int:
        """Index of the first node that reads any of `params` (the output node when none does)."""
        wanted = set(params)
        for i, node in enumerate(self.nodes):
            if node.op in ("call_module", "get_attr"):
                prefix = f"{node.target}."
                if any(p == node.target or p.startswith(prefix) for p in wanted):
                    return max(i, self.body)
        return len(self.nodes) - 1

    def frontier(self, start: int) -> list[torch.fx.Node]:
        """Nodes before `start` whose values are read at or after it."""
        return [n for n in self.nodes[:start] if any(self.index[u] >= start for u in n.users)]

    def run_prefix(self, start: int, x: Any) -> Env:
        """Run nodes [0, start) on input x; return the frontier's values."""
        env: Env = {}
        self._run(env, 0, start, (x,))
        return {n: env[n] for n in self.frontier(start)}

    def input_of(self, node: torch.fx.Node, x: Any) -> Any:
        """The value of `node`'s first argument when the model runs on input x."""
        return self.run_prefix(self.index[node], x)[node.args[0]]

    def _maybe_in_place(self, node: torch.fx.Node) -> bool:
        """Whether `node` may write into one of its inputs (`x += y`, `relu_`, `ReLU(inplace=True)`)."""
        if node.op == "call_module":
            return bool(getattr(self.module(node), "inplace", False))
        if node.op in ("call_function", "call_method"):
            name = getattr(node.target, "__name__", str(node.target))
            return bool(node.kwargs.get("inplace", False)) or name.endswith("_") and not name.endswith("__") \
                or name in _IN_PLACE_OPERATORS
        return False

    def writes_in_place(self, start: int) -> bool:
        """Whether any node from `start` on may write into a tensor (then cached values are cloned)."""
        if start not in self._in_place:
            self._in_place[start] = any(self._maybe_in_place(n) for n in self.nodes[start:])
        return self._in_place[start]

    def run_suffix(self, start: int, cached: Mapping[torch.fx.Node, Any]) -> Any:
        """Run nodes [start, end) from cached frontier values; return the model's output.

        When a later node may write in place (`x += skip`, possibly through a view), the cached
        tensors are cloned first, so the cache stays valid for the next level.
        """
        clone = self.writes_in_place(start)
        env = {n: (v.clone() if clone and torch.is_tensor(v) else v) for n, v in cached.items()}
        output = self.nodes[-1]
        self._run(env, start, len(self.nodes) - 1)
        return map_arg(output.args[0], env.__getitem__)
