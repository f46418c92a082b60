"""`fixed_point`: a solve that autograd can differentiate (implicit, phantom or unrolled gradients)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import REVERSED_COUPLING, SolverConfig
from .fused import PureF
from .solve import solve, system_layout
from .stats import SolverStats, final_stats

Fn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class GradMode:
    """A parsed `grad` string: "implicit", "phantom:K[:tau]" or "unrolled:K"."""

    kind: str
    steps: int = 0
    tau: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> GradMode:
        """Parse and validate a gradient spec, raising ValueError naming the allowed forms."""
        allowed = 'allowed: "implicit", "phantom:K", "phantom:K:tau" (0 < tau <= 1), "unrolled:K" (K >= 1)'
        parts = spec.split(":") if isinstance(spec, str) else []
        try:
            if parts == ["implicit"]:
                return cls("implicit")
            if len(parts) in (2, 3) and parts[0] == "phantom":
                tau = float(parts[2]) if len(parts) == 3 else 1.0
                mode = cls("phantom", int(parts[1]), tau)
            elif len(parts) == 2 and parts[0] == "unrolled":
                mode = cls("unrolled", int(parts[1]))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"grad={spec!r} is not a gradient mode; {allowed}") from None
        if mode.steps < 1 or not 0 < mode.tau <= 1:
            raise ValueError(f"grad={spec!r} is out of range; {allowed}")
        return mode


class _ImplicitGrad(torch.autograd.Function):
    """Identity on f(z*) in the forward pass; in the backward pass turns dL/dz* into the solution g of
    g = J^T g + dL/dz* (J = df/dz at z*), which autograd then carries through f(z*) to every parameter
    and captured tensor. No hooks: each call owns its node, so calls nest and interleave freely."""

    @staticmethod
    def forward(ctx, fz: Tensor, holder: _Adjoint) -> Tensor:  # type: ignore[override]
        ctx.holder = holder
        ctx.save_for_backward(fz)
        return fz.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (fz,) = ctx.saved_tensors
        return ctx.holder.solve(fz, grad), None


@dataclass
class _Adjoint:
    """What the backward pass needs besides f(z*): the graph input z* and how to solve."""

    z: Tensor
    cfg: SolverConfig
    batch_dims: int
    coupling: str
    stats: SolverStats

    def solve(self, fz: Tensor, grad: Tensor) -> Tensor:
        def adjoint(g: Tensor) -> Tensor:
            with torch.enable_grad():
                (vjp,) = torch.autograd.grad(fz, self.z, g, retain_graph=True)
            return vjp + grad

        # The adjoint runs through J^T, so a causal forward coupling is anticausal here.
        g, self.stats.backward = solve(adjoint, grad, self.cfg, self.batch_dims, REVERSED_COUPLING[self.coupling])
        return g


def _unrolled(f: Fn, z0: Tensor, steps: int, cfg: SolverConfig, batch_dims: int) -> tuple[Tensor, SolverStats]:
    """Plain backprop through `steps` applications of f from z0; residual measured at the last step."""
    z_prev = z = z0
    for _ in range(steps):
        z_prev, z = z, f(z)
    systems, size = system_layout(z.shape, batch_dims)
    with torch.no_grad():
        stats = final_stats(f"unrolled:{steps}", steps, steps, z_prev.reshape(systems, size), z.reshape(systems, size),
                            cfg.tol, cfg.stop, cfg.eps, z.shape[:batch_dims])
    return z, stats


def fixed_point(f: Fn, z0: Tensor, forward: SolverConfig, backward: SolverConfig | None = None,
                grad: str = "implicit", batch_dims: int = 1,
                coupling: str = "independent", pure: PureF | None = None) -> tuple[Tensor, SolverStats]:
    """Solve z* = f(z*) and return it attached to autograd.

    grad="implicit": z* is found without a graph; the returned tensor is f(z*), whose backward solves the
    adjoint fixed point with `backward` (default: `forward`), so memory does not grow with iterations.
    grad="phantom:K[:tau]": K damped steps z <- (1-tau) z + tau f(z) from z* with a graph.
    grad="unrolled:K": K plain applications of f from z0 with a graph, no solve (explicit weight-tied net).
    coupling: how systems depend on each other (see `solve`); the adjoint solve uses the transpose.
    pure: f as a `PureF` for a fused forward solve (see `solve`).
    """
    mode = GradMode.parse(grad)
    if mode.kind == "unrolled":
        return _unrolled(f, z0, mode.steps, forward, batch_dims)
    z_star, stats = solve(f, z0, forward, batch_dims, coupling, pure)
    if not torch.is_grad_enabled():
        return z_star, stats
    if mode.kind == "phantom":
        z = z_star
        for _ in range(mode.steps):
            z = (1 - mode.tau) * z + mode.tau * f(z) if mode.tau < 1 else f(z)
        stats.nfe += mode.steps
        return z, stats
    z_leaf = z_star.detach().requires_grad_()
    fz = f(z_leaf)
    stats.nfe += 1
    if not fz.requires_grad:  # f depends on nothing that needs a gradient
        return fz, stats
    holder = _Adjoint(z_leaf, backward or forward, batch_dims, coupling, stats)
    return _ImplicitGrad.apply(fz, holder), stats
