"""Fused solves (SolverConfig(fused=True)) run the algorithm of the eager loop: the same evaluations, steps,
convergence and failure flags, and the same iterates to rounding, compiled or not."""

import importlib
import warnings
from dataclasses import replace

import pytest
import torch
import torch._inductor  # noqa: F401  (monkeypatched below)

from bench.problems import attention_problem, nan_beyond, tanh_map
from solvers import SolverConfig, solve

fused = importlib.import_module("solvers.fused")

CONFIGS = {
    "anderson": SolverConfig(method="anderson", max_iter=60, tol=1e-9),
    "anderson-m3-beta0.7": SolverConfig(method="anderson", max_iter=60, tol=1e-9, memory=3, damping=0.7),
    "broyden": SolverConfig(method="broyden", max_iter=60, tol=1e-9),
    "broyden-restart-m4": SolverConfig(method="broyden", max_iter=60, tol=1e-9, memory=4),
    "broyden-ring-m4": SolverConfig(method="broyden", max_iter=60, tol=1e-9, memory=4, memory_policy="ring"),
    "picard": SolverConfig(method="picard", max_iter=60, tol=1e-9, damping=0.7),
}


def _problems():
    """(name, f, z0, batch_dims, coupling, config changes)."""
    f, z0, _ = tanh_map(systems=3, size=24, radius=0.8)
    yield "tanh float64", f, z0, 1, "independent", {}
    f, z0, _ = tanh_map(systems=4, size=16, radius=0.95, dtype=torch.float32)
    yield "tanh float32 tol 1e-5", f, z0, 1, "independent", {"tol": 1e-5}
    f, z0, _, _ = attention_problem(batch=2, length=5, d_model=8, n_heads=2, dtype=torch.float64)
    yield "attention per sequence", f, z0, 1, "independent", {}
    yield "attention per position, causal", f, z0, 2, "causal", {}
    c = torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=torch.float64).repeat(2, 1)
    yield "no fixed point (claim test)", (lambda z: z + c), torch.zeros(2, 4, dtype=torch.float64), 1, \
        "independent", {"tol": 1e-3, "max_iter": 300}
    c32 = torch.full((2, 8), 29.0)
    yield "float32 overflow (diverged)", (lambda z: z + c32), torch.zeros(2, 8), 1, "independent", \
        {"tol": 1e-4, "stop": "abs", "max_iter": 3000}
    f, z0 = nan_beyond(10.0)
    yield "nan beyond 10 (nonfinite)", f, z0, 1, "independent", {"tol": 1e-8, "max_iter": 40}
    yield "starts converged", (lambda z: z.clone()), torch.ones(3, 5, dtype=torch.float64), 1, "independent", {}


PROBLEMS = list(_problems())


def _assert_same_solve(eager, fused_run, rtol: float, atol: float):
    (z_e, s_e), (z_f, s_f) = eager, fused_run
    if bool(s_e.diverged.any()) and s_e.method == "broyden":
        # A blowing-up Broyden trajectory (the ring policy's, on two problems here) amplifies rounding: it fails
        # in both, at steps that differ. The flags must agree, and the converged systems' solutions.
        for name in ("converged", "nonfinite", "diverged"):
            assert torch.equal(getattr(s_f, name), getattr(s_e, name)), name
        done = s_e.converged.reshape(-1)
        torch.testing.assert_close(z_f.reshape(len(done), -1)[done], z_e.reshape(len(done), -1)[done], rtol=rtol,
                                   atol=atol)
        return
    assert s_f.nfe == s_e.nfe
    for name in ("nstep", "converged", "nonfinite", "diverged"):
        assert torch.equal(getattr(s_f, name), getattr(s_e, name)), name
    torch.testing.assert_close(z_f, z_e, rtol=rtol, atol=atol)
    floor = 1e-12 if z_e.dtype == torch.float64 else 1e-6  # float32 residuals carry rounding of ~1e-7
    torch.testing.assert_close(s_f.rel_residual, s_e.rel_residual, rtol=1e-3, atol=floor)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("problem", PROBLEMS, ids=[p[0] for p in PROBLEMS])
def test_fused_iterations_equal_the_eager_loop(problem, config, monkeypatch):
    monkeypatch.setattr(fused, "COMPILE", False)  # the functions themselves (compiled runs are tested below)
    _, f, z0, batch_dims, coupling, changes = problem
    cfg = replace(CONFIGS[config], **changes)
    eager = solve(f, z0, cfg, batch_dims, coupling)
    result = solve(f, z0, replace(cfg, fused=True), batch_dims, coupling)
    tight = z0.dtype == torch.float64
    _assert_same_solve(eager, result, rtol=1e-9 if tight else 1e-5, atol=1e-9 if tight else 1e-5)
    assert torch.isfinite(result[0]).all()


