"""The method registry: every name `SolverConfig.method` accepts, and how to build its solver state.

A method is registered with a `build(cfg, x)` that returns an object following the `Method` protocol; the
solve loop (solvers/solve.py) drives it, so a method never sees f, the stopping rule or per-system freezing:

    x, g = x0, f(x0) - x0                    # (systems, size), in the working dtype (float32 for 16-bit floats)
    method = build(cfg, x)
    loop:  dx = method.direction(g)          # the step; x_new = x + dx
           g_new = f(x_new) - x_new          # the monitor resets failed systems and zeroes frozen rows of g_new
           method.record(dx, g_new - g, g_new)

The built-ins register themselves in their own modules (broyden.py, anderson.py, picard.py). "torchdeq:<name>"
runs the peer library's solver instead of this loop; names with ':' are reserved for that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

PEER_PREFIX = "torchdeq:"
PEER_METHODS = ("anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter")


@runtime_checkable
class Method(Protocol):
    """The state of one solve, for S systems of N values laid out as (S, N).

    direction(g): the step dx for the current residual g = f(x) - x. A system that has frozen (converged or
                  failed) has a zero row in g and must get a zero row in dx, so its iterate stays put.
    record(dx, dg, g_new): after the step, dx as returned by `direction`, dg = g_new - g and the new
                  residual g_new (zero rows for systems frozen by it); update the memory (Broyden's inverse
                  Jacobian, Anderson's history) or do nothing.
    """

    def direction(self, g: Tensor) -> Tensor:
        """The step dx (S, N) from the residual g (S, N)."""
        ...

    def record(self, dx: Tensor, dg: Tensor, g_new: Tensor) -> None:
        """Learn from the step just taken."""
        ...


# build(cfg, x): cfg is the SolverConfig (typed Any because config.py imports this module, not the reverse).
Build = Callable[[Any, Tensor], Method]


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its builder, its default `memory` and whether the loop's line search applies.

    line_search: the method accepts `SolverConfig.line_search`: when a full step raises a system's residual, the
                 loop retries it at a shorter step, and the method records the step taken.
    """

    name: str
    build: Build
    default_memory: int = 1
    line_search: bool = False


_METHODS: dict[str, MethodEntry] = {}
METHODS: Mapping[str, MethodEntry] = MappingProxyType(_METHODS)  # read-only: register_method does the checks


def register_method(name: str, build: Build, *, default_memory: int = 1, line_search: bool = False,
                    replace: bool = False) -> MethodEntry:
    """Make `SolverConfig(method=name)` solve with the state `build(cfg, x)` returns (see `Method`).

    default_memory is `SolverConfig.window` when `memory` is unset (1 suits a method without memory). Raises
    ValueError for a name with ':' (reserved for "torchdeq:<name>") or one already registered, unless replace.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"method name {name!r} must be a non-empty string without ':' "
                         f"(reserved for {PEER_PREFIX}<name>)")
    if name in _METHODS and not replace:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to replace it")
    if not callable(build):
        raise ValueError(f"method {name!r}: build={build!r} must be callable as build(cfg, x)")
    if isinstance(default_memory, bool) or not isinstance(default_memory, int) or default_memory < 1:
        raise ValueError(f"method {name!r}: default_memory={default_memory!r} must be an integer >= 1")
    entry = MethodEntry(name, build, default_memory, bool(line_search))
    _METHODS[name] = entry
    return entry


def unregister_method(name: str) -> MethodEntry:
    """Remove a registered method (ValueError naming the allowed ones if unknown) and return its entry."""
    entry = lookup(name)
    if entry is None:
        raise ValueError(f"method {name!r} belongs to the peer library and cannot be unregistered")
    return _METHODS.pop(name)


def allowed_methods() -> tuple[str, ...]:
    """Every name SolverConfig.method accepts: the registered methods (sorted), then the torchdeq ones."""
    return (*sorted(_METHODS), *(PEER_PREFIX + m for m in PEER_METHODS))


def lookup(name: str) -> MethodEntry | None:
    """The entry registered as `name`, None for a torchdeq:<name> peer method; ValueError for anything else."""
    entry = _METHODS.get(name)
    if entry is None and not (isinstance(name, str) and name.startswith(PEER_PREFIX)
                              and name[len(PEER_PREFIX):] in PEER_METHODS):
        raise ValueError(f"SolverConfig.method={name!r} is unknown; allowed: {', '.join(allowed_methods())}")
    return entry


def build_method(cfg: Any, x: Tensor) -> tuple[Method, MethodEntry]:
    """Build the registered method of the SolverConfig `cfg` for the iterate x (S, N); TypeError if it breaks the
    protocol."""
    entry = lookup(cfg.method)
    if entry is None:
        raise ValueError(f"SolverConfig.method={cfg.method!r} runs in the peer library, not the native loop")
    method = entry.build(cfg, x)
    if not isinstance(method, Method):
        raise TypeError(f"method {cfg.method!r}: build returned {type(method).__name__}, which lacks "
                        f"direction(g) and record(dx, dg, g_new)")
    return method, entry
