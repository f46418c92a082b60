"""Solves that must not claim what they did not reach: runaway iterates, failed systems of the peer's solvers,
and every torchdeq method behind the native interface."""


import pytest
import torch

from bench.problems import nan_beyond, tanh_map
from solvers import SolverConfig, fixed_point, solve

METHODS = ["broyden", "anderson", "picard"]


@pytest.mark.parametrize("method", METHODS)
def test_iterates_running_to_infinity_are_not_convergence(method):
    # f(z) = z + c has no fixed point. Plain steps (every method degenerates to them here: the residual never
    # changes) make ||z|| grow linearly, so the relative residual ||c|| / ||z + c|| falls below any tol:
    # without the growth rule this reported converged=True at ||z|| = ||c|| / tol.
    c = torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=torch.float64).repeat(2, 1)
    z, stats = solve(lambda z: z + c, torch.zeros(2, 4, dtype=torch.float64),
                     SolverConfig(method=method, max_iter=3000, tol=1e-3))
    assert not bool(stats.converged.any())
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("method", METHODS)
def test_float32_overflowing_iterates_are_reported_as_diverged(method):
    # In float32, f(z) - z rounds to zero once |z| >> |c| / eps: a "fixed point" of rounding only. The monitor
    # declares a system diverged when ||z|| passes 1/sqrt(eps) times its starting scale, and keeps an earlier,
    # smaller iterate.
    c = torch.full((2, 8), 29.0)
    z, stats = solve(lambda z: z + c, torch.zeros(2, 8), SolverConfig(method=method, max_iter=20000, tol=1e-4,
                                                                      stop="abs"))
    assert stats.diverged.tolist() == [True, True]
    assert not bool(stats.converged.any())
    growth = torch.finfo(torch.float32).eps ** -0.5
    assert float(z.norm(dim=1).max()) <= growth * float(c.norm(dim=1).max())
    assert stats.summary()["diverged"] == 1.0


def test_growth_rule_leaves_a_distant_but_real_fixed_point_alone():
    # z* = 300 * v from z0 = 0 (f(0) = v): 300x the starting scale, well below the float64 growth limit.
    v = torch.linspace(-1, 1, 6, dtype=torch.float64)[None]
    z, stats = solve(lambda z: (1 - 1 / 300) * z + v, torch.zeros(1, 6, dtype=torch.float64),
                     SolverConfig(method="anderson", max_iter=200, tol=1e-10))
    assert bool(stats.converged.all()) and not bool(stats.diverged.any())
    torch.testing.assert_close(z, 300 * v, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point_iter", "simple_fixed_point_iter"])
def test_every_peer_method_solves_a_contraction(name):
    f, z0, _ = tanh_map(systems=3, size=12, radius=0.5)
    z, stats = solve(f, z0, SolverConfig(method=f"torchdeq:{name}", max_iter=200, tol=1e-9))
    reference, _ = solve(f, z0, SolverConfig(method="anderson", max_iter=200, tol=1e-12))
    if name != "simple_fixed_point_iter":  # that one runs max_iter steps and has no tolerance
        assert bool(stats.converged.all())
    torch.testing.assert_close(z, reference, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["anderson", "broyden", "fixed_point_iter"])
def test_peer_methods_keep_the_best_finite_iterate_of_a_failed_system(name):
    # The peer itself returns NaN for system 1 here (checked below); the adapter must not.
    from torchdeq.solver import get_solver

    f, z0 = nan_beyond(10.0)
    raw, _, _ = get_solver(name)(lambda x, tau=1.0: f(x), z0.clone(), max_iter=40, tol=1e-8, stop_mode="rel")
    assert not bool(torch.isfinite(raw[1]).all())
    z, stats = solve(f, z0, SolverConfig(method=f"torchdeq:{name}", max_iter=40, tol=1e-8))
    assert torch.isfinite(z).all()
    assert bool(stats.nonfinite[1]) and not bool(stats.converged[1])
    assert torch.isfinite(f(z)[1]).all()  # a point f was evaluated at without failing


@pytest.mark.parametrize("method", ["torchdeq:anderson", "anderson"])
def test_implicit_fixed_point_keeps_failed_systems_finite(method):
    f, z0 = nan_beyond(10.0)
    weight = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    z, stats = fixed_point(lambda z: weight * f(z), z0, SolverConfig(method=method, max_iter=40, tol=1e-8))
    assert torch.isfinite(z).all() and not bool(stats.converged[1])
    z[0].sum().backward()
    assert torch.isfinite(weight.grad)


def test_the_monitor_fast_path_keeps_a_frozen_systems_best_iterate():
    # System 0's lowest relative residual (iteration 1) is a false claim (||f(x)|| blew up), so it converges
    # later (iteration 2) at an iterate that is not its best. Once frozen its iterate no longer moves; when
    # every other system improves, the monitor must still not take the frozen iterate as system 0's best.
    from solvers.monitor import Monitor

    cfg = SolverConfig(method="picard", tol=1e-2, stop="rel")
    x0 = torch.zeros(2, 4, dtype=torch.float64)
    mon = Monitor(x0, cfg)
    ones = torch.ones(2, 4, dtype=torch.float64)
    x, _ = mon.observe(x0, ones, stepped=False)                          # g = 1 for both: rel 1
    x1 = torch.stack([1e6 * ones[0], 0.5 * ones[1]])
    x, _ = mon.observe(x1, torch.stack([1e6 * ones[0] + 1, ones[1]]), stepped=True)   # row 0: rel 1e-6, a claim
    assert not bool(mon.converged[0]) and float(mon.best_rel[0]) < 1e-5
    x2 = torch.stack([ones[0], 0.9 * ones[1]])
    x, _ = mon.observe(x2, torch.stack([ones[0] * 1.001, ones[1]]), stepped=True)   # row 0: rel 1e-3, converges
    assert bool(mon.converged[0]) and torch.equal(mon.best_x[0], x1[0])
    x3 = torch.stack([x[0], 0.99 * ones[1]])                              # row 0 frozen, row 1 improves
    mon.observe(x3, torch.stack([x[0] * 1.001, ones[1]]), stepped=True)
    assert torch.equal(mon.best_x[0], x1[0]), "the frozen system's best iterate was replaced"
    assert torch.equal(mon.best_x[1], x3[1])


def test_a_solve_that_starts_converged_does_not_return_z0_itself():
    z0 = torch.ones(3, 5)
    z, stats = solve(lambda z: z.clone(), z0, SolverConfig(method="anderson", tol=1e-3))
    assert bool(stats.converged.all()) and stats.nfe == 1
    assert torch.equal(z, z0) and z.data_ptr() != z0.data_ptr()
