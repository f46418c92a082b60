"""Limited-memory good Broyden: low-rank inverse-Jacobian updates in preallocated ring buffers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .registry import register_method

if TYPE_CHECKING:
    from .config import SolverConfig


class Broyden:
    """Inverse Jacobian estimate of g(x) = f(x) - x per system: B = -I + sum_i u_i v_i^T (rank <= memory).

    u_i and v_i live in preallocated (S, memory, N) buffers written in place, so memory never grows with
    the number of iterations. When they are full, policy "restart" (default) resets B to -I and refills;
    "ring" overwrites the oldest pair, which keeps more curvature but breaks the chain of Sherman-Morrison
    updates and, measured on attention cells, often stalls where a restart converges.
    The step is dx = -B g, so the first step is a plain fixed-point step. B g is carried from one
    iteration to the next (B dg = B g_new - B g), so an update costs two products with the buffers, not three.
    """

    def __init__(self, x0: Tensor, memory: int, policy: str = "restart", full_steps: bool = True) -> None:
        systems, size = x0.shape
        self.policy = policy
        self.full_steps = full_steps  # every recorded dx is the step returned by `direction` (no line search)
        self.U = x0.new_zeros(systems, memory, size)
        self.V = x0.new_zeros(systems, memory, size)
        self.memory = memory
        self.count = 0
        self.step: Tensor | None = None  # -B g for the latest residual

    def _filled(self) -> tuple[Tensor, Tensor]:
        n = min(self.count, self.memory)
        return self.U[:, :n], self.V[:, :n]

    @staticmethod
    def _apply(y: Tensor, left: Tensor, right: Tensor) -> Tensor:
        """-y + sum_i left_i (right_i . y); a (S,1,N) x (S,N,m) product is the fast layout on CPU and GPU."""
        coeff = torch.bmm(y.unsqueeze(1), right.mT)  # (S, 1, m)
        return torch.baddbmm(y.unsqueeze(1), coeff, left, beta=-1).squeeze(1)

    def direction(self, g: Tensor) -> Tensor:
        """Quasi-Newton step -B g for the residual g last passed to `record` (or the first residual)."""
        if self.step is None:
            self.step = g  # B = -I
        return self.step

    def record(self, dx: Tensor, dg: Tensor, g_new: Tensor) -> None:
        """Sherman-Morrison update so that B dg = dx (good Broyden), skipped where it is ill-posed."""
        if self.count == self.memory and self.policy == "restart":
            self.count = 0
            self.step = g_new
            return
        U, V = self._filled()
        Bg_new = self._apply(g_new, U, V)
        vt = self._apply(dx, V, U)  # dx^T B
        denom = torch.linalg.vecdot(vt, dg).unsqueeze(1)
        size = torch.linalg.vector_norm(vt, dim=1, keepdim=True) * torch.linalg.vector_norm(dg, dim=1, keepdim=True)
        # Where the update is ill-posed u is zero, which leaves B unchanged.
        scale = torch.where(denom.abs() > torch.finfo(dx.dtype).eps * size, 1.0 / denom, 0.0)
        vg = torch.linalg.vecdot(vt, g_new).unsqueeze(1)
        if self.full_steps:
            # dx = -B g_old, so dx - B dg = -B g_new, and the new step is parallel to B g_new.
            u = Bg_new * -scale
            step = Bg_new * (scale * vg - 1.0)
        else:
            u = (dx - Bg_new - self.step) * scale
            step = -torch.addcmul(Bg_new, u, vg)
        slot = self.count % self.memory
        if self.count >= self.memory:  # ring policy: the pair being overwritten leaves B
            step = torch.addcmul(step, self.U[:, slot], torch.linalg.vecdot(self.V[:, slot], g_new).unsqueeze(1))
        self.U[:, slot] = u
        self.V[:, slot] = vt
        self.count += 1
        self.step = step


def build(cfg: SolverConfig, x: Tensor) -> Broyden:
    """Broyden of rank cfg.window for the iterate x; with cfg.line_search its steps may be shortened."""
    return Broyden(x, cfg.window, cfg.memory_policy, full_steps=not cfg.line_search)


register_method("broyden", build, default_memory=30, line_search=True)
