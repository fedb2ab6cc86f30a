"""The one exception a wrong schedule raises, with where it is and how to fix it."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class ScheduleError(ValueError):
    """A compression schedule that cannot be used; raised before training starts.

    The message names the file, the line, the key path, what was expected and, when one is close,
    the valid name the user probably meant.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 key_path: str | None = None, hint: str | None = None):
        self.source, self.line, self.key_path, self.hint = source, line, key_path, hint
        self.reason = message
        where = []
        if source:
            where.append(f"{source}" + (f", line {line}" if line else ""))
        elif line:
            where.append(f"line {line}")
        if key_path:
            where.append(f"at '{key_path}'")
        text = (": ".join([" ".join(where), message]) if where else message)
        if hint:
            text += f" ({hint})"
        super().__init__(text)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to `name`, if one is close enough to be a likely typo."""
    choices = list(choices)
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in choices}
        match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return match[0] if match else None


def did_you_mean(name: str, choices: Iterable[str]) -> str | None:
    """'did you mean X?' for the closest valid name, or None."""
    near = closest(name, choices)
    return f"did you mean '{near}'?" if near else None


class ArgumentError(ValueError):
    """Raised by a component's constructor for a bad argument value; the builder adds file and line."""

    def __init__(self, key: str | tuple, message: str, hint: str | None = None):
        self.key = key if isinstance(key, tuple) else (key,)
        self.hint = hint
        super().__init__(message)