def test_fused_trace_and_storage(monkeypatch):
    monkeypatch.setattr(fused, "COMPILE", False)
    f, z0, _ = tanh_map(systems=3, size=10, radius=0.8)
    cfg = SolverConfig(method="anderson", max_iter=30, tol=1e-8, trace=True)
    (_, s_e), (_, s_f) = solve(f, z0, cfg), solve(f, z0, replace(cfg, fused=True))
    assert s_f.trace.shape == s_e.trace.shape == (s_e.nfe, 3)
    torch.testing.assert_close(s_f.trace, s_e.trace, rtol=1e-6, atol=1e-14)
    z1 = torch.ones(3, 5)
    z, stats = solve(lambda z: z.clone(), z1, SolverConfig(method="anderson", tol=1e-3, fused=True))
    assert stats.nfe == 1 and torch.equal(z, z1) and z.data_ptr() != z1.data_ptr()


@pytest.mark.parametrize("config", ["anderson", "broyden"])
def test_compiled_fused_iterations_equal_the_eager_loop(config):
    f, z0, _ = tanh_map(systems=3, size=24, radius=0.9, dtype=torch.float32)
    cfg = replace(CONFIGS[config], tol=1e-5)
    eager = solve(f, z0, cfg)
    graphs = fused.graphs_for(fused.spec_of(replace(cfg, fused=True), z0, z0.shape[:1], "independent"), z0)
    assert graphs.compiled, "torch._inductor could not compile the fused iterations on this machine"
    _assert_same_solve(eager, solve(f, z0, replace(cfg, fused=True)), rtol=1e-5, atol=1e-5)


def test_a_compiler_failure_falls_back_to_the_same_functions_eagerly(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch._inductor, "compile", broken)
    f, z0, _ = tanh_map(systems=2, size=7, radius=0.7)  # a shape no other test compiles
    cfg = SolverConfig(method="picard", max_iter=80, tol=1e-9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = solve(f, z0, replace(cfg, fused=True))
    assert any("compiling failed (RuntimeError: no C++ compiler here)" in str(w.message) for w in caught)
    _assert_same_solve(solve(f, z0, cfg), result, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("changes, needle", [
    ({"method": "broyden", "line_search": True}, "line_search=True"),
    ({"method": "torchdeq:anderson"}, "method='torchdeq:anderson'"),
])
def test_fused_refuses_what_it_cannot_run(changes, needle):
    with pytest.raises(ValueError, match="fused=True runs the built-in methods anderson, broyden, picard") as err:
        SolverConfig(fused=True, **changes)
    assert needle in str(err.value)


def test_fused_refuses_a_built_in_name_a_user_replaced():
    from solvers import METHODS, register_method

    original = METHODS["picard"]
    register_method("picard", lambda cfg, x: original.build(cfg, x), default_memory=1, replace=True)  # a user's
    try:
        with pytest.raises(ValueError, match=r"method='picard' .*\(replaced with register_method\)"):
            SolverConfig(method="picard", fused=True)
    finally:
        register_method("picard", original.build, default_memory=original.default_memory, replace=True)
    assert SolverConfig(method="picard", fused=True).fused


def _tanh_step(z, weight, bias):
    return torch.tanh(torch.einsum("sij,sj->si", weight, z) + bias)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_pure_f_runs_inside_the_fused_graphs(compiled, monkeypatch):
    from solvers import PureF

    monkeypatch.setattr(fused, "COMPILE", compiled)
    torch.manual_seed(1)
    weight, bias = 0.8 * torch.randn(3, 9, 9) / 3, torch.randn(3, 9)
    calls = []

    def f(z):
        calls.append(1)
        return _tanh_step(z, weight, bias)

    cfg = SolverConfig(method="anderson", max_iter=60, tol=1e-6, fused=True)
    z0 = torch.zeros(3, 9)
    expected = solve(f, z0, replace(cfg, fused=False))
    calls.clear()
    result = solve(f, z0, cfg, pure=PureF(_tanh_step, (weight, bias)))
    assert not calls  # f itself was never called: the graphs evaluated the pure function
    _assert_same_solve(expected, result, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result[0], _tanh_step(result[0], weight, bias), rtol=0, atol=1e-5)


def test_an_f_returning_another_memory_layout_is_read_correctly():
    # The compiled graphs skip Inductor's per-call stride checks, so fused_solve hands them contiguous tensors:
    # an f whose output is column-major (same shape, other strides) must give the eager loop's solve.
    f0, z0, _ = tanh_map(systems=3, size=11, radius=0.8, dtype=torch.float32)

    def f(z):
        out = f0(z)
        return out.t().contiguous().t()  # the same values, laid out column by column

    assert not f(z0).is_contiguous()
    cfg = SolverConfig(method="picard", max_iter=200, tol=1e-5)
    _assert_same_solve(solve(f, z0, cfg), solve(f, z0, replace(cfg, fused=True)), rtol=1e-5, atol=1e-5)
