"""Gradients through fixed points: implicit vs long unrolls, gradcheck, phantom, torchdeq, re-entrancy."""

import pytest
import torch
import torchdeq

from bench.problems import attention_problem, tanh_map
from solvers import SolverConfig, fixed_point

TIGHT = SolverConfig(method="broyden", max_iter=200, tol=1e-13)


def make_problem(radius=0.7, systems=3, size=12):
    f, z0, t = tanh_map(systems=systems, size=size, radius=radius, seed=1)
    for name in ("W", "x", "b"):
        t[name].requires_grad_()
    weights = torch.randn(systems, size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return f, z0, t, weights


def grads(loss, t):
    return torch.autograd.grad(loss, [t["W"], t["x"], t["b"]])


def unrolled_reference(f, z0, t, weights, steps=400):
    z = z0
    for _ in range(steps):
        z = f(z)
    return grads((weights * z).sum(), t)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("backward", ["broyden", "anderson", "picard"])
def test_implicit_gradient_matches_long_unroll(backward):
    f, z0, t, weights = make_problem()
    z, stats = fixed_point(f, z0, TIGHT, SolverConfig(method=backward, max_iter=300, tol=1e-14))
    ours = grads((weights * z).sum(), t)
    reference = unrolled_reference(f, z0, t, weights)
    for name, a, b in zip(("W", "x", "b"), ours, reference, strict=True):
        assert rel_err(a, b) < 1e-9, name
    assert stats.backward is not None and bool(stats.backward.converged.all())


def test_gradcheck():
    f0, z0, t = tanh_map(systems=2, size=5, radius=0.6, seed=2)

    def fn(W, x):
        f = lambda z: torch.tanh(torch.bmm(W, z.unsqueeze(2)).squeeze(2) + x)  # noqa: E731
        return fixed_point(f, z0, TIGHT, TIGHT)[0]

    W = t["W"].clone().requires_grad_()
    x = t["x"].clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (W, x), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_phantom_gradient_approaches_implicit_gradient():
    f, z0, t, weights = make_problem(radius=0.8)
    z, _ = fixed_point(f, z0, TIGHT, TIGHT)
    implicit = grads((weights * z).sum(), t)[0]
    errors = []
    for k in (1, 3, 10, 40):
        z, _ = fixed_point(f, z0, TIGHT, grad=f"phantom:{k}")
        errors.append(rel_err(grads((weights * z).sum(), t)[0], implicit))
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > 1e-2 and errors[-1] < 1e-6
    z, _ = fixed_point(f, z0, TIGHT, grad="phantom:60:0.5")
    assert rel_err(grads((weights * z).sum(), t)[0], implicit) < 1e-5


def test_unrolled_equals_plain_backprop():
    f, z0, t, weights = make_problem()
    z, stats = fixed_point(f, z0, TIGHT, grad="unrolled:7")
    ref = z0
    for _ in range(7):
        ref = f(ref)
    torch.testing.assert_close(z, ref, rtol=0, atol=0)
    for a, b in zip(grads((weights * z).sum(), t), unrolled_reference(f, z0, t, weights, steps=7), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert stats.nfe == 7 and stats.nstep.tolist() == [7, 7, 7]


def test_matches_torchdeq_ift_gradient():
    f, z0, t, weights = make_problem()
    z, _ = fixed_point(f, z0, TIGHT, TIGHT)
    ours = grads((weights * z).sum(), t)
    deq = torchdeq.get_deq(ift=True, f_solver="broyden", b_solver="broyden", f_max_iter=200, b_max_iter=200,
                           f_tol=1e-13, b_tol=1e-13, f_stop_mode="rel", b_stop_mode="rel")
    deq.train()
    z_peer = deq(f, z0)[0][-1]
    peer = grads((weights * z_peer).sum(), t)
    for a, b in zip(ours, peer, strict=True):
        assert rel_err(a, b) < 1e-8


def test_attention_cell_parameter_and_injection_gradients():
    f, z0, cell, u = attention_problem(batch=2, length=5, d_model=8, n_heads=2, dtype=torch.float64)
    u.requires_grad_()
    weights = torch.randn_like(z0)
    z, _ = fixed_point(f, z0, TIGHT, TIGHT, batch_dims=2)
    params = [u, *cell.parameters()]
    ours = torch.autograd.grad((weights * z).sum(), params)
    ref = z0
    for _ in range(300):
        ref = f(ref)
    reference = torch.autograd.grad((weights * ref).sum(), params)
    for a, b in zip(ours, reference, strict=True):
        assert rel_err(a, b) < 1e-9


@pytest.mark.parametrize("method", ["broyden", "anderson", "picard"])
def test_per_position_implicit_gradient_of_one_position(method):
    # f_t = tanh(A z_t + C z_{t-1} + u_t): position t reads only t-1. With a loss on position 6 the adjoint
    # at positions < 5 starts at exactly zero residual and must wait for the later positions it depends on
    # (anticausal coupling of the adjoint); frozen at once, their gradient would be lost.
    gen = torch.Generator().manual_seed(3)
    A, C = (0.4 * torch.randn(2, 8, 8, generator=gen, dtype=torch.float64) / 8**0.5).unbind(0)
    u = torch.randn(1, 10, 8, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(z):
        previous = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        return torch.tanh(z @ A.T + previous @ C.T + u)

    z0 = torch.zeros(1, 10, 8, dtype=torch.float64)
    cfg = SolverConfig(method=method, max_iter=400, tol=1e-12)
    z, _ = fixed_point(f, z0, cfg, cfg, batch_dims=2, coupling="causal")
    ours = torch.autograd.grad(z[0, 6].sum(), u)[0]
    ref = z0
    for _ in range(200):
        ref = f(ref)
    reference = torch.autograd.grad(ref[0, 6].sum(), u)[0]
    assert rel_err(ours, reference) < 1e-9
    assert float(ours[0, :3].abs().min()) > 0 and float(ours[0, 7:].abs().max()) == 0.0


def test_reentrant_calls_share_one_backward_and_leave_no_hooks():
    f, z0, t, weights = make_problem()
    z1, s1 = fixed_point(f, z0, TIGHT, TIGHT)
    z2, s2 = fixed_point(lambda z: f(z) * 0.5, z0, TIGHT, TIGHT)
    z3, s3 = fixed_point(f, z1.detach() * 0.3, TIGHT, TIGHT)
    both = grads((weights * z1).sum() + (weights * z2).sum() + (weights * z3).sum(), t)
    separate = [grads((weights * fixed_point(g, z0, TIGHT, TIGHT)[0]).sum(), t)
                for g in (f, lambda z: f(z) * 0.5, f)]
    for i, a in enumerate(both):
        torch.testing.assert_close(a, sum(s[i] for s in separate), rtol=1e-10, atol=1e-12)
    assert all(s.backward is not None for s in (s1, s2, s3))
    for tensor in (t["W"], t["x"], t["b"], z1, z2, z3):
        assert not getattr(tensor, "_backward_hooks", None)


def _graph_size(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return len(seen)


def test_graph_does_not_grow_with_forward_iterations():
    f, z0, t, _ = make_problem()
    short, s_short = fixed_point(f, z0, SolverConfig(max_iter=3, tol=1e-13), TIGHT)
    long, s_long = fixed_point(f, z0, SolverConfig(max_iter=60, tol=1e-13), TIGHT)
    assert s_long.nfe > s_short.nfe + 10
    assert _graph_size(short) == _graph_size(long)


def test_no_graph_work_without_grad():
    f, z0, t, _ = make_problem()
    with torch.no_grad():
        z, stats = fixed_point(f, z0, TIGHT, TIGHT)
    assert not z.requires_grad
    torch.testing.assert_close(f(z).detach(), z, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_implicit_gradient_with_k_picard_backward_steps_is_the_k_term_neumann_gradient(k):
    # The cheap backward of the default recipe: k plain adjoint steps from g0 = dL/dz give
    # g_k = sum_{j<=k} (J^T)^j dL/dz, the same truncated Neumann series as backpropagating through k + 1
    # applications of f from z* (phantom:k+1), at k vector-Jacobian products instead of k + 1 full layers.
    f, z0, t, weights = make_problem(radius=0.8)
    picard = SolverConfig(method="picard", max_iter=k, tol=1e-30)
    z, stats = fixed_point(f, z0, TIGHT, picard)
    ours = grads((weights * z).sum(), t)
    z, _ = fixed_point(f, z0, TIGHT, grad=f"phantom:{k + 1}")
    phantom = grads((weights * z).sum(), t)
    for name, a, b in zip(("W", "x", "b"), ours, phantom, strict=True):
        assert rel_err(a, b) < 1e-10, name
    assert stats.backward.nfe == k + 1 and not bool(stats.backward.converged.any())
