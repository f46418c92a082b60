"""Run the peer library torchdeq's solvers behind deqseq's interface and statistics."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from .config import PEER_PREFIX, SolverConfig
from .stats import SolverStats, final_stats


def solve_with_peer(f: Callable[[Tensor], Tensor], z0: Tensor, cfg: SolverConfig,
                    batch_dims: int) -> tuple[Tensor, SolverStats]:
    """Solve with `torchdeq.solver.get_solver(name)` on the (systems, size) layout.

    torchdeq stops when the worst system reaches tol (no per-system freezing). Its `abs` residual is an
    unnormalised norm, so our tol is scaled by sqrt(size) to mean the same thing. The returned stats are
    measured by one extra evaluation of f at the returned z, which is not counted in nfe (nfe counts the
    peer's own evaluations only).
    """
    from torchdeq.solver import get_solver

    systems = math.prod(z0.shape[:batch_dims])
    size = z0.numel() // max(systems, 1)
    calls = 0

    def f_flat(x: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return f(x.reshape(z0.shape)).reshape(systems, size)

    tol = cfg.tol * math.sqrt(size) if cfg.stop == "abs" else cfg.tol
    peer = get_solver(cfg.method[len(PEER_PREFIX):])
    x, _, _ = peer(f_flat, z0.detach().reshape(systems, size), max_iter=cfg.max_iter, tol=tol,
                   stop_mode=cfg.stop, **cfg.peer_kwargs)
    x = x.reshape(systems, size)
    fx = f(x.reshape(z0.shape)).reshape(systems, size)
    return x.reshape(z0.shape), final_stats(cfg.method, calls, calls - 1, x, fx, cfg.tol, cfg.stop, cfg.eps,
                                            z0.shape[:batch_dims])
