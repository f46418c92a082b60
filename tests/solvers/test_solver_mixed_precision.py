"""Solves and gradients under bf16 autocast and with bf16 iterates: the solver keeps its state in float32, so
Anderson and Broyden work (they failed with a dtype mismatch before) and agree with float32 to bf16's precision."""

import pytest
import torch

from bench.problems import tanh_map
from solvers import SolverConfig, fixed_point, jacobian_penalty, solve, spectral_radius
from solvers.solve import working_dtype

METHODS = ["broyden", "anderson", "picard"]


def _linear_map(seed: int = 0):
    """f(z) = tanh(z W^T + x W_in^T) with nn.Linear, whose output autocast makes bf16 on CPU."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Linear(16, 16, bias=False)
    w_in = torch.nn.Linear(16, 16)
    with torch.no_grad():
        w.weight.copy_(0.5 * torch.linalg.qr(torch.randn(16, 16, generator=gen))[0])
        w_in.weight.copy_(torch.randn(16, 16, generator=gen) / 4)
    x = torch.randn(3, 16, generator=gen)
    return (lambda z: torch.tanh(w(z) + w_in(x))), x, [w.weight, w_in.weight, w_in.bias]


def test_working_dtype_widens_only_16_bit_floats():
    assert working_dtype(torch.bfloat16) == working_dtype(torch.float16) == torch.float32
    assert working_dtype(torch.float32) == torch.float32 and working_dtype(torch.float64) == torch.float64


@pytest.mark.parametrize("method", METHODS)
def test_bf16_iterates_solve_in_float32_and_come_back_in_bf16(method):
    f, z0, _ = tanh_map(4, 12, 0.6, dtype=torch.float32, seed=1)
    ref, _ = solve(f, z0, SolverConfig(method=method, max_iter=100, tol=1e-6))

    def f16(z):
        assert z.dtype == torch.bfloat16  # f sees the caller's dtype
        return f(z.float()).bfloat16()

    z, stats = solve(f16, z0.bfloat16(), SolverConfig(method=method, max_iter=100, tol=2e-2))
    assert z.dtype == torch.bfloat16 and bool(stats.converged.all())
    assert (z.float() - ref).abs().max().item() < 5e-2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grad", ["implicit", "phantom:3"])
def test_autocast_gradients_match_float32_to_bf16_precision(method, grad):
    f, x, params = _linear_map()
    # f in bf16 leaves a relative residual of a few 1e-3 (its rounding), so tolerances below ~1e-2 are unreachable.
    cfg = SolverConfig(method=method, max_iter=60, tol=1e-2)

    def grads(autocast: bool) -> list[torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            z, stats = fixed_point(f, torch.zeros_like(x), cfg, cfg, grad=grad)
            loss = (z.float() ** 2).sum()
        assert bool(stats.converged.all())
        return torch.autograd.grad(loss, params)

    for exact, mixed in zip(grads(False), grads(True), strict=True):
        rel = (mixed - exact).norm() / exact.norm()
        assert rel.item() < 5e-2, rel  # bf16 keeps 8 mantissa bits: ~1e-2 relative error per product


def test_jacobian_penalty_and_spectral_radius_under_autocast():
    f, x, params = _linear_map()
    cfg = SolverConfig(method="anderson", max_iter=60, tol=1e-3)
    z, _ = solve(f, torch.zeros_like(x), cfg)
    z = z.requires_grad_()
    exact = jacobian_penalty(f(z), z, samples=64, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fz = f(z)
        assert fz.dtype == torch.bfloat16
        mixed = jacobian_penalty(fz, z, samples=64, generator=torch.Generator().manual_seed(0))
        rho = spectral_radius(f, z.detach(), iters=16)
    assert abs(mixed.item() - exact.item()) / exact.item() < 5e-2
    rho_exact = spectral_radius(f, z.detach(), iters=16)
    assert (rho.float() - rho_exact).abs().max().item() < 5e-2
    torch.autograd.grad(mixed, params[0])  # differentiable under autocast
