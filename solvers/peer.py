"""Run the peer library torchdeq's solvers behind deqseq's interface and statistics."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .config import SolverConfig
from .registry import PEER_PREFIX
from .stats import SolverStats, final_stats, residuals


def solve_with_peer(f: Callable[[Tensor], Tensor], z0: Tensor, cfg: SolverConfig,
                    batch_dims: int) -> tuple[Tensor, SolverStats]:
    """Solve with `torchdeq.solver.get_solver(name)` on the (systems, size) layout.

    torchdeq stops when the worst system reaches tol (no per-system freezing). Its `abs` residual is an
    unnormalised norm, so our tol is scaled by sqrt(size) to mean the same thing. The returned stats are
    measured by one extra evaluation of f at the returned z, which is not counted in nfe (nfe counts the
    peer's own evaluations only). As with the native solvers, a system the peer leaves non-finite gets the
    best finite iterate f was evaluated at (and is reported as nonfinite), never NaN.
    """
    from torchdeq.solver import get_solver

    systems = math.prod(z0.shape[:batch_dims])
    size = z0.numel() // max(systems, 1)
    calls = 0
    best_x = z0.detach().reshape(systems, size).clone()
    best_res = torch.full((systems,), math.inf, dtype=z0.dtype, device=z0.device)

    def f_flat(x: Tensor, tau: float = 1.0) -> Tensor:
        # torchdeq's simple_fixed_point_iter asks the function itself for the damped step tau f(x) + (1-tau) x.
        nonlocal calls, best_x, best_res
        calls += 1
        fx = f(x.reshape(z0.shape)).reshape(systems, size)
        abs_res, rel_res = residuals(fx - x, fx, cfg.eps)
        res = rel_res if cfg.stop == "rel" else abs_res
        better = torch.isfinite(res) & (res < best_res)
        best_x = torch.where(better[:, None], x, best_x)
        best_res = torch.where(better, res, best_res)
        return fx if tau == 1.0 else tau * fx + (1 - tau) * x

    tol = cfg.tol * math.sqrt(size) if cfg.stop == "abs" else cfg.tol
    peer = get_solver(cfg.method[len(PEER_PREFIX):])
    x, _, _ = peer(f_flat, z0.detach().reshape(systems, size), max_iter=cfg.max_iter, tol=tol,
                   stop_mode=cfg.stop, **cfg.peer_kwargs)
    x = x.reshape(systems, size)
    fx = f(x.reshape(z0.shape)).reshape(systems, size)
    failed = ~(torch.isfinite(x).all(dim=1) & torch.isfinite(fx).all(dim=1))
    if bool(failed.any()):
        x = torch.where(failed[:, None], best_x, x)
        fx = torch.where(failed[:, None], f(x.reshape(z0.shape)).reshape(systems, size), fx)
    stats = final_stats(cfg.method, calls, calls - 1, x, fx, cfg.tol, cfg.stop, cfg.eps, z0.shape[:batch_dims])
    stats.nonfinite |= failed.reshape(stats.nonfinite.shape)
    stats.converged &= ~stats.nonfinite
    return x.reshape(z0.shape), stats
