"""What a solve reports: per-system residuals, steps and convergence, never hidden."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def residual_norms(gnorm: Tensor, fnorm: Tensor, size: int, eps: float) -> tuple[Tensor, Tensor]:
    """(abs, rel) residuals from the norms ||g|| and ||f(x)|| of systems of `size` values:
    abs = ||g|| / sqrt(size), rel = ||g|| / (||f(x)|| + eps)."""
    return gnorm / math.sqrt(size), gnorm / (fnorm + eps)


def residuals(g: Tensor, fx: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-system (abs, rel) residuals of g = f(x) - x laid out as (S, N) (see residual_norms)."""
    return residual_norms(torch.linalg.vector_norm(g, dim=1), torch.linalg.vector_norm(fx, dim=1), g.shape[1], eps)


@dataclass
class SolverStats:
    """Statistics of one solve. Per-system tensors have the shape of the system dims (z.shape[:batch_dims]).

    nfe:          evaluations of f (all systems are evaluated together, so one call counts once).
    nstep:        iterations each system took before it froze (converged, failed, or max_iter).
    abs_residual: ||f(z)-z|| / sqrt(system size) at the returned z.
    rel_residual: ||f(z)-z|| / (||f(z)|| + eps) at the returned z.
    converged:    residual (in the configured stop mode) below tol.
    nonfinite:    f returned a non-finite value for this system at some iterate (it kept its best finite one).
    diverged:     the system's iterate grew past 1/sqrt(eps) times its starting scale (a failure, like nonfinite);
                  None where the solver cannot tell (a peer's solve or unrolled iterations).
    trace:        (iterations+1, *system dims) residual in the stop mode, when the config asked for it.
    aux:          a fused solve's PureF auxiliary outputs at each system's returned iterate (None otherwise).
    backward:     the adjoint solve's stats, filled in when an implicit backward pass has run.
    """

    method: str
    nfe: int
    nstep: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    nonfinite: Tensor
    diverged: Tensor | None = None
    trace: Tensor | None = None
    backward: SolverStats | None = None
    aux: tuple[Tensor, ...] | None = None

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Scalar means and maxima for logging (one host sync)."""
        rel = self.rel_residual.detach().float()
        values = torch.stack([
            self.nstep.float().mean(), self.nstep.float().max(),
            rel.mean(), rel.max(), self.abs_residual.detach().float().max(),
            1.0 - self.converged.float().mean(), self.nonfinite.float().mean(),
        ]).tolist()
        names = ["nstep_mean", "nstep_max", "rel_mean", "rel_max", "abs_max", "not_converged", "nonfinite"]
        out = {prefix + name: value for name, value in zip(names, values, strict=True)}
        if self.diverged is not None:
            out[prefix + "diverged"] = float(self.diverged.float().mean())
        out[prefix + "nfe"] = float(self.nfe)
        if self.backward is not None:
            out.update(self.backward.summary(prefix + "bwd_"))
        return out


def final_stats(method: str, nfe: int, nstep: int, x: Tensor, fx: Tensor, tol: float, stop: str, eps: float,
                system_shape: torch.Size) -> SolverStats:
    """Stats of a solve known only by its final iterate x and f(x), both (S, N), and a common step count."""
    abs_res, rel_res = residuals(fx - x, fx, eps)
    res = rel_res if stop == "rel" else abs_res
    return SolverStats(
        method=method, nfe=nfe, nstep=torch.full(system_shape, nstep, dtype=torch.long, device=x.device),
        abs_residual=abs_res.reshape(system_shape), rel_residual=rel_res.reshape(system_shape),
        converged=(res < tol).reshape(system_shape), nonfinite=(~torch.isfinite(res)).reshape(system_shape),
    )
