"""Output heads: likelihoods against independent computations, sampling, moments and the shared interface."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest
import torch
from scipy.stats import chisquare

from deqseq.config import ModelConfig
from deqseq.heads import (
    HEADS,
    CategoricalHead,
    DiscretizedLogisticMixtureHead,
    MixtureOfGaussiansHead,
    bits_per_dim,
    build_head,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of observed counts against probabilities, pooling cells expected < 5 into one."""
    expected = probs.double() * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


# ---------------------------------------------------------------------------------------------------------------
# Mixture of Gaussians


def mog_params(head: MixtureOfGaussiansHead, lead: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = seeded(seed)
    return torch.randn(*lead, head.num_params, generator=g, dtype=torch.float64) * 1.5


def mog_reference(params: torch.Tensor, target: torch.Tensor, k: int, q: int, min_std: float) -> list[float]:
    """-log p of each position by an explicit loop over components with math functions."""
    out = []
    for p, x in zip(params.reshape(-1, params.shape[-1]).tolist(), target.reshape(-1, q).tolist(), strict=True):
        logits, mu, raw = p[:k], p[k:k + k * q], p[k + k * q:]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        terms = []
        for c in range(k):
            log_density = 0.0
            for d in range(q):
                s = math.log1p(math.exp(raw[c * q + d])) + min_std
                log_density += -0.5 * ((x[d] - mu[c * q + d]) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
            terms.append(logits[c] - log_z + log_density)
        top = max(terms)
        out.append(-(top + math.log(sum(math.exp(t - top) for t in terms))))
    return out


@pytest.mark.parametrize("q", [1, 3])
@pytest.mark.parametrize("k", [1, 4])
def test_mog_nll_matches_an_explicit_loop(k: int, q: int) -> None:
    head = MixtureOfGaussiansHead(8, q, k, min_std=1e-3)
    params = mog_params(head, (2, 5))
    target = torch.randn(2, 5, q, generator=seeded(1), dtype=torch.float64) * 2
    nll = head.nll(params, target)
    assert nll.shape == (2, 5) and nll.dtype == torch.float64
    ref = torch.tensor(mog_reference(params, target, k, q, 1e-3), dtype=torch.float64).view(2, 5)
    torch.testing.assert_close(nll, ref, rtol=1e-12, atol=1e-12)


def test_mog_nll_matches_torch_distributions() -> None:
    k, q = 4, 3
    head = MixtureOfGaussiansHead(8, q, k)
    params = mog_params(head, (3, 2))
    target = torch.randn(3, 2, q, generator=seeded(2), dtype=torch.float64)
    logits, mu, raw = params.split([k, k * q, k * q], dim=-1)
    std = torch.nn.functional.softplus(raw) + head.min_std
    dist = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(mu.view(3, 2, k, q), std.view(3, 2, k, q)), 1),
    )
    torch.testing.assert_close(head.nll(params, target), -dist.log_prob(target), rtol=1e-12, atol=1e-12)


