"""Type-II Anderson acceleration in difference form with a relative ridge."""

from __future__ import annotations

import torch
from torch import Tensor


class Anderson:
    """Keeps the last `memory` differences of iterates (dX) and residuals (dG) per system and mixes

        x+ = x + beta g - (dX + beta dG)^T gamma,   gamma = argmin ||g - dG^T gamma||^2 + lam ||gamma||^2

    with lam = ridge * mean diagonal of dG dG^T: scaled to the residuals, so the ridge neither
    dominates once residuals are tiny (an absolute ridge stalls there) nor vanishes early on.
    """

    def __init__(self, x0: Tensor, memory: int, beta: float, ridge: float | None) -> None:
        systems, size = x0.shape
        self.dX = x0.new_zeros(systems, memory, size)
        self.dG = x0.new_zeros(systems, memory, size)
        self.memory = memory
        self.beta = beta
        self.ridge = ridge if ridge is not None else 1e3 * torch.finfo(x0.dtype).eps
        self.count = 0

    def direction(self, g: Tensor) -> Tensor:
        """Anderson step from the current residual g."""
        step = self.beta * g
        if self.count == 0:
            return step
        filled = min(self.count, self.memory)
        gram = torch.bmm(self.dG, self.dG.transpose(1, 2)).double()  # (S, m, m)
        rhs = torch.bmm(g.unsqueeze(1), self.dG.mT).mT.double()  # (S, m, 1)
        diag = gram.diagonal(dim1=1, dim2=2)
        lam = self.ridge * diag.sum(dim=1) / filled + torch.finfo(torch.float64).tiny
        eye = torch.eye(self.memory, dtype=torch.float64, device=g.device)
        # Unfilled slots have zero rows: the ridge keeps the system regular and gives them gamma = 0.
        gamma = torch.linalg.solve(gram + lam[:, None, None] * eye, rhs)
        gamma = torch.nan_to_num(gamma, nan=0.0, posinf=0.0, neginf=0.0).to(g.dtype)
        mix = self.dX + self.beta * self.dG
        return step - torch.bmm(gamma.transpose(1, 2), mix).squeeze(1)

    def record(self, dx: Tensor, dg: Tensor, g_new: Tensor) -> None:
        """Push the newest differences into the ring buffer."""
        slot = self.count % self.memory
        self.dX[:, slot] = dx
        self.dG[:, slot] = dg
        self.count += 1
