"""Value checks shared by the settings dataclasses, and the one-line error a user's config mistake raises.

Each settings dataclass validates itself in `__post_init__` with these helpers, raising ValueError messages of
the form "Owner.field=value must be ..."; the config loader turns them into `ConfigError`s under the dotted key.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class ConfigError(ValueError):
    """A user error in a config file, dict or override: one line naming the dotted key and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def allowed(values: Iterable) -> str:
    """The allowed values, sorted and comma separated, for an error message."""
    return ", ".join(str(v) for v in sorted(values, key=str))


def check_int(owner: str, name: str, value, minimum: int) -> None:
    """Raise ValueError unless value is an int >= minimum (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name}={value!r} must be an integer >= {minimum}")


def check_bool(owner: str, name: str, value) -> None:
    """Raise ValueError unless value is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name}={value!r} must be true or false")


def check_choice(owner: str, name: str, value, choices: Iterable) -> None:
    """Raise ValueError unless value is one of choices."""
    if value not in choices:
        raise ValueError(f"{owner}.{name}={value!r} is unknown; allowed: {allowed(choices)}")


def check_str(owner: str, name: str, value) -> None:
    """Raise ValueError unless value is a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{owner}.{name}={value!r} must be a non-empty string")


def check_number(owner: str, name: str, value, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError unless value is a finite real number (not a bool) in the given range."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        span = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        span = f"{'<' if high_open else '<='} {high:g}"
    else:
        span = "finite"
    raise ValueError(f"{owner}.{name}={value!r} must be a number {span}")
