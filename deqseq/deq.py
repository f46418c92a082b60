"""The DEQ layer: prepare the cell's context once, solve z* = f(z*), differentiate through z*, freeze history."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils import parametrize

import solvers
from solvers import GradMode, SolverConfig

from .cells import Cell, History
from .checks import check_choice, check_int, check_number


def default_forward_solver() -> SolverConfig:
    """Broyden, 30 iterations, relative residual 1e-4."""
    return SolverConfig(method="broyden", max_iter=30, tol=1e-4, stop="rel")


def default_backward_solver() -> SolverConfig:
    """Broyden, 30 iterations, relative residual 1e-5 (the adjoint solve of the implicit gradient)."""
    return SolverConfig(method="broyden", max_iter=30, tol=1e-5, stop="rel")


@dataclass
class SolverSettings:
    """How the DEQ layer finds its equilibrium and differentiates through it.

    forward, backward: solver configs of the equilibrium and of the adjoint (implicit gradient) solve.
    grad:        "implicit" | "phantom:K[:tau]" | "unrolled:K" (K weight-tied layers, no solve: pretraining).
    batch_dims:  1 = one system per sequence, 2 = one system per position (an exactly causal solve).
    jac_weight:  weight of the Jacobian penalty in the training loss (0 = off).
    jac_prob:    probability that a training step computes the penalty at all.

    A warm start is the z0 argument of DEQLayer.forward (generation's warm_start passes the previous position's
    equilibrium); the layer keeps no hidden state between calls.
    """

    forward: SolverConfig = field(default_factory=default_forward_solver)
    backward: SolverConfig = field(default_factory=default_backward_solver)
    grad: str = "implicit"
    batch_dims: int = 1
    jac_weight: float = 0.0
    jac_prob: float = 1.0

    def __post_init__(self) -> None:
        owner = "SolverSettings"
        for name in ("forward", "backward"):
            if not isinstance(getattr(self, name), SolverConfig):
                raise ValueError(f"{owner}.{name} must be a solvers.SolverConfig, got {type(getattr(self, name))}")
        try:
            GradMode.parse(self.grad)
        except ValueError as err:
            raise ValueError(f"{owner}.{err}") from None
        check_int(owner, "batch_dims", self.batch_dims, 1)
        check_choice(owner, "batch_dims", self.batch_dims, (1, 2))
        check_number(owner, "jac_weight", self.jac_weight, low=0)
        check_number(owner, "jac_prob", self.jac_prob, low=0, high=1)


@dataclass
class DEQOutput:
    """Result of one DEQ forward.

    z:           equilibrium (B, T, state_dim), attached to autograd as settings.grad says.
    history:     the input history extended by these T frozen positions, detached (no gradient flows through
                 history, as with Transformer-XL memory).
    stats:       forward solver stats; stats.backward is filled in once an implicit backward pass has run.
    jac_penalty: Hutchinson estimate of ||df/dz||_F^2 / numel at z*, when asked for, else None.
    """

    z: Tensor
    history: History
    stats: solvers.SolverStats
    jac_penalty: Tensor | None = None


def _parametrized_tensors(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """(submodule, tensor name) of every parametrized tensor (e.g. weight norm) inside module."""
    return [
        (m, name)
        for m in module.modules()
        if parametrize.is_parametrized(m)
        for name in m.parametrizations
    ]


class DEQLayer(nn.Module):
    """One weight-tied cell run to its fixed point: z* = cell(z*, ctx), with ctx = cell.prepare(x, history)."""

    def __init__(self, cell: Cell, settings: SolverSettings | None = None):
        super().__init__()
        self.cell = cell
        self.settings = settings if settings is not None else SolverSettings()

    def forward(
        self,
        x_emb: Tensor,
        history: History | None = None,
        z0: Tensor | None = None,
        attn_mask: Tensor | None = None,
        jacobian: bool = False,
        window: int | None = None,
        solver: SolverConfig | None = None,
    ) -> DEQOutput:
        """Solve for the equilibrium of the T positions of x_emb (B, T, E) after the frozen `history`.

        z0 is the initial guess (a warm start; zeros when None).
        jacobian=True also returns the Jacobian penalty at z*, differentiable w.r.t. the parameters.
        window: the attention window of this solve for cells that have one (None = the cell's own).
        solver: the forward solver of this call (None = settings.forward), e.g. generation's fused one.
        """
        s = self.settings
        params = _parametrized_tensors(self.cell)
        # With weight norm, compute each normalised weight once per forward instead of once per iteration.
        with parametrize.cached() if params else contextlib.nullcontext():
            for module, name in params:
                # Fill the cache now, in the caller's grad mode: a first use inside the no-grad solve would
                # cache a weight without a graph, and no gradient would reach the weight-norm parameters.
                getattr(module, name)
            ctx = self.cell.prepare(x_emb, history, attn_mask, window)
            z0 = self._initial_guess(x_emb, z0)

            def f(z: Tensor) -> Tensor:
                return self.cell(z, ctx)

            # Per-position systems of a causal cell depend on earlier positions; a custom mask may couple any.
            # A single position (one system per sequence, as in generation) has nothing to wait for.
            single = s.batch_dims == 1 or x_emb.shape[1] == 1
            coupling = "independent" if single else ("causal" if attn_mask is None else "full")
            forward = solver if solver is not None else s.forward
            pure = self.cell.pure_f(ctx) if forward.fused else None  # f compiled with the fused iterations
            z, stats = solvers.fixed_point(f, z0, forward, s.backward, s.grad, s.batch_dims, coupling, pure)
            ctx.solved = stats.aux  # what a fused solve of the cell's PureF kept at z* (its keys and values)
            penalty = self._jacobian_penalty(f, z) if jacobian else None
            with torch.no_grad():
                new_history = self.cell.extend_history(ctx, z.detach()).detach()
        return DEQOutput(z=z, history=new_history, stats=stats, jac_penalty=penalty)

    def _initial_guess(self, x_emb: Tensor, z0: Tensor | None) -> Tensor:
        """z0 when given (checked against the state's shape), else zeros."""
        B, T, _ = x_emb.shape
        shape = (B, T, self.cell.state_dim)
        if z0 is not None:
            if tuple(z0.shape) != shape:
                raise ValueError(f"z0 must have shape {shape}, got {tuple(z0.shape)}")
            return z0
        return x_emb.new_zeros(shape)

    @staticmethod
    def _jacobian_penalty(f, z: Tensor) -> Tensor:
        """Hutchinson estimate of ||df/dz||_F^2 / numel at z (detached when autograd is off)."""
        grad_on = torch.is_grad_enabled()
        # The penalty is differentiated twice; the fused CPU attention kernels have no double backward.
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            z_leaf = z.detach().requires_grad_()
            penalty = solvers.jacobian_penalty(f(z_leaf), z_leaf)
        return penalty if grad_on else penalty.detach()
