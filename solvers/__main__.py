"""`python -m solvers`: a one-minute demo that solves the same fixed point with every method."""

from __future__ import annotations

import time

import torch

from . import SolverConfig, fixed_point, solve


def main() -> None:
    """Solve z = tanh(W z + x) for 16 systems of 512 values with each method and print a table."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 512, 512, generator=gen))
    W, x = 0.95 * q, torch.randn(16, 512, generator=gen)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + x)

    print(f"{'method':<20}{'nfe':>6}{'max rel residual':>18}{'converged':>11}{'ms':>8}")
    for method in ("picard", "anderson", "broyden", "torchdeq:anderson", "torchdeq:broyden"):
        start = time.perf_counter()
        _, stats = solve(f, torch.zeros(16, 512), SolverConfig(method=method, max_iter=100, tol=1e-6))
        ms = 1e3 * (time.perf_counter() - start)
        print(f"{method:<20}{stats.nfe:>6}{float(stats.rel_residual.max()):>18.2e}"
              f"{int(stats.converged.sum()):>8}/16{ms:>8.1f}")
    x.requires_grad_()
    z, stats = fixed_point(f, torch.zeros(16, 512), SolverConfig(tol=1e-6), grad="implicit")
    z.sum().backward()
    back = stats.backward
    print(f"implicit gradient: |dL/dx| = {float(x.grad.norm()):.4f}, backward solve nfe = {back.nfe}, "
          f"max rel residual = {float(back.rel_residual.max()):.1e}")


if __name__ == "__main__":
    main()