def test_mog_accepts_b_t_targets_when_q_is_1_and_checks_shapes() -> None:
    head = MixtureOfGaussiansHead(8, 1, 3)
    params = mog_params(head, (2, 4))
    target = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(head.nll(params, target), head.nll(params, target[..., None]))
    with pytest.raises(ValueError, match="targets of shape"):
        head.nll(params, torch.zeros(2, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="expects parameters"):
        head.nll(params[..., :-1], target)


def test_mog_variance_floor_keeps_the_likelihood_finite() -> None:
    k, q, min_std = 3, 2, 1e-3
    head = MixtureOfGaussiansHead(8, q, k, min_std)
    params = torch.zeros(2, 3, head.num_params)
    params[..., k + k * q:] = -1e4  # raw scales far below zero: softplus underflows to 0
    _, _, std = head.components(params)
    assert bool((std >= min_std).all())
    torch.testing.assert_close(std, torch.full_like(std, min_std))
    assert bool((head.std(params) >= min_std * (1 - 1e-6)).all())
    params.requires_grad_(True)
    nll = head.nll(params, torch.full((2, 3, q), 5.0))
    nll.sum().backward()
    assert bool(torch.isfinite(nll).all()) and bool(torch.isfinite(params.grad).all())
    # The floor bounds the density: no target can score below -log of the densest Gaussian.
    on_mean = head.nll(params.detach(), torch.zeros(2, 3, q))
    assert float(on_mean.min()) >= q * (math.log(min_std) + 0.5 * math.log(2 * math.pi)) - 1e-3


def test_mog_gradcheck() -> None:
    head = MixtureOfGaussiansHead(4, 2, 3).double()
    params = mog_params(head, (2, 2)).requires_grad_(True)
    target = torch.randn(2, 2, 2, generator=seeded(3), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: head.nll(p, target), (params,))


def test_mog_mean_and_std_match_an_independent_computation() -> None:
    k, q = 4, 3
    head = MixtureOfGaussiansHead(8, q, k)
    params = mog_params(head, (2, 3))
    mean, std = head.mean(params), head.std(params)
    assert mean.shape == std.shape == (2, 3, q)
    for idx in [(0, 0), (1, 2)]:
        p = params[idx].tolist()
        logits, mu, raw = p[:k], p[k:k + k * q], p[k + k * q:]
        weights = [math.exp(v) for v in logits]
        weights = [w / sum(weights) for w in weights]
        for d in range(q):
            m = sum(weights[c] * mu[c * q + d] for c in range(k))
            second = sum(weights[c] * ((math.log1p(math.exp(raw[c * q + d])) + head.min_std) ** 2 + mu[c * q + d] ** 2)
                         for c in range(k))
            assert mean[idx][d].item() == pytest.approx(m, rel=1e-12, abs=1e-12)
            assert std[idx][d].item() == pytest.approx(math.sqrt(max(second - m * m, 0.0)), rel=1e-10)
    with pytest.raises(NotImplementedError, match="closed form|no mode"):
        head.mode(params)


def test_mog_samples_are_reproducible_and_match_the_moments() -> None:
    k, q, n = 3, 2, 200_000
    head = MixtureOfGaussiansHead(8, q, k)
    params = mog_params(head, (1, 1), seed=5).expand(n, 1, head.num_params)
    a = head.sample(params, generator=seeded(7))
    assert a.shape == (n, 1, q) and a.dtype == torch.float64
    assert torch.equal(a, head.sample(params, generator=seeded(7)))
    assert not torch.equal(a, head.sample(params, generator=seeded(8)))
    draws = a[:, 0]
    mean, std = head.mean(params[:1])[0, 0], head.std(params[:1])[0, 0]
    centred = draws - draws.mean(0)
    emp_std = centred.square().mean(0).sqrt()
    se_mean = emp_std / math.sqrt(n)
    se_std = ((centred ** 4).mean(0) - emp_std ** 4).sqrt() / math.sqrt(n) / (2 * emp_std)
    assert bool(((draws.mean(0) - mean).abs() < 5 * se_mean).all())
    assert bool(((emp_std - std).abs() < 5 * se_std).all())


def test_mog_temperature() -> None:
    k, q, n = 3, 1, 100_000
    head = MixtureOfGaussiansHead(8, q, k)
    params = torch.zeros(1, 1, head.num_params, dtype=torch.float64)
    params[..., :k] = torch.tensor([0.5, 1.5, -0.3])  # logits
    params[..., k:2 * k] = torch.tensor([-50.0, 0.0, 50.0])  # well separated means
    params[..., 2 * k:] = math.log(math.expm1(1.0))  # std ~ 1
    _, mu, _ = head.components(params)
    assert torch.equal(head.sample(params, 0.0, seeded(0)), mu[:, :, 1])  # the top component's mean
    t = 0.5
    draws = head.sample(params.expand(n, 1, -1), t, seeded(1))[:, 0, 0]
    counts = torch.stack([(draws < -25).sum(), ((draws > -25) & (draws < 25)).sum(), (draws > 25).sum()])
    assert chi_square_p(counts, torch.softmax(params[0, 0, :k] / t, -1)) > 1e-3
    middle = draws[(draws > -25) & (draws < 25)]
    sd = math.sqrt(t) * (1 + head.min_std)
    assert abs(middle.std().item() - sd) < 5 * sd / math.sqrt(2 * middle.numel())
    with pytest.raises(ValueError, match="temperature"):
        head.sample(params, -1.0)
    with pytest.raises(ValueError, match="temperature"):
        head.sample(params, float("nan"))


def test_mog_initialisation_is_spread() -> None:
    head = MixtureOfGaussiansHead(16, 2, 5, min_std=1e-3)
    log_pi, mu, std = head.components(head(torch.zeros(1, 1, 16)))
    torch.testing.assert_close(log_pi.exp(), torch.full_like(log_pi, 0.2))
    assert mu[0, 0, :, 0].unique().numel() == 5
    torch.testing.assert_close(std, torch.ones_like(std), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Discretized mixture of logistics


def dmol_reference(params: torch.Tensor, ids: torch.Tensor, k: int, q: int, levels: int) -> list[float]:
    """-log p of each position, from differences of logistic CDFs in 150-digit decimal arithmetic."""
    out = []
    with localcontext() as ctx:
        ctx.prec = 150
        half = Decimal(1) / (levels - 1)

        def sigmoid(v: Decimal) -> Decimal:
            return 1 / (1 + (-v).exp())

        for p, x in zip(params.reshape(-1, params.shape[-1]).tolist(), ids.reshape(-1, q).tolist(), strict=True):
            logits = [Decimal(v) for v in p[:k]]
            weights = [v.exp() for v in logits]
            total = Decimal(0)
            for c in range(k):
                prob = weights[c] / sum(weights)
                for d in range(q):
                    mu = Decimal(p[k + c * q + d])
                    inv_s = (-Decimal(max(p[k + k * q + c * q + d], -7.0))).exp()
                    value = 2 * Decimal(x[d]) / (levels - 1) - 1
                    a, b = inv_s * (value + half - mu), inv_s * (value - half - mu)
                    upper = 1 if x[d] == levels - 1 else sigmoid(a)
                    lower = 0 if x[d] == 0 else sigmoid(b)
                    if lower > Decimal("0.5"):  # the same difference as 1 - CDFs, without cancelling near 1
                        upper = 0 if x[d] == levels - 1 else sigmoid(-a)
                        lower = sigmoid(-b)
                        upper, lower = lower, upper
                    prob *= upper - lower
                total += prob
            out.append(float(-total.ln()))
    return out


def dmol_params(head: DiscretizedLogisticMixtureHead, lead: tuple[int, ...], seed: int = 0,
                extreme: bool = False) -> torch.Tensor:
    g = seeded(seed)
    k, q = head.mixtures, head.target_dim
    params = torch.randn(*lead, head.num_params, generator=g, dtype=torch.float64)
    params[..., k:k + k * q] *= 0.8
    params[..., k + k * q:] = torch.rand(*lead, k * q, generator=g, dtype=torch.float64) * 5 - 5  # log s in [-5, 0]
    if extreme:
        n = params[..., 0].numel()
        flat = params.view(n, -1)
        mus = torch.tensor([-40.0, -1.0, -0.9999, 0.0, 0.3, 1.0, 1.2, 40.0], dtype=torch.float64)
        scales = torch.tensor([-20.0, -7.0, -6.5, -4.0, 0.0, 3.0, 30.0, 120.0], dtype=torch.float64)
        flat[:, k:k + k * q] = mus[torch.randint(0, 8, (n, k * q), generator=g)]
        flat[:, k + k * q:] = scales[torch.randint(0, 8, (n, k * q), generator=g)]
    return params


@pytest.mark.parametrize("levels", [2, 7, 256])
@pytest.mark.parametrize("extreme", [False, True])
def test_dmol_pmf_sums_to_one(levels: int, extreme: bool) -> None:
    head = DiscretizedLogisticMixtureHead(8, 1, 3, levels)
    n = 64
    params = dmol_params(head, (n,), seed=levels, extreme=extreme)
    ids = torch.arange(levels)
    nll = head.nll(params[:, None].expand(n, levels, -1), ids.expand(n, levels))
    assert bool(torch.isfinite(nll).all())
    torch.testing.assert_close(nll.neg().exp().sum(-1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(head.log_pmf(params[:, None])[:, 0, 0], -nll, rtol=1e-12, atol=1e-12)
    # float32 parameters: the pmf still sums to 1 up to float32 rounding
    nll32 = head.nll(params.float()[:, None].expand(n, levels, -1), ids.expand(n, levels))
    assert nll32.dtype == torch.float32 and bool(torch.isfinite(nll32).all())
    torch.testing.assert_close(nll32.neg().exp().sum(-1), torch.ones(n), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k,q", [(1, 1), (4, 3)])
@pytest.mark.parametrize("extreme", [False, True])
def test_dmol_nll_matches_cdf_differences(k: int, q: int, extreme: bool) -> None:
    levels = 256
    head = DiscretizedLogisticMixtureHead(8, q, k, levels)
    params = dmol_params(head, (3, 4), seed=k + q, extreme=extreme)
    ids = torch.randint(0, levels, (3, 4, q), generator=seeded(9))
    ids[0, 0], ids[0, 1] = 0, levels - 1  # the edge bins
    nll = head.nll(params, ids)
    ref = torch.tensor(dmol_reference(params, ids, k, q, levels), dtype=torch.float64).view(3, 4)
    torch.testing.assert_close(nll, ref, rtol=1e-9, atol=1e-9)


def test_dmol_float_and_level_targets_agree() -> None:
    levels, q = 256, 3
    head = DiscretizedLogisticMixtureHead(8, q, 4, levels)
    params = dmol_params(head, (2, 5))
    ids = torch.randint(0, levels, (2, 5, q), generator=seeded(4))
    ids[0, 0] = torch.tensor([0, levels - 1, 1])
    values = head.from_levels(ids)
    assert float(values.min()) >= -1 and float(values.max()) <= 1
    assert torch.equal(head.to_levels(values), ids)
    jitter = (torch.rand(values.shape, generator=seeded(5)) - 0.5) * (0.9 / (levels - 1))  # inside the bin
    expected = head.nll(params, ids)
    torch.testing.assert_close(head.nll(params, values), expected, rtol=0, atol=0)
    torch.testing.assert_close(head.nll(params, values + jitter), expected, rtol=0, atol=0)
    torch.testing.assert_close(head.nll(params, values.double()), expected, rtol=0, atol=0)
    # out-of-range values snap to the edge levels; out-of-range ids are an error
    assert head.to_levels(torch.tensor([-3.0, 2.0])).tolist() == [0, levels - 1]
    with pytest.raises(ValueError, match="level ids"):
        head.nll(params, ids + levels)
    # Q == 1: ids (B, T) and (B, T, 1) are the same targets
    head1 = DiscretizedLogisticMixtureHead(8, 1, 2, levels)
    params1 = dmol_params(head1, (2, 5))
    torch.testing.assert_close(head1.nll(params1, ids[..., 0]), head1.nll(params1, ids[..., :1]), rtol=0, atol=0)


def test_dmol_bits_per_dim() -> None:
    head = DiscretizedLogisticMixtureHead(8, 3, 2, 256)
    nll = torch.tensor([3 * math.log(2) * 8.0])
    assert head.bits_per_dim(nll).item() == pytest.approx(8.0)
    assert bits_per_dim(nll, 3).item() == pytest.approx(8.0)
    params = dmol_params(head, (1, 1))
    ids = torch.tensor([[[0, 100, 255]]])
    prob = math.exp(-dmol_reference(params, ids, 2, 3, 256)[0])
    assert head.bits_per_dim(head.nll(params, ids)).item() == pytest.approx(-math.log2(prob) / 3, rel=1e-9)


def test_dmol_mean_std_mode_match_enumeration() -> None:
    levels = 64
    head = DiscretizedLogisticMixtureHead(8, 1, 3, levels)
    params = dmol_params(head, (4,), seed=11, extreme=True)
    grid = torch.arange(levels)
    p = head.nll(params[:, None].expand(4, levels, -1), grid.expand(4, levels)).neg().exp()
    values = head.from_levels(grid, torch.float64)
    mean = (p * values).sum(-1)
    std = (p * values.square()).sum(-1).sub(mean.square()).clamp(min=0).sqrt()
    torch.testing.assert_close(head.mean(params[:, None])[:, 0, 0], mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(head.std(params[:, None])[:, 0, 0], std, rtol=1e-6, atol=1e-7)
    assert torch.equal(head.mode(params[:, None])[:, 0, 0], values[p.argmax(-1)])
    assert torch.equal(head.sample(params[:, None], 0.0), head.mode(params[:, None]))


def test_dmol_marginals_match_joint_enumeration() -> None:
    levels, q = 8, 2
    head = DiscretizedLogisticMixtureHead(8, q, 3, levels)
    params = dmol_params(head, (1,), seed=12)
    pairs = torch.cartesian_prod(torch.arange(levels), torch.arange(levels))  # (levels^2, 2)
    joint = head.nll(params.expand(levels * levels, -1)[None], pairs[None]).neg().exp().view(levels, levels)
    assert joint.sum().item() == pytest.approx(1.0, abs=1e-12)
    marginals = torch.stack([joint.sum(1), joint.sum(0)])  # (q, levels)
    torch.testing.assert_close(head.log_pmf(params)[0].exp(), marginals, rtol=1e-10, atol=1e-12)
    values = head.from_levels(torch.arange(levels), torch.float64)
    torch.testing.assert_close(head.mean(params)[0], (marginals * values).sum(-1), rtol=1e-10, atol=1e-12)
    assert torch.equal(head.mode(params)[0], values[marginals.argmax(-1)])


def test_dmol_samples_match_the_pmf() -> None:
    levels, n = 32, 100_000
    head = DiscretizedLogisticMixtureHead(8, 1, 3, levels)
    params = dmol_params(head, (1, 1), seed=13)
    params[..., 3:6] = torch.tensor([-0.7, 0.1, 0.98])  # one mean near the top edge
    params[..., 6:] = torch.tensor([-2.5, -1.5, -3.0])
    draws = head.sample(params.expand(n, 1, -1), generator=seeded(14))
    assert draws.shape == (n, 1, 1) and draws.dtype == torch.float64
    assert torch.equal(draws, head.sample(params.expand(n, 1, -1), generator=seeded(14)))
    ids = head.to_levels(draws)
    torch.testing.assert_close(head.from_levels(ids, torch.float64), draws, rtol=0, atol=0)  # on the grid
    counts = torch.bincount(ids.view(-1), minlength=levels)
    pmf = head.log_pmf(params)[0, 0, 0].exp()
    assert chi_square_p(counts, pmf) > 1e-3
    # temperature t: logits / t and scales * sqrt(t), i.e. the pmf of the tempered parameters
    t = 0.6
    tempered = params.clone()
    tempered[..., :3] /= t
    tempered[..., 6:] += 0.5 * math.log(t)
    counts_t = torch.bincount(head.to_levels(head.sample(params.expand(n, 1, -1), t, seeded(15))).view(-1),
                              minlength=levels)
    assert chi_square_p(counts_t, head.log_pmf(tempered)[0, 0, 0].exp()) > 1e-3


def test_dmol_gradcheck() -> None:
    levels, k, q = 16, 3, 2
    head = DiscretizedLogisticMixtureHead(4, q, k, levels).double()
    params = dmol_params(head, (2, 3), seed=16)
    params[0, 0, k + k * q:] = torch.tensor([-6.5, 0.5, 25.0, -2.0, -1.0, 40.0])  # tiny and huge scales
    ids = torch.randint(0, levels, (2, 3, q), generator=seeded(17))
    ids[0, 0], ids[0, 1] = torch.tensor([0, levels - 1]), torch.tensor([levels - 1, 0])
    params.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: head.nll(p, ids), (params,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dmol_is_finite_at_the_edges_and_for_tiny_or_huge_scales(dtype: torch.dtype) -> None:
    levels, k, q = 256, 2, 2
    head = DiscretizedLogisticMixtureHead(4, q, k, levels)
    params = torch.zeros(4, 3, head.num_params, dtype=dtype)
    params[..., k:k + k * q] = torch.tensor([-1.0, 1.0, 30.0, -30.0], dtype=dtype)
    params[0, :, k + k * q:] = -50.0  # clamped to -7
    params[1, :, k + k * q:] = 100.0  # the bin width / scale underflows in float32
    params[2, :, k + k * q:] = -7.0
    params[3, :, k + k * q:] = torch.tensor([-7.0, 0.0, 100.0, -20.0], dtype=dtype)
    params.requires_grad_(True)
    ids = torch.tensor([[0, 0], [levels - 1, levels - 1], [0, 128]]).expand(4, 3, q)
    nll = head.nll(params, ids)
    nll.sum().backward()
    assert bool(torch.isfinite(nll).all()) and bool(torch.isfinite(params.grad).all())
    ref = torch.tensor(dmol_reference(params.detach().double(), ids, k, q, levels), dtype=torch.float64).view(4, 3)
    torch.testing.assert_close(nll.double(), ref, rtol=1e-5 if dtype == torch.float32 else 1e-9, atol=1e-4)
    for fn in (head.mean, head.std, head.mode):
        assert bool(torch.isfinite(fn(params.detach())).all())
    assert bool(torch.isfinite(head.sample(params.detach(), generator=seeded(0))).all())


def test_dmol_initialisation_is_spread() -> None:
    head = DiscretizedLogisticMixtureHead(16, 1, 5, 256)
    params = head(torch.zeros(1, 1, 16))
    _, mu, _ = head.components(params)
    assert mu[0, 0, :, 0].unique().numel() == 5
    std = head.std(params).item()
    assert 0.3 < std < 0.8


# ---------------------------------------------------------------------------------------------------------------
# Categorical


def test_categorical_nll_sample_and_mode() -> None:
    vocab, n, t = 10, 100_000, 0.7
    head = CategoricalHead(8, vocab)
    logits = torch.randn(2, 3, vocab, generator=seeded(20))
    target = torch.randint(0, vocab, (2, 3), generator=seeded(21))
    expected = -torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
    torch.testing.assert_close(head.nll(logits, target), expected)
    assert head.discrete and head.target_dim == 1 and head.num_params == vocab
    assert torch.equal(head.sample(logits, 0.0), logits.argmax(-1))
    assert torch.equal(head.mode(logits), logits.argmax(-1))
    draws = head.sample(logits[:1, :1].expand(n, 1, vocab), t, seeded(22))
    assert draws.shape == (n, 1) and draws.dtype == torch.long
    assert torch.equal(draws, head.sample(logits[:1, :1].expand(n, 1, vocab), t, seeded(22)))
    counts = torch.bincount(draws.view(-1), minlength=vocab)
    assert chi_square_p(counts, torch.softmax(logits[0, 0].double() / t, -1)) > 1e-3
    for fn in (head.mean, head.std):
        with pytest.raises(NotImplementedError, match="no mean"):
            fn(logits)


def test_categorical_tie() -> None:
    head = CategoricalHead(8, 10)
    table = torch.nn.Parameter(torch.randn(10, 8))
    head.tie(table)
    assert head.proj.weight is table
    with pytest.raises(ValueError, match="cannot tie"):
        head.tie(torch.nn.Parameter(torch.randn(8, 10)))


# ---------------------------------------------------------------------------------------------------------------
# Building from the config


@pytest.mark.parametrize("kwargs,cls,q,num_params", [
    ({"head": "categorical", "vocab_size": 50}, CategoricalHead, 1, 50),
    ({"head": "mog", "input": "linear", "in_dim": 3, "mixtures": 4, "min_std": 0.01}, MixtureOfGaussiansHead, 3,
     4 * (1 + 2 * 3)),
    ({"head": "mog", "out_dim": 2, "mixtures": 1}, MixtureOfGaussiansHead, 2, 1 * (1 + 2 * 2)),
    ({"head": "dmol", "mixtures": 5, "levels": 16}, DiscretizedLogisticMixtureHead, 1, 5 * 3),
    ({"head": "dmol", "out_dim": 3, "mixtures": 2}, DiscretizedLogisticMixtureHead, 3, 2 * (1 + 2 * 3)),
])
def test_build_head_from_config(kwargs: dict, cls: type, q: int, num_params: int) -> None:
    cfg = ModelConfig(**kwargs)
    head = build_head(cfg, 12)
    assert type(head) is cls and HEADS[cfg.head].emits == cls.emits == head.emits
    assert head.target_dim == q == cfg.target_dim and head.num_params == num_params
    assert head.discrete == (cfg.head != "mog")
    params = head(torch.randn(2, 5, 12))
    assert params.shape == (2, 5, num_params)
    sample = head.sample(params, generator=seeded(0))
    assert sample.shape == ((2, 5) if cfg.head == "categorical" else (2, 5, q))
    assert head.nll(params, sample).shape == (2, 5)
    if cfg.head == "mog":
        assert head.min_std == cfg.min_std and head.mixtures == cfg.mixtures
    if cfg.head == "dmol":
        assert head.levels == cfg.levels and head.mixtures == cfg.mixtures
