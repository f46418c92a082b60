"""The method registry: user methods solve through the public protocol, names are checked once, and the
built-ins give exactly what their classes give when driven directly."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from torch import Tensor

from bench.problems import attention_problem, tanh_map
from solvers import METHODS, SolverConfig, fixed_point, register_method, solve, unregister_method
from solvers.anderson import Anderson
from solvers.broyden import Broyden


@pytest.fixture(autouse=True)
def restore_registry():
    """Every test leaves the registry as it found it: added names removed, replaced entries put back."""
    saved = dict(METHODS)
    yield
    for name in set(METHODS) - set(saved):
        unregister_method(name)
    for name, entry in saved.items():
        if METHODS.get(name) != entry:
            register_method(name, entry.build, default_memory=entry.default_memory, line_search=entry.line_search,
                            replace=True)
    assert dict(METHODS) == saved


class DampedPicard:
    """A user method written from the public protocol only: x+ = x + damping * g, counting its calls."""

    def __init__(self, damping: float) -> None:
        self.damping = damping
        self.directions = 0
        self.records = 0

    def direction(self, g: Tensor) -> Tensor:
        self.directions += 1
        return self.damping * g

    def record(self, dx: Tensor, dg: Tensor, g_new: Tensor) -> None:
        assert dx.shape == dg.shape == g_new.shape
        self.records += 1


def register_damped_picard(built: list) -> None:
    def build(cfg: SolverConfig, x: Tensor) -> DampedPicard:
        built.append(DampedPicard(cfg.damping))
        return built[-1]

    register_method("mine", build, default_memory=4)


def test_user_method_matches_scipy_and_reports_its_stats():
    built = []
    register_damped_picard(built)
    f, z0, _ = tanh_map(systems=3, size=24, radius=0.5)
    z, stats = solve(f, z0, SolverConfig(method="mine", max_iter=200, tol=1e-13, damping=0.8))
    with torch.no_grad():
        reference = scipy.optimize.fixed_point(lambda v: f(torch.from_numpy(v)).numpy(), np.zeros(z0.shape),
                                               xtol=1e-14, maxiter=2000, method="iteration")
        g = f(z) - z
    torch.testing.assert_close(z, torch.from_numpy(reference), rtol=0, atol=1e-11)
    assert stats.method == "mine" and bool(stats.converged.all())
    assert float(stats.rel_residual.max()) < 1e-13
    torch.testing.assert_close(stats.abs_residual, g.norm(dim=1) / math.sqrt(24))
    (method,) = built
    iterations = int(stats.nstep.max())
    assert stats.nfe == iterations + 1 == method.directions + 1 == method.records + 1
    assert 10 < iterations < 200


def test_user_method_is_bit_identical_to_builtin_picard_and_differentiates():
    register_damped_picard([])
    f, z0, tensors = tanh_map(systems=3, size=8, radius=0.9)
    leaf = tensors["x"].requires_grad_()  # f reads the dict's tensors, so the gradient reaches this leaf
    runs = {}
    for name in ("mine", "picard"):
        leaf.grad = None
        cfg = SolverConfig(method=name, max_iter=300, tol=1e-10, damping=0.7)
        z, stats = fixed_point(f, z0, cfg, grad="implicit")
        z.pow(2).sum().backward()
        runs[name] = (z.detach(), stats, leaf.grad.clone())
    (z_mine, s_mine, g_mine), (z_ref, s_ref, g_ref) = runs["mine"], runs["picard"]
    assert torch.equal(z_mine, z_ref) and torch.equal(g_mine, g_ref) and g_ref.abs().sum() > 0
    assert s_mine.nfe == s_ref.nfe and torch.equal(s_mine.nstep, s_ref.nstep)
    assert s_mine.backward.method == "mine" and bool(s_mine.backward.converged.all())


def test_config_validates_a_name_only_once_it_is_registered():
    with pytest.raises(ValueError, match=r"SolverConfig\.method='mine' is unknown"):
        SolverConfig(method="mine")
    register_damped_picard([])
    assert SolverConfig(method="mine").window == 4
    assert SolverConfig(method="mine", memory=9).window == 9
    assert not SolverConfig(method="mine").is_peer


def test_unknown_method_lists_builtin_user_and_peer_methods():
    register_damped_picard([])
    with pytest.raises(ValueError) as err:
        SolverConfig(method="newton")
    message = str(err.value)
    assert message.startswith("SolverConfig.method='newton' is unknown; allowed: anderson, broyden, mine, picard, ")
    assert "torchdeq:anderson" in message and "torchdeq:simple_fixed_point_iter" in message


def test_duplicates_and_reserved_names_are_refused():
    register_damped_picard([])
    with pytest.raises(ValueError, match="'mine' is already registered; pass replace=True"):
        register_damped_picard([])
    with pytest.raises(ValueError, match="'picard' is already registered"):
        register_method("picard", METHODS["mine"].build)
    for name in ("torchdeq:mine", "my:method", ""):
        with pytest.raises(ValueError, match="without ':'"):
            register_method(name, METHODS["mine"].build)
    with pytest.raises(ValueError, match="default_memory=0 must be an integer >= 1"):
        register_method("other", METHODS["mine"].build, default_memory=0)
    with pytest.raises(ValueError, match="must be callable"):
        register_method("other", "not a function")
    assert "other" not in METHODS and METHODS["picard"].build is not METHODS["mine"].build


def test_replace_swaps_a_builtin_and_is_undone():
    original = METHODS["picard"]
    built = []

    def build(cfg: SolverConfig, x: Tensor) -> DampedPicard:
        built.append(DampedPicard(0.5))  # ignores cfg.damping: the replacement is what runs
        return built[-1]

    register_method("picard", build, default_memory=2, replace=True)
    f, z0, _ = tanh_map(systems=2, size=6, radius=0.5)
    _, stats = solve(f, z0, SolverConfig(method="picard", max_iter=5, tol=1e-12))
    _, ref = solve(f, z0, SolverConfig(method="picard", max_iter=5, tol=1e-12, damping=0.5))
    assert len(built) == 2 and built[0].directions == 5 and SolverConfig(method="picard").window == 2
    assert torch.equal(stats.rel_residual, ref.rel_residual)
    register_method("picard", original.build, default_memory=original.default_memory, replace=True)
    assert METHODS["picard"] == original and SolverConfig(method="picard").window == 1


def test_unregister_refuses_peer_and_unknown_names():
    with pytest.raises(ValueError, match="peer library"):
        unregister_method("torchdeq:anderson")
    with pytest.raises(ValueError, match="'nope' is unknown; allowed: anderson, broyden, picard"):
        unregister_method("nope")


def test_a_build_that_breaks_the_protocol_is_named():
    register_method("broken", lambda cfg, x: object())
    f, z0, _ = tanh_map(systems=2, size=6, radius=0.5)
    with pytest.raises(TypeError, match="'broken': build returned object"):
        solve(f, z0, SolverConfig(method="broken"))


@pytest.mark.parametrize(("name", "kwargs", "direct"), [
    ("broyden", {}, lambda x: Broyden(x, 30, "restart", full_steps=True)),
    ("broyden", {"line_search": True}, lambda x: Broyden(x, 30, "restart", full_steps=False)),
    ("broyden", {"memory": 3, "memory_policy": "ring"}, lambda x: Broyden(x, 3, "ring", full_steps=True)),
    ("anderson", {}, lambda x: Anderson(x, 6, 1.0, None)),
    ("anderson", {"damping": 0.6, "ridge": 1e-6}, lambda x: Anderson(x, 6, 0.6, 1e-6)),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_builtins_are_bit_identical_to_their_classes_driven_directly(name, kwargs, direct, dtype):
    """The registry path (defaults from the entry, line search from its flag) adds nothing to the classes."""
    register_method("direct", lambda cfg, x: direct(x), line_search=kwargs.get("line_search", False))
    f, z0, _, _ = attention_problem(batch=2, length=8, d_model=16, n_heads=2, gain=3.0, dtype=dtype)
    (z, stats), (z_direct, stats_direct) = (
        solve(f, z0, SolverConfig(method=m, max_iter=30, tol=1e-12, **kwargs)) for m in (name, "direct"))
    assert torch.equal(z, z_direct) and stats.nfe == stats_direct.nfe
    for field in ("nstep", "abs_residual", "rel_residual", "converged", "nonfinite", "diverged"):
        assert torch.equal(getattr(stats, field), getattr(stats_direct, field)), field


def test_line_search_runs_only_for_methods_registered_with_it():
    register_method("no-search", lambda cfg, x: Broyden(x, cfg.window, full_steps=True), default_memory=30)
    f, z0, _, _ = attention_problem(batch=2, length=8, d_model=16, n_heads=2, gain=3.0, dtype=torch.float64)
    runs = {(m, ls): solve(f, z0, SolverConfig(method=m, max_iter=30, tol=1e-12, line_search=ls))[1]
            for m, ls in [("no-search", True), ("broyden", False), ("broyden", True)]}
    assert runs["broyden", True].nfe > runs["broyden", False].nfe  # the search does run for broyden here
    assert runs["no-search", True].nfe == runs["broyden", False].nfe
    assert torch.equal(runs["no-search", True].rel_residual, runs["broyden", False].rel_residual)
