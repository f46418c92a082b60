"""What a solve reports: per-system residuals, steps and convergence, never hidden."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SolverStats:
    """Statistics of one solve. Per-system tensors have the shape of the system dims (z.shape[:batch_dims]).

    nfe:          evaluations of f (all systems are evaluated together, so one call counts once).
    nstep:        iterations each system took before it froze (converged, failed, or max_iter).
    abs_residual: ||f(z)-z|| / sqrt(system size) at the returned z.
    rel_residual: ||f(z)-z|| / (||f(z)|| + eps) at the returned z.
    converged:    residual (in the configured stop mode) below tol.
    nonfinite:    f returned a non-finite value for this system at some iterate (it kept its best finite one).
    trace:        (iterations+1, *system dims) residual in the stop mode, when the config asked for it.
    backward:     the adjoint solve's stats, filled in when an implicit backward pass has run.
    """

    method: str
    nfe: int
    nstep: Tensor
    abs_residual: Tensor
    rel_residual: Tensor
    converged: Tensor
    nonfinite: Tensor
    trace: Tensor | None = None
    backward: SolverStats | None = None

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
        out[prefix + "nfe"] = float(self.nfe)
        if self.backward is not None:
            out.update(self.backward.summary(prefix + "bwd_"))
        return out
