"""Per-system bookkeeping shared by every method: residuals, freezing, best iterate, failure."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import SolverConfig
from .stats import residuals


def _settled_prefix(done: Tensor, shape: torch.Size, coupling: str) -> Tensor:
    """Which systems have every system they depend on (themselves included) settled."""
    if coupling == "full":
        return done.all().expand_as(done)
    grid = done.view(shape).to(torch.uint8)
    if coupling == "anticausal":
        grid = grid.flip(-1)
    settled = grid.cummin(dim=-1).values
    if coupling == "anticausal":
        settled = settled.flip(-1)
    return settled.reshape(-1).bool()


class Monitor:
    """Tracks S systems of N values each, laid out as (S, N).

    A system freezes when its residual drops below tol (converged) or when f returns a non-finite value
    for it (failed); a frozen system's iterate never changes again. Independent systems keep their best
    finite iterate, so the result is never worse than any point the solver visited.

    Coupled systems (`coupling` "causal": system i may depend on systems j < i along the last system dim;
    "anticausal": on j > i; "full": on all) may freeze only together with, or after, every system they
    depend on: freezing one whose inputs still move would leave it off the fixed point. For them the
    result is the last finite iterate, since iterates of different steps do not fit together.
    """

    def __init__(self, x0: Tensor, cfg: SolverConfig, system_shape: torch.Size | None = None,
                 coupling: str = "independent") -> None:
        systems, size = x0.shape
        self.cfg = cfg
        self.coupling = coupling
        self.system_shape = system_shape if system_shape is not None else torch.Size([systems])
        dev = x0.device
        self.best_x = x0.clone()
        self.best_res = torch.full((systems,), math.inf, device=dev, dtype=x0.dtype)
        self.best_abs = torch.full_like(self.best_res, math.inf)
        self.best_rel = torch.full_like(self.best_res, math.inf)
        self.active = torch.ones(systems, dtype=torch.bool, device=dev)
        self.converged = torch.zeros_like(self.active)
        self.nonfinite = torch.zeros_like(self.active)
        self.nstep = torch.zeros(systems, dtype=torch.long, device=dev)
        self.trace: list[Tensor] | None = [] if cfg.trace else None
        self.nfe = 0

    def observe(self, x: Tensor, fx: Tensor, stepped: bool) -> tuple[Tensor, Tensor]:
        """Record f(x) for all systems; return (x, g) with failed systems reset to their best iterate
        and g = f(x) - x zeroed wherever a system is frozen, so no NaN reaches the method's memory."""
        self.nfe += 1
        if stepped:
            self.nstep += self.active
        g = fx - x
        abs_res, rel_res = residuals(g, fx, self.cfg.eps)
        res = rel_res if self.cfg.stop == "rel" else abs_res
        finite = torch.isfinite(rel_res) & torch.isfinite(abs_res)
        live = self.active & finite
        better = live & (res < self.best_res) if self.coupling == "independent" else live
        self.best_x = torch.where(better[:, None], x, self.best_x)
        self.best_res = torch.where(better, res, self.best_res)
        self.best_abs = torch.where(better, abs_res, self.best_abs)
        self.best_rel = torch.where(better, rel_res, self.best_rel)
        converged = self.converged | (live & (res < self.cfg.tol))
        self.nonfinite |= self.active & ~finite
        if self.coupling != "independent":
            converged &= _settled_prefix(converged | self.nonfinite, self.system_shape, self.coupling)
        self.converged = converged
        self.active = live & ~converged
        if self.trace is not None:
            self.trace.append(torch.where(finite, res, self.best_res))
        x = torch.where(finite[:, None], x, self.best_x)
        g = torch.where(self.active[:, None], g, torch.zeros((), dtype=g.dtype, device=g.device))
        return x, g

    def any_active(self) -> bool:
        """The one host-device synchronisation of an iteration."""
        return bool(self.active.any())
