"""Solver configuration: one validated dataclass shared by every method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import PEER_PREFIX, lookup

STOP_MODES = ("rel", "abs")
MEMORY_POLICIES = ("restart", "ring")
# How systems depend on each other along the last system dim, which decides when one may freeze.
COUPLINGS = ("independent", "causal", "anticausal", "full")
# The methods solvers/fused.py has branch-free forms of (SolverConfig.fused).
FUSED_METHODS = ("anderson", "broyden", "picard")
REVERSED_COUPLING = {"independent": "independent", "causal": "anticausal", "anticausal": "causal", "full": "full"}


def _built_in(method: str) -> bool:
    """Whether `method` is still the solvers package's own (not replaced by a user's register_method)."""
    entry = lookup(method)
    return entry is not None and entry.build.__module__ == f"{__package__}.{method}"


@dataclass(frozen=True)
class SolverConfig:
    """How to solve z = f(z).

    method:      "broyden" | "anderson" | "picard" | a name added with `register_method` | "torchdeq:<name>"
                 (the peer library's solver).
    max_iter:    iterations after the evaluation at z0 (so at most max_iter + 1 evaluations of f,
                 plus line-search trials).
    tol:         stop threshold on the residual chosen by `stop`, per system.
    stop:        "rel" = ||f(z)-z|| / (||f(z)|| + eps), "abs" = ||f(z)-z|| / sqrt(system size).
    memory:      Broyden rank / Anderson window (None: the method's registered default, 30 for Broyden,
                 6 for Anderson).
    damping:     Picard step f(z)*damping + z*(1-damping); Anderson mixing beta.
    ridge:       Anderson ridge, relative to the mean diagonal of the residual-difference Gram matrix
                 (None: 1e3 * machine epsilon of the working dtype).
    memory_policy: Broyden only: "restart" (reset to -I when the buffers are full) or "ring" (overwrite
                 the oldest update, as torchdeq does).
    line_search: Broyden only (methods registered with line_search=True): when a full step raises a
                 system's residual, retry that system at the minimiser of a quadratic model of ||g||^2 (one
                 extra evaluation, one extra sync).
    trace:       keep the per-iteration residual of every system in the stats.
    fused:       run each iteration's bookkeeping and update as one compiled graph (solvers/fused.py): the same
                 algorithm and iteration counts, results equal to rounding, for the built-in methods without
                 line search. Pays for small systems (generation's one position per sequence); compiles once
                 per shape (seconds).
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
    fused: bool = False
    eps: float = 1e-9
    peer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lookup(self.method)  # ValueError naming every registered and peer method
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
        replaced = self.method in FUSED_METHODS and not _built_in(self.method)
        if self.fused and (self.method not in FUSED_METHODS or self.line_search or replaced):
            raise ValueError(f"SolverConfig.fused=True runs the built-in methods {', '.join(FUSED_METHODS)} without "
                             f"line search, not method={self.method!r} with line_search={self.line_search}"
                             + (" (replaced with register_method)" if replaced else ""))
        if not self.eps > 0:
            raise ValueError(f"SolverConfig.eps={self.eps!r} must be > 0")

    @property
    def is_peer(self) -> bool:
        """True when the torchdeq solver runs this solve."""
        return self.method.startswith(PEER_PREFIX)

    @property
    def window(self) -> int:
        """The effective memory: `memory`, else the method's registered default (30 for torchdeq methods,
        which take theirs from peer_kwargs)."""
        if self.memory is not None:
            return self.memory
        entry = lookup(self.method)
        return entry.default_memory if entry is not None else 30
