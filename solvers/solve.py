"""`solve`: batched fixed-point solve of z = f(z) without autograd, one host sync per iteration."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .config import COUPLINGS, SolverConfig
from .fused import PureF, fused_solve
from .monitor import Monitor
from .peer import solve_with_peer
from .registry import build_method
from .stats import SolverStats

Fn = Callable[[Tensor], Tensor]


def system_layout(shape: torch.Size, batch_dims: int) -> tuple[int, int]:
    """(number of systems, size of one system) for a tensor whose first `batch_dims` dims index systems."""
    if not 0 <= batch_dims <= len(shape):
        raise ValueError(f"batch_dims={batch_dims} must be in [0, {len(shape)}] for a tensor of shape {tuple(shape)}")
    return math.prod(shape[:batch_dims]), math.prod(shape[batch_dims:])


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a solver keeps its state in: float32 for 16-bit floats (whose 8 or 11 mantissa bits cannot
    carry residuals, Gram matrices or Broyden updates), else the given dtype."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _line_search(f: Fn, x: Tensor, g: Tensor, dx: Tensor, x_new: Tensor, fx_new: Tensor,
                 mon: Monitor) -> tuple[Tensor, Tensor]:
    """Where the full step raised ||g||^2, retry at the minimiser of the quadratic through
    phi(0), phi'(0) = -2 phi(0) (exact for a Newton direction) and phi(1), clamped to [0.1, 0.5]."""
    phi0 = g.pow(2).sum(dim=1)
    phi1 = torch.nan_to_num((fx_new - x_new).pow(2).sum(dim=1), nan=math.inf)
    retry = mon.active & (phi1 > phi0)
    if not bool(retry.any()):
        return x_new, fx_new
    alpha = (phi0 / (phi0 + phi1)).clamp(0.1, 0.5)
    x_try = torch.where(retry[:, None], x + alpha[:, None] * dx, x_new)
    mon.nfe += 1  # the rejected full-step evaluation
    return x_try, f(x_try)


def _stats(mon: Monitor, cfg: SolverConfig, system_shape: torch.Size) -> SolverStats:
    trace = torch.stack(mon.trace).reshape(-1, *system_shape) if mon.trace is not None else None
    return SolverStats(
        method=cfg.method, nfe=mon.nfe, nstep=mon.nstep.reshape(system_shape),
        abs_residual=mon.best_abs.reshape(system_shape), rel_residual=mon.best_rel.reshape(system_shape),
        converged=mon.converged.reshape(system_shape), nonfinite=mon.nonfinite.reshape(system_shape),
        diverged=mon.diverged.reshape(system_shape),
        trace=trace,
    )


@torch.no_grad()
def solve(f: Fn, z0: Tensor, cfg: SolverConfig, batch_dims: int = 1,
          coupling: str = "independent", pure: PureF | None = None) -> tuple[Tensor, SolverStats]:
    """Find z = f(z) from z0, without autograd.

    The first `batch_dims` dims of z0 index systems: norms, stopping, freezing, Broyden updates and
    Anderson mixing are per system, and no Python loop runs over systems. `coupling` says how the
    systems depend on each other along the last system dim ("independent", "causal" for f that is
    causal along it, "anticausal", "full"), which decides when a converged system may freeze.
    Returns the best (independent) or last (coupled) finite iterate of every system and its stats.
    pure: the same f as a `PureF`, which a fused solve (cfg.fused) traces into its compiled iterations; other
    solves ignore it and call f.

    Mixed precision: the solver's state (iterates, residuals, method memory) is float32 when z0 is a 16-bit
    float, f is called with z0's dtype, and f's output (bf16 under autocast) is read in the state's dtype; the
    result has z0's dtype.
    """
    systems, size = system_layout(z0.shape, batch_dims)
    system_shape = z0.shape[:batch_dims]
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling={coupling!r} is unknown; allowed: {', '.join(COUPLINGS)}")
    if cfg.is_peer:
        return solve_with_peer(f, z0, cfg, batch_dims)

    work = working_dtype(z0.dtype)

    def f_flat(x: Tensor) -> Tensor:
        return f(x.view(z0.shape).to(z0.dtype)).reshape(systems, size).to(work)

    x = z0.detach().reshape(systems, size).to(work)
    if cfg.fused:
        x, stats = fused_solve(f_flat, x, cfg, system_shape, coupling, pure, z0.shape, z0.dtype)
        return x.view(z0.shape).to(z0.dtype), stats
    mon = Monitor(x, cfg, system_shape, coupling)
    x, g = mon.observe(x, f_flat(x), stepped=False)
    method, entry = build_method(cfg, x)
    line_search = cfg.line_search and entry.line_search
    for _ in range(cfg.max_iter):
        if not mon.any_active():
            break
        dx = method.direction(g)  # zero for frozen systems, whose g the monitor zeroed
        x_new = x + dx
        fx_new = f_flat(x_new)
        if line_search:
            x_new, fx_new = _line_search(f_flat, x, g, dx, x_new, fx_new, mon)
            dx = x_new - x  # the step taken: a retried system moved alpha * dx, and its secant pair must say so
        x_new, g_new = mon.observe(x_new, fx_new, stepped=True)
        method.record(dx, g_new - g, g_new)  # a failed system's reset is not a step: it is frozen anyway
        x, g = x_new, g_new
    return mon.best_x.view(z0.shape).to(z0.dtype), _stats(mon, cfg, system_shape)
