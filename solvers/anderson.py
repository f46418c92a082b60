"""Type-II Anderson acceleration in difference form with a relative ridge."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .registry import register_method

if TYPE_CHECKING:
    from .config import SolverConfig


class Anderson:
    """Keeps the last `memory` differences of residuals (dG) and of iterates plus beta times residuals
    (dM = dX + beta dG) per system and mixes

        x+ = x + beta g - dM^T gamma,   gamma = argmin ||g - dG^T gamma||^2 + lam ||gamma||^2

    with lam = ridge * mean diagonal of dG dG^T: scaled to the residuals, so the ridge neither
    dominates once residuals are tiny (an absolute ridge stalls there) nor vanishes early on. Storing dM
    instead of dX makes the mixing one pass over one buffer.
    """

    def __init__(self, x0: Tensor, memory: int, beta: float, ridge: float | None) -> None:
        systems, size = x0.shape
        self.dM = x0.new_zeros(systems, memory, size)
        self.dG = x0.new_zeros(systems, memory, size)
        self.gram = torch.zeros(systems, memory, memory, dtype=torch.float64, device=x0.device)  # dG dG^T
        self.eye = torch.eye(memory, dtype=torch.float64, device=x0.device)
        self.memory = memory
        self.beta = beta
        self.ridge = ridge if ridge is not None else 1e3 * torch.finfo(x0.dtype).eps
        self.count = 0
        self.tiny = torch.finfo(torch.float64).tiny

    def direction(self, g: Tensor) -> Tensor:
        """Anderson step from the current residual g."""
        step = g if self.beta == 1.0 else self.beta * g
        if self.count == 0:
            return step
        filled = min(self.count, self.memory)
        rhs = torch.bmm(self.dG, g.unsqueeze(2)) if g.is_cuda else torch.bmm(g.unsqueeze(1), self.dG.mT).mT
        lam = self.gram.diagonal(dim1=1, dim2=2).sum(dim=1).mul_(self.ridge / filled).add_(self.tiny)
        # Unfilled slots have zero rows: the ridge keeps the system regular and gives them gamma = 0. solve_ex
        # skips solve's check of the factorisation (a host sync); a singular system's NaNs are zeroed below.
        gamma = torch.linalg.solve_ex(torch.addcmul(self.gram, lam[:, None, None], self.eye), rhs.double())[0]
        gamma = torch.nan_to_num(gamma, nan=0.0, posinf=0.0, neginf=0.0).to(g.dtype).mT  # (S, 1, m)
        return torch.baddbmm(step.unsqueeze(1), gamma, self.dM, alpha=-1.0).squeeze(1)

    def record(self, dx: Tensor, dg: Tensor, g_new: Tensor) -> None:
        """Push the newest differences into the ring buffer and update one row/column of the Gram matrix."""
        slot = self.count % self.memory
        if self.beta == 1.0:
            torch.add(dx, dg, out=self.dM[:, slot])
        else:
            torch.add(dx, dg, alpha=self.beta, out=self.dM[:, slot])
        self.dG[:, slot] = dg
        row = torch.bmm(dg.unsqueeze(1), self.dG.mT).squeeze(1).double()  # (S, m)
        self.gram[:, slot, :] = row
        self.gram[:, :, slot] = row
        self.count += 1


def build(cfg: SolverConfig, x: Tensor) -> Anderson:
    """Anderson with window cfg.window, mixing cfg.damping and ridge cfg.ridge for the iterate x."""
    return Anderson(x, cfg.window, cfg.damping, cfg.ridge)


register_method("anderson", build, default_memory=6)
