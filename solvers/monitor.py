"""Per-system bookkeeping shared by every method: residuals, freezing, best iterate, failure."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import SolverConfig
from .stats import residual_norms


def settled_prefix(done: Tensor, shape: tuple[int, ...], coupling: str) -> Tensor:
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

    A system freezes when its residual drops below tol (converged) or when it fails: f returns a non-finite
    value for it, or its iterate diverges (||x|| grows past 1/sqrt(eps) times its starting scale
    max(||x0||, ||f(x0)||), where float rounding can make f(x) - x vanish without a fixed point). A frozen
    system's iterate never changes again. Independent systems keep their best finite, non-diverged iterate,
    so the result is never worse than any point the solver accepted.

    A relative residual can also fall because ||f(x)|| grows while ||f(x) - x|| does not shrink (iterates
    running off to infinity, e.g. f(z) = z + c); such a claim (residual not below half its first value while
    ||f(x)|| more than doubled) does not count as convergence.

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
        self.diverged = torch.zeros_like(self.active)
        self.growth = torch.finfo(x0.dtype).eps ** -0.5
        # From the first observation: half of ||g|| and twice ||f(x)|| at x0 (the "claim" test below), and the
        # norm past which an iterate counts as diverged.
        self.first: tuple[Tensor, Tensor, Tensor] | None = None
        self.zero = torch.zeros((), dtype=x0.dtype, device=dev)
        self.nstep = torch.zeros(systems, dtype=torch.long, device=dev)
        self.trace: list[Tensor] | None = [] if cfg.trace else None
        self.nfe = 0
        # Where the current iterate is the best one (see observe's fast paths), and any_active's answer, read
        # in observe's one host synchronisation.
        self.x_is_best = torch.zeros_like(self.active)
        self._any_active = True

    def observe(self, x: Tensor, fx: Tensor, stepped: bool) -> tuple[Tensor, Tensor]:
        """Record f(x) for all systems; return (x, g) with failed systems reset to their best iterate
        and g = f(x) - x zeroed wherever a system is frozen, so no NaN reaches the method's memory."""
        self.nfe += 1
        if stepped:
            self.nstep += self.active
        g = fx - x
        gnorm = torch.linalg.vector_norm(g, dim=1)
        fnorm = torch.linalg.vector_norm(fx, dim=1)
        abs_res, rel_res = residual_norms(gnorm, fnorm, g.shape[1], self.cfg.eps)
        res = rel_res if self.cfg.stop == "rel" else abs_res
        # Both are finite iff (a - a) + (b - b) is 0 (inf - inf and anything with NaN give NaN): 4 ops, not 9.
        finite = (rel_res - rel_res) + (abs_res - abs_res) == 0
        xnorm = torch.linalg.vector_norm(x, dim=1)
        if self.first is None:
            first = (gnorm, fnorm, torch.maximum(xnorm, fnorm).clamp_min(torch.finfo(x.dtype).tiny))
            if self.coupling != "independent":
                # A coupled system may start at zero and only move once the systems it depends on do: measure
                # it against the largest scale among all systems instead of its own.
                first = tuple(v.amax().expand_as(v) for v in first)
            g0, f0, scale0 = first
            self.first = (0.5 * g0, 2 * f0, self.growth * scale0)
        g_half, f_twice, limit = self.first
        diverging = finite & (xnorm > limit)
        accepted = finite & ~diverging
        was_active = self.active
        live = was_active & accepted
        better = live & (res < self.best_res) if self.coupling == "independent" else live
        self.best_res = torch.where(better, res, self.best_res)
        self.best_abs = torch.where(better, abs_res, self.best_abs)
        self.best_rel = torch.where(better, rel_res, self.best_rel)
        reached = res < self.cfg.tol
        if self.cfg.stop == "rel":
            # not small only because ||f(x)|| grew: where a norm is NaN, res is NaN and `reached` already False
            reached &= (gnorm < g_half) | (fnorm <= f_twice)
        converged = self.converged | (live & reached)
        self.nonfinite |= self.active & ~finite
        self.diverged |= self.active & diverging
        if self.coupling != "independent":
            failed = self.nonfinite | self.diverged
            converged &= settled_prefix(converged | failed, self.system_shape, self.coupling)
        self.converged = converged
        self.active = live & ~converged
        if self.trace is not None:
            self.trace.append(torch.where(accepted, res, self.best_res))
        # Three full-size selects are a third of the bookkeeping, and usually select everything: skip them when
        # the masks are uniform, read in one host synchronisation. A frozen system's iterate never moves (its
        # g is zero, so is its step), so where it was the best iterate when it froze (or was reset to it),
        # it still is, and x can become best_x without a copy; x is a fresh tensor after a step, never z0.
        x_is_best = better | (~was_active & self.x_is_best)
        n_accepted, n_best, n_active = torch.stack((accepted, x_is_best, self.active)).sum(dim=1).tolist()
        systems = accepted.shape[0]
        all_accepted, all_best, all_active = n_accepted == systems, n_best == systems, n_active == systems
        self._any_active = n_active > 0
        if stepped and all_accepted and all_best:
            self.best_x = x
        else:
            self.best_x = torch.where(better[:, None], x, self.best_x)
        if not all_accepted:
            x = torch.where(accepted[:, None], x, self.best_x)
            x_is_best = x_is_best | ~accepted
        self.x_is_best = x_is_best
        if not all_active:
            g = torch.where(self.active[:, None], g, self.zero)
        return x, g

    def any_active(self) -> bool:
        """Whether any system is still iterating, as of the last observation (read in its synchronisation)."""
        return self._any_active
