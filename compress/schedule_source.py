"""Reading a schedule: safe YAML with the line of every key, so errors can point at it."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ScheduleError

log = logging.getLogger(__name__)

KeyPath = tuple[Any, ...]


def format_path(path: KeyPath) -> str:
    """('policies', 0, 'pruner') -> 'policies[0].pruner'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class ScheduleSource:
    """A parsed schedule: its plain data, where it came from, and the line of each key path."""

    data: Any
    name: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())

    def error(self, path: KeyPath, message: str, hint: str | None = None) -> ScheduleError:
        """A ScheduleError pointing at `path` in this schedule."""
        return ScheduleError(message, source=self.name, line=self.line_of(path),
                             key_path=format_path(path) or None, hint=hint)


def _content(node: yaml.Node) -> Any:
    """A node's tags and values as nested tuples, to tell whether two nodes say the same thing."""
    if isinstance(node, yaml.MappingNode):
        return node.tag, tuple((_content(k), _content(v)) for k, v in node.value)
    if isinstance(node, yaml.SequenceNode):
        return node.tag, tuple(_content(v) for v in node.value)
    return node.tag, node.value


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], source: str | None) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, tuple[int, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                first, value = seen[key]
                if _content(value) != _content(value_node):
                    raise ScheduleError(f"key '{key}' appears twice (first on line {first}); "
                                        "YAML would silently keep only the last one",
                                        source=source, line=line, key_path=format_path(path + (key,)),
                                        hint="remove or rename one of them")
                log.warning("%s, line %d: key '%s' repeats line %d with the same value", source, line, key, first)
            seen[key] = (line, value_node)
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines, source)


def parse_yaml(text: str, name: str | None = None) -> ScheduleSource:
    """Parse YAML text with the safe loader (no python tags, nothing evaluated)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        hint = ("only plain YAML is accepted; python tags are never evaluated"
                if isinstance(exc, yaml.constructor.ConstructorError)
                else "check the indentation and the ':' after each key")
        raise ScheduleError(f"not valid YAML: {problem}", source=name, line=line, hint=hint) from None
    except yaml.YAMLError as exc:
        raise ScheduleError(f"not valid YAML: {exc}", source=name,
                            hint="only plain YAML is accepted: no python tags") from None
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, name)
    return ScheduleSource(data=data, name=name, lines=lines)


def read_schedule(path: str | Path) -> ScheduleSource:
    """Read and parse a schedule file; a missing or unreadable file is a ScheduleError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScheduleError(f"schedule file not found: {path}",
                            hint="check the path; the shipped schedules are under schedules/") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScheduleError(f"cannot read schedule file {path}: {exc}") from None
    return parse_yaml(text, str(path))
