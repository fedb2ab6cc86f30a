"""One registry per component kind, and the one function that builds a component from its config."""
from __future__ import annotations

import contextlib
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ArgumentError, ScheduleError, did_you_mean
from .schedule_source import KeyPath, ScheduleSource

#: Constructor arguments the builder supplies itself; a schedule may not set them.
INJECTED = ("name", "model", "optimizer", "teachers", "dummy_input")


class Registry:
    """Maps class names used in schedules to factories (classes or functions) of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a class or factory under `name` (default: its own name)."""

        def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or obj.__name__, obj)
            return obj

        return decorate

    def add(self, name: str, obj: Callable[..., Any]) -> None:
        """Register `obj` under `name`; a name can be registered once."""
        if name in self._items:
            raise KeyError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    @contextlib.contextmanager
    def temporarily(self, obj: Callable[..., Any], name: str | None = None) -> Iterator[Callable[..., Any]]:
        """Register `obj` under `name` (default: its own name) for the duration of the block only.

        For tests and experiments: the entry is removed on exit, also on an error, so the block can run
        again; a name already registered is refused as add() refuses it.
        """
        key = name or obj.__name__
        self.add(key, obj)
        try:
            yield obj
        finally:
            del self._items[key]

    def refuse(self, name: str, message: str) -> None:
        """Register a name schedules may use (a Distiller class, say) that cannot be built here: building it
        raises ValueError(message), which the builder reports with the schedule's file and line."""

        def factory(**_: Any) -> None:
            raise ValueError(message)

        self.add(name, factory)

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as `name` (KeyError if none)."""
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(tp, "__name__", str(tp))


def _literals(tp: Any) -> list[Any]:
    """The values a Literal (possibly inside a Union) allows."""
    origin = get_origin(tp)
    if origin is Literal:
        return list(get_args(tp))
    if origin in (Union, types.UnionType):
        return [v for a in get_args(tp) for v in _literals(a)]
    return []


def matches(value: Any, tp: Any) -> bool:
    """Whether a plain YAML value fits a type hint (int accepted for float; bool never for numbers)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return value in get_args(tp)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = get_args(tp)
        if not args or (origin is tuple and len(args) != 1 and args[-1] is not Ellipsis):
            return True
        return all(matches(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            return False
        args = get_args(tp)
        return not args or all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _signature(factory: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    sig = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to no type checks
        hints = {}
    return sig, hints


def build(cfg: dict[str, Any], registry: Registry, *, source: ScheduleSource, path: KeyPath,
          construct: bool = True, **injected: Any) -> Any:
    """Build one component from `{class: Name, **kwargs}`.

    Copies the config, pops the class name, checks every kwarg against the factory's signature and
    type hints, and supplies the INJECTED arguments (`name`, `model`, ...) the factory takes. Every
    problem is a ScheduleError pointing at the schedule's line.
    """
    if not isinstance(cfg, dict):
        raise source.error(path, f"expected a mapping with a 'class' key, got {type(cfg).__name__}")
    cfg = dict(cfg)
    class_name = cfg.pop("class", None)
    if class_name is None:
        raise source.error(path, f"missing 'class' (one of the {registry.kind} classes)",
                           hint=f"valid classes: {', '.join(registry.names())}")
    if not isinstance(class_name, str) or class_name not in registry:
        hint = did_you_mean(str(class_name), registry.names())
        hint = hint or f"valid {registry.kind} classes: {', '.join(registry.names())}"
        raise source.error(path + ("class",), f"unknown {registry.kind} class '{class_name}'", hint=hint)
    factory = registry.get(class_name)
    sig, hints = _signature(factory)
    params = {n: p for n, p in sig.parameters.items()
              if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    user_params = [n for n in params if n not in INJECTED]
    kwargs: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in INJECTED or (key not in params and not accepts_any):
            hint = did_you_mean(str(key), user_params)
            hint = hint or f"{class_name} takes: {', '.join(user_params) or 'no arguments'}"
            raise source.error(path + (key,), f"unknown argument '{key}' for {class_name}", hint=hint)
        tp = hints.get(key, params[key].annotation if key in params else Any)
        if not matches(value, tp):
            choices = [a for a in _literals(tp) if isinstance(a, str)]
            hint = did_you_mean(value, choices) if isinstance(value, str) and choices else None
            raise source.error(path + (key,),
                               f"{class_name}.{key} must be {_type_name(tp)}, got {value!r}", hint=hint)
        kwargs[key] = value
    for name, param in params.items():
        if name in INJECTED:
            if name in injected:
                kwargs[name] = injected[name]
            elif param.default is inspect.Parameter.empty:
                kwargs[name] = None
        elif name not in kwargs and param.default is inspect.Parameter.empty:
            raise source.error(path, f"{class_name} is missing required argument '{name}'",
                               hint=f"{class_name} takes: {', '.join(user_params)}")
    if not construct:
        return None
    try:
        return factory(**kwargs)
    except ScheduleError:
        raise
    except ArgumentError as exc:  # the factory's own check of one argument's value
        raise source.error(path + exc.key, f"{class_name}: {exc}", hint=exc.hint) from None
    except ValueError as exc:  # the factory's own check of a combination of arguments
        raise source.error(path, f"{class_name}: {exc}") from None


PRUNERS = Registry("pruner")
REGULARIZERS = Registry("regularizer")
QUANTIZERS = Registry("quantizer")
LR_SCHEDULERS = Registry("lr_scheduler")
EXTENSIONS = Registry("extension")
DISTILLERS = Registry("distiller")

#: YAML section -> (policy kind, registry of its classes)
SECTIONS: dict[str, tuple[str, Registry]] = {
    "pruners": ("pruner", PRUNERS),
    "regularizers": ("regularizer", REGULARIZERS),
    "quantizers": ("quantizer", QUANTIZERS),
    "lr_schedulers": ("lr_scheduler", LR_SCHEDULERS),
    "extensions": ("extension", EXTENSIONS),
    "distillers": ("distiller", DISTILLERS),
}
