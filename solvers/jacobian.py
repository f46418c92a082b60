"""Jacobian regularisation and spectral-radius estimates at a point."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .solve import system_layout

RITZ_RTOL = 5e-2  # a Ritz value counts once its residual is below this fraction of its modulus


def jacobian_penalty(f_z: Tensor, z: Tensor, samples: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Hutchinson estimate of ||df/dz||_F^2 / z.numel(), differentiable (for training).

    f_z must be f(z) computed with a graph from z (z.requires_grad). E[||v^T J||^2] = ||J||_F^2 for v ~ N(0, I).
    """
    if samples < 1:
        raise ValueError(f"samples={samples} must be >= 1")
    total = f_z.new_zeros(())
    for _ in range(samples):
        v = torch.randn(f_z.shape, generator=generator, dtype=f_z.dtype, device=f_z.device)
        (vjp,) = torch.autograd.grad(f_z, z, v, retain_graph=True, create_graph=True)
        total = total + vjp.pow(2).sum()
    return total / (samples * z.numel())


@torch.no_grad()
def spectral_radius(f: Callable[[Tensor], Tensor], z: Tensor, iters: int = 20, batch_dims: int = 1,
                    generator: torch.Generator | None = None) -> Tensor:
    """Estimate of the spectral radius of df/dz at z, per system (shape z.shape[:batch_dims]).

    Arnoldi iteration on J^T, which has the same eigenvalues as J, with vector-Jacobian products (plain
    reverse mode, which every op supports): the eigenvalues of the Hessenberg matrix (Ritz values)
    approximate the extreme eigenvalues, complex pairs included, so the estimate is right for non-normal
    Jacobians, where a Rayleigh quotient is not. Only Ritz values whose Ritz residual is below RITZ_RTOL of
    their modulus count (unconverged ones of a non-normal matrix can exceed the spectral radius many
    times); if none qualifies, all count. With iters >= system size it is exact up to rounding; with
    fewer, a clustered dominant spectrum is approximated from below.
    """
    systems, size = system_layout(z.shape, batch_dims)
    iters = min(iters, size)
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        f_z = f(z)

    def vjp(v: Tensor) -> Tensor:
        (out,) = torch.autograd.grad(f_z, z, v.view(z.shape), retain_graph=True)
        return out.reshape(systems, size)

    basis = z.new_zeros(systems, iters + 1, size)
    hess = z.new_zeros(systems, iters + 1, iters)
    v = torch.randn(systems, size, generator=generator, dtype=z.dtype, device=z.device)
    basis[:, 0] = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
    tiny = torch.finfo(z.dtype).tiny
    for j in range(iters):
        w = vjp(basis[:, j])
        for _ in range(2):  # Gram-Schmidt twice keeps the basis orthogonal in finite precision
            coeff = torch.bmm(basis[:, : j + 1], w.unsqueeze(2)).squeeze(2)
            hess[:, : j + 1, j] += coeff
            w = w - torch.bmm(coeff.unsqueeze(1), basis[:, : j + 1]).squeeze(1)
        norm = torch.linalg.vector_norm(w, dim=1)
        hess[:, j + 1, j] = norm
        # After a breakdown (invariant subspace found) the next vector is zero and adds only zero Ritz values.
        basis[:, j + 1] = w / norm.clamp_min(tiny)[:, None] * (norm > tiny * 1e3)[:, None]
    # Ritz values of a non-normal matrix can lie anywhere in its numerical range, far outside the
    # spectrum, until they converge: keep those whose Ritz residual |h_{k+1,k}| |y_k| is small.
    ritz, vectors = torch.linalg.eig(hess[:, :iters, :iters])
    residual = hess[:, iters, iters - 1, None].abs() * vectors[:, iters - 1, :].abs()
    modulus = ritz.abs()
    converged = residual <= RITZ_RTOL * modulus
    trusted = torch.where(converged, modulus, torch.zeros_like(modulus)).amax(dim=1)
    return torch.where(converged.any(dim=1), trusted, modulus.amax(dim=1)).reshape(z.shape[:batch_dims])
