"""Run the peer library torchdeq's solvers behind deqseq's interface and statistics."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .config import PEER_PREFIX, SolverConfig
from .stats import SolverStats


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
    gnorm = torch.linalg.vector_norm(fx - x, dim=1)
    abs_res = gnorm / math.sqrt(size)
    rel_res = gnorm / (torch.linalg.vector_norm(fx, dim=1) + cfg.eps)
    res = rel_res if cfg.stop == "rel" else abs_res
    shape = z0.shape[:batch_dims]
    return x.reshape(z0.shape), SolverStats(
        method=cfg.method, nfe=calls, nstep=torch.full(shape, calls - 1, dtype=torch.long, device=z0.device),
        abs_residual=abs_res.reshape(shape), rel_residual=rel_res.reshape(shape),
        converged=(res < cfg.tol).reshape(shape), nonfinite=(~torch.isfinite(res)).reshape(shape),
    )
