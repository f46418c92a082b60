"""Per-system bookkeeping shared by every method: residuals, freezing, best iterate, failure."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import SolverConfig


class Monitor:
    """Tracks S independent systems of N values each, laid out as (S, N).

    A system freezes when its residual drops below tol (converged) or when f returns a non-finite value
    for it (failed); a frozen system's iterate never changes again. The best finite iterate of every
    system is kept, so the result is never worse than any point the solver visited.
    """

    def __init__(self, x0: Tensor, cfg: SolverConfig) -> None:
        systems, size = x0.shape
        self.cfg = cfg
        self.sqrt_size = math.sqrt(size)
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
        gnorm = torch.linalg.vector_norm(g, dim=1)
        fnorm = torch.linalg.vector_norm(fx, dim=1)
        abs_res = gnorm / self.sqrt_size
        rel_res = gnorm / (fnorm + self.cfg.eps)
        res = rel_res if self.cfg.stop == "rel" else abs_res
        finite = torch.isfinite(gnorm) & torch.isfinite(fnorm)
        live = self.active & finite
        better = live & (res < self.best_res)
        self.best_x = torch.where(better[:, None], x, self.best_x)
        self.best_res = torch.where(better, res, self.best_res)
        self.best_abs = torch.where(better, abs_res, self.best_abs)
        self.best_rel = torch.where(better, rel_res, self.best_rel)
        self.converged |= live & (res < self.cfg.tol)
        self.nonfinite |= self.active & ~finite
        self.active = live & ~self.converged
        if self.trace is not None:
            self.trace.append(torch.where(finite, res, self.best_res))
        x = torch.where(finite[:, None], x, self.best_x)
        g = torch.where(self.active[:, None], g, torch.zeros((), dtype=g.dtype, device=g.device))
        return x, g

    def any_active(self) -> bool:
        """The one host-device synchronisation of an iteration."""
        return bool(self.active.any())
