"""Jacobian penalty (Hutchinson) and spectral radius (Arnoldi) against exact linear algebra."""

import torch

from solvers import jacobian_penalty, spectral_radius


def test_jacobian_penalty_is_an_unbiased_frobenius_estimate():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 6, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    z = torch.randn(3, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    f_z = torch.bmm(A, z.unsqueeze(2)).squeeze(2)
    exact = A.pow(2).sum() / z.numel()
    estimate = jacobian_penalty(f_z, z, samples=4000, generator=gen)
    assert abs(float(estimate.detach() / exact.detach()) - 1) < 0.03
    (grad,) = torch.autograd.grad(estimate, A)
    exact_grad = (2 * A / z.numel()).detach()
    assert float((grad - exact_grad).norm() / exact_grad.norm()) < 0.1


def _nonnormal_problem(n=12, seed=0):
    """J = diag(1 - tanh^2) W with W a rotation-dominated non-normal matrix: complex dominant pair."""
    gen = torch.Generator().manual_seed(seed)
    theta = 0.9
    block = torch.tensor([[torch.cos(torch.tensor(theta)), -torch.sin(torch.tensor(theta))],
                          [torch.sin(torch.tensor(theta)), torch.cos(torch.tensor(theta))]], dtype=torch.float64)
    D = torch.diag(torch.linspace(0.1, 0.5, n, dtype=torch.float64))
    D[:2, :2] = 0.9 * block
    P = torch.eye(n, dtype=torch.float64) + 2.0 * torch.triu(torch.randn(n, n, generator=gen, dtype=torch.float64), 1)
    W = P @ D @ torch.linalg.inv(P)
    b = 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    z = 0.1 * torch.randn(2, n, generator=gen, dtype=torch.float64)
    return (lambda v: torch.tanh(v @ W.T + b)), z, W, b


def test_spectral_radius_exact_on_nonnormal_jacobian():
    f, z, W, b = _nonnormal_problem()
    estimate = spectral_radius(f, z, iters=12)
    for s in range(2):
        J = torch.diag(1 - torch.tanh(W @ z[s] + b) ** 2) @ W
        exact = torch.linalg.eigvals(J).abs().max()
        torch.testing.assert_close(estimate[s], exact, rtol=1e-8, atol=0)


def test_spectral_radius_with_fewer_iterations_than_size():
    # Unconverged Ritz values of this strongly non-normal J exceed its spectral radius (by 50% to 40x
    # at 25-30 iterations, measured); only converged ones may count.
    f, z, W, b = _nonnormal_problem(n=40, seed=1)
    J = torch.diag(1 - torch.tanh(W @ z[0] + b) ** 2) @ W
    exact = torch.linalg.eigvals(J).abs().max()
    for iters in (15, 25, 30):
        for seed in range(4):
            estimate = spectral_radius(f, z[:1], iters=iters, generator=torch.Generator().manual_seed(seed))
            assert abs(float(estimate[0] / exact) - 1) < 1e-4, (iters, seed)


def test_rayleigh_power_method_is_wrong_here_but_arnoldi_is_not():
    # On a linear map whose dominant eigenvalues are a complex pair 0.9 e^(+-0.9i), the peer's power
    # method with a Rayleigh quotient never settles on 0.9; Arnoldi gets it to rounding.
    from torchdeq.loss import power_method

    _, z, W, b = _nonnormal_problem()
    f = lambda v: v @ W.T + b  # noqa: E731
    z0 = z[:1].clone().requires_grad_()
    torch.manual_seed(0)
    _, peer = power_method(f(z0), z0, n_iters=100)
    assert abs(float(peer) / 0.9 - 1) > 0.05
    assert abs(float(spectral_radius(f, z[:1], iters=12)) / 0.9 - 1) < 1e-6
