"""Forward solves: agreement with scipy, per-system freezing, failure handling, causality."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from bench.problems import attention_problem, tanh_map
from solvers import SolverConfig, solve

METHODS = ["broyden", "anderson", "picard"]


def scipy_fixed_point(f, z0: torch.Tensor) -> torch.Tensor:
    """Reference solution of z = f(z) for each system (row) with scipy's hybrid Powell root finder."""
    rows = []
    torch.set_grad_enabled(False)
    for s in range(z0.shape[0]):
        def residual(v, s=s):
            z = z0.clone()
            z[s] = torch.from_numpy(v).reshape(z0.shape[1:])
            return (f(z)[s] - z[s]).numpy().ravel()
        sol = scipy.optimize.root(residual, np.zeros(z0.shape[1:]).ravel(), method="hybr", tol=1e-13)
        assert np.abs(residual(sol.x)).max() < 1e-12, sol.message
        rows.append(torch.from_numpy(sol.x).reshape(z0.shape[1:]))
    torch.set_grad_enabled(True)
    return torch.stack(rows)


@pytest.mark.parametrize("method", METHODS + ["torchdeq:broyden", "torchdeq:anderson"])
@pytest.mark.parametrize("radius", [0.5, 0.95])
def test_tanh_map_matches_scipy(method, radius):
    f, z0, _ = tanh_map(systems=3, size=24, radius=radius)
    z, stats = solve(f, z0, SolverConfig(method=method, max_iter=400, tol=1e-10))
    reference = scipy_fixed_point(f, z0)
    assert bool(stats.converged.all())
    assert float(stats.rel_residual.max()) < 1e-10
    torch.testing.assert_close(z, reference, rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_causal_attention_cell_matches_scipy(method):
    f, z0, _, _ = attention_problem(batch=2, length=6, d_model=8, n_heads=2, dtype=torch.float64)
    z, stats = solve(f, z0, SolverConfig(method=method, max_iter=300, tol=1e-10))
    reference = scipy_fixed_point(f, z0)
    assert bool(stats.converged.all())
    torch.testing.assert_close(z, reference, rtol=0, atol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_residual_definitions(method):
    f, z0, _ = tanh_map(systems=4, size=10, radius=0.8)
    z, stats = solve(f, z0, SolverConfig(method=method, max_iter=5, tol=1e-12))
    g = f(z) - z
    torch.testing.assert_close(stats.abs_residual, g.norm(dim=1) / math.sqrt(10))
    torch.testing.assert_close(stats.rel_residual, g.norm(dim=1) / (f(z).norm(dim=1) + 1e-9))
    assert stats.nstep.shape == (4,) and stats.converged.shape == (4,)


def test_converged_systems_freeze_and_report_their_own_steps():
    # abs residual of picard on f = a z from ones is (1-a) a^k: system 0 (a=0.5) converges at k=9,
    # system 1 (a=0.9) at k=44, and system 0's iterate must stay at 0.5^9 while system 1 continues.
    a = torch.tensor([[0.5], [0.9]], dtype=torch.float64)
    z, stats = solve(lambda z: a * z, torch.ones(2, 4, dtype=torch.float64),
                     SolverConfig(method="picard", stop="abs", tol=1e-3, max_iter=100, trace=True))
    assert stats.nstep.tolist() == [9, 44]
    assert torch.equal(z[0], torch.full((4,), 0.5**9, dtype=torch.float64))
    assert bool(stats.converged.all())
    assert stats.nfe == 45
    assert stats.trace.shape == (45, 2)
    # after freezing, system 0's traced residual stays at its frozen value
    assert torch.all(stats.trace[10:, 0] == stats.trace[9, 0])


@pytest.mark.parametrize("method", METHODS)
def test_diverging_system_returns_best_iterate_and_reports_failure(method):
    # f = -1.5 z + 1 is expanding: every method's residual grows from the start at z0 = 0 for Picard;
    # whatever the method does, the returned z is never worse than z0 and the failure is reported.
    f = lambda z: -1.5 * z + torch.tensor([[1.0], [0.0]], dtype=torch.float64) + 0.0 * z  # noqa: E731
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    z, stats = solve(f, z0, SolverConfig(method=method, max_iter=3, tol=1e-12))
    g = f(z) - z
    assert torch.all(g.norm(dim=1) <= (f(z0) - z0).norm(dim=1) + 1e-12)
    assert bool(stats.converged[1])  # z0 is already the fixed point of system 1
    if method == "picard":
        assert not bool(stats.converged[0])
        assert torch.equal(z[0], z0[0])


def test_nonconvergence_is_reported_not_hidden():
    f, z0, _ = tanh_map(systems=3, size=16, radius=0.95)
    z, stats = solve(f, z0, SolverConfig(method="picard", max_iter=3, tol=1e-10))
    assert not bool(stats.converged.any())
    assert float(stats.rel_residual.min()) > 1e-10
    assert stats.nstep.tolist() == [3, 3, 3]


@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_evaluations_never_poison_the_result(method):
    # System 1 (f = z + 1) has no fixed point and turns NaN once an entry exceeds 4; system 0 is tame.
    f0, z0, _ = tanh_map(systems=2, size=8, radius=0.6)

    def f(z):
        out = f0(z).clone()
        out[1] = z[1] + 1.0
        out[1] = torch.where(z[1].abs().amax() > 4, torch.full_like(out[1], float("nan")), out[1])
        return out

    z, stats = solve(f, z0, SolverConfig(method=method, max_iter=60, tol=1e-10))
    assert torch.isfinite(z).all()
    assert stats.nonfinite.tolist() == [False, True]
    assert stats.converged.tolist() == [True, False]
    alone, _ = solve(f0, z0, SolverConfig(method=method, max_iter=60, tol=1e-10))
    torch.testing.assert_close(z[0], alone[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("coupling", ["independent", "causal"])
@pytest.mark.parametrize("method", METHODS)
def test_per_position_systems_are_exactly_causal(method, coupling):
    f, z0, _, u = attention_problem(batch=2, length=12, d_model=16, n_heads=2, dtype=torch.float64)
    cfg = SolverConfig(method=method, max_iter=80, tol=1e-9)
    z_a, stats_a = solve(f, z0, cfg, batch_dims=2, coupling=coupling)
    u[:, 7:] += torch.randn_like(u[:, 7:])  # change the injection at positions > 6 (f captures u)
    z_b, stats_b = solve(f, z0, cfg, batch_dims=2, coupling=coupling)
    assert stats_a.nstep.shape == (2, 12)
    assert torch.equal(z_a[:, :7], z_b[:, :7])
    assert torch.equal(stats_a.nstep[:, :7], stats_b.nstep[:, :7])
    assert (z_a[:, 7:] - z_b[:, 7:]).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_causal_coupling_freezes_a_position_only_after_its_prefix(method):
    # Freezing a position while earlier ones still move leaves it off the fixed point; with causal
    # coupling every reported residual must hold at the returned z.
    f, z0, _, _ = attention_problem(batch=2, length=16, d_model=16, n_heads=2, gain=2.0, dtype=torch.float64)
    z, stats = solve(f, z0, SolverConfig(method=method, max_iter=300, tol=1e-6), batch_dims=2, coupling="causal")
    with torch.no_grad():
        fz = f(z)
    rel = (fz - z).norm(dim=-1) / (fz.norm(dim=-1) + 1e-9)
    assert bool(stats.converged.all())
    torch.testing.assert_close(rel, stats.rel_residual, rtol=1e-6, atol=1e-15)
    assert float(rel.max()) < 1e-6


def test_unknown_coupling_is_rejected():
    f, z0, _ = tanh_map(systems=2, size=4, radius=0.5)
    with pytest.raises(ValueError, match="coupling"):
        solve(f, z0, SolverConfig(), coupling="sideways")


def test_per_position_and_per_sequence_solves_agree():
    f, z0, _, _ = attention_problem(batch=2, length=10, d_model=16, n_heads=2, dtype=torch.float64)
    z1, _ = solve(f, z0, SolverConfig(method="broyden", max_iter=100, tol=1e-11), batch_dims=1)
    z2, _ = solve(f, z0, SolverConfig(method="broyden", max_iter=100, tol=1e-11), batch_dims=2)
    torch.testing.assert_close(z1, z2, rtol=0, atol=1e-9)


@pytest.mark.parametrize("policy", ["restart", "ring"])
def test_broyden_with_memory_smaller_than_iterations(policy):
    f, z0, _ = tanh_map(systems=2, size=16, radius=0.9)
    z, stats = solve(f, z0, SolverConfig(method="broyden", memory=3, memory_policy=policy, max_iter=200, tol=1e-10))
    assert bool(stats.converged.all()) and stats.nfe > 4
    reference = scipy_fixed_point(f, z0)
    torch.testing.assert_close(z, reference, rtol=0, atol=1e-8)


def test_restarting_broyden_converges_where_the_ring_buffer_stalls():
    f, z0, _, _ = attention_problem(batch=2, length=8, d_model=16, n_heads=2, gain=3.0, dtype=torch.float64)
    cfg = dict(method="broyden", memory=10, max_iter=150, tol=1e-10)
    _, ring = solve(f, z0, SolverConfig(memory_policy="ring", **cfg))
    _, restart = solve(f, z0, SolverConfig(memory_policy="restart", **cfg))
    assert bool(restart.converged.all()) and not bool(ring.converged.all())


def test_line_search_converges():
    f, z0, _, _ = attention_problem(batch=2, length=8, d_model=16, n_heads=2, gain=3.0, dtype=torch.float64)
    z, stats = solve(f, z0, SolverConfig(method="broyden", line_search=True, max_iter=200, tol=1e-10))
    assert bool(stats.converged.all())
    torch.testing.assert_close(f(z), z, rtol=0, atol=1e-8)


def test_line_search_records_the_step_it_took():
    # Broyden's secant pair must be (the step taken, the residual change): after a retry at alpha < 1 the step
    # is alpha * dx, not the proposed dx.
    from solvers.broyden import Broyden
    from solvers.registry import METHODS, register_method, unregister_method

    points: list[torch.Tensor] = []  # every point f was evaluated at
    recorded: list[tuple[torch.Tensor, int]] = []  # (dx, evaluations so far) per record call

    class Recording(Broyden):
        def record(self, dx, dg, g_new):
            recorded.append((dx.clone(), len(points)))
            super().record(dx, dg, g_new)

    f, z0, _, _ = attention_problem(batch=2, length=8, d_model=16, n_heads=2, gain=3.0, dtype=torch.float64)

    def logged(z):
        points.append(z.reshape(2, -1).clone())
        return f(z)

    register_method("recording", lambda cfg, x: Recording(x, cfg.window, full_steps=False),
                    default_memory=METHODS["broyden"].default_memory, line_search=True)
    try:
        _, stats = solve(logged, z0, SolverConfig(method="recording", line_search=True, max_iter=40, tol=1e-10))
    finally:
        unregister_method("recording")
    assert len(points) > len(recorded) + 1, "the line search must retry for this test to mean anything"
    previous = points[0]
    for dx, evaluated in recorded:
        accepted = points[evaluated - 1]  # a retry's point, else the full step's: the last evaluated
        torch.testing.assert_close(accepted - previous, dx, rtol=0, atol=1e-12)
        previous = accepted


def test_anderson_relative_ridge_beats_the_peers_absolute_ridge():
    # The peer's lam=1e-4 is absolute: once residuals are small it dominates the Gram matrix and
    # Anderson degrades to slow damped iteration. Ours is scaled to the Gram matrix.
    f, z0, _ = tanh_map(systems=2, size=32, radius=0.95)
    _, ours = solve(f, z0, SolverConfig(method="anderson", max_iter=300, tol=1e-10))
    _, peer = solve(f, z0, SolverConfig(method="torchdeq:anderson", max_iter=300, tol=1e-10))
    assert bool(ours.converged.all()) and bool(peer.converged.all())
    assert ours.nfe < peer.nfe


def test_float32_and_batch_dims_validation():
    f, z0, _ = tanh_map(systems=2, size=8, radius=0.5, dtype=torch.float32)
    z, stats = solve(f, z0, SolverConfig(max_iter=50, tol=1e-5))
    assert z.dtype == torch.float32 and bool(stats.converged.all())
    with pytest.raises(ValueError, match="batch_dims"):
        solve(f, z0, SolverConfig(), batch_dims=3)
