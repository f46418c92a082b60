"""Solver configuration: one validated dataclass shared by every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NATIVE_METHODS = ("broyden", "anderson", "picard")
PEER_PREFIX = "torchdeq:"
PEER_METHODS = ("anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter")
STOP_MODES = ("rel", "abs")
MEMORY_POLICIES = ("restart", "ring")
# How systems depend on each other along the last system dim, which decides when one may freeze.
COUPLINGS = ("independent", "causal", "anticausal", "full")
REVERSED_COUPLING = {"independent": "independent", "causal": "anticausal", "anticausal": "causal", "full": "full"}

# Method-specific default for `memory` (Broyden rank, Anderson window) when the user leaves it unset.
DEFAULT_MEMORY = {"broyden": 30, "anderson": 6, "picard": 1}


def _allowed_methods() -> str:
    return ", ".join([*NATIVE_METHODS, *(PEER_PREFIX + m for m in PEER_METHODS)])


@dataclass(frozen=True)
class SolverConfig:
    """How to solve z = f(z).

    method:      "broyden" | "anderson" | "picard" | "torchdeq:<name>" (the peer library's solver).
    max_iter:    iterations after the evaluation at z0 (so at most max_iter + 1 evaluations of f,
                 plus line-search trials).
    tol:         stop threshold on the residual chosen by `stop`, per system.
    stop:        "rel" = ||f(z)-z|| / (||f(z)|| + eps), "abs" = ||f(z)-z|| / sqrt(system size).
    memory:      Broyden rank / Anderson window (None: 30 for Broyden, 6 for Anderson).
    damping:     Picard step f(z)*damping + z*(1-damping); Anderson mixing beta.
    ridge:       Anderson ridge, relative to the mean diagonal of the residual-difference Gram matrix
                 (None: 1e3 * machine epsilon of the working dtype).
    memory_policy: Broyden only: "restart" (reset to -I when the buffers are full) or "ring" (overwrite
                 the oldest update, as torchdeq does).
    line_search: Broyden only: when a full step raises a system's residual, retry that system at the
                 minimiser of a quadratic model of ||g||^2 (one extra evaluation, one extra sync).
    trace:       keep the per-iteration residual of every system in the stats.
    eps:         denominator guard of the relative residual.
    peer_kwargs: extra keyword arguments passed to the torchdeq solver (e.g. {"m": 6, "lam": 1e-4}).
    """

    method: str = "broyden"
    max_iter: int = 30
    tol: float = 1e-4
    stop: str = "rel"
    memory: int | None = None
    damping: float = 1.0
    ridge: float | None = None
    memory_policy: str = "restart"
    line_search: bool = False
    trace: bool = False
    eps: float = 1e-9
    peer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in NATIVE_METHODS:
            peer = self.method[len(PEER_PREFIX):] if self.method.startswith(PEER_PREFIX) else None
            if peer not in PEER_METHODS:
                raise ValueError(f"SolverConfig.method={self.method!r} is unknown; allowed: {_allowed_methods()}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"SolverConfig.max_iter={self.max_iter!r} must be an integer >= 1")
        if not self.tol > 0:
            raise ValueError(f"SolverConfig.tol={self.tol!r} must be > 0")
        if self.stop not in STOP_MODES:
            raise ValueError(f"SolverConfig.stop={self.stop!r} is unknown; allowed: {', '.join(STOP_MODES)}")
        if self.memory is not None and (not isinstance(self.memory, int) or self.memory < 1):
            raise ValueError(f"SolverConfig.memory={self.memory!r} must be an integer >= 1 (or None)")
        if not 0 < self.damping <= 1:
            raise ValueError(f"SolverConfig.damping={self.damping!r} must be in (0, 1]")
        if self.memory_policy not in MEMORY_POLICIES:
            raise ValueError(f"SolverConfig.memory_policy={self.memory_policy!r} is unknown; "
                             f"allowed: {', '.join(MEMORY_POLICIES)}")
        if self.ridge is not None and not self.ridge >= 0:
            raise ValueError(f"SolverConfig.ridge={self.ridge!r} must be >= 0 (or None)")
        if not self.eps > 0:
            raise ValueError(f"SolverConfig.eps={self.eps!r} must be > 0")

    @property
    def is_peer(self) -> bool:
        """True when the torchdeq solver runs this solve."""
        return self.method.startswith(PEER_PREFIX)

    @property
    def window(self) -> int:
        """The effective memory (Broyden rank or Anderson window)."""
        return self.memory if self.memory is not None else DEFAULT_MEMORY.get(self.method, 30)
