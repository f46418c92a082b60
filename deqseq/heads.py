"""Output heads: from the readout of the equilibrium (B, T, in_dim) to a distribution over the next value.

Every head shares one interface (see `Head`): `forward(h)` maps the readout to ONE parameter tensor (B, T, P),
`nll(params, target)` scores targets in nats per position (summed over the target's Q dimensions, so
nats/dim = nll / target_dim and bits/dim = `bits_per_dim(nll, target_dim)`), and `sample(params, temperature,
generator)` draws targets using only the given generator. The heads:

- "categorical" (`CategoricalHead`): logits over a vocabulary; targets are ids (B, T).
- "mog" (`MixtureOfGaussiansHead`): a mixture of diagonal Gaussians over Q real values; targets (B, T, Q).
- "dmol" (`DiscretizedLogisticMixtureHead`): the PixelCNN++ discretized mixture of logistics over `levels`
  equally spaced values in [-1, 1]; targets are values (B, T, Q) or level ids.

Every head declares what its samples are (`emits`): "ids" (params are logits over `vocab` ids), "values" (reals
(B, T, Q)) or "levels" (values on a grid of `levels` points in [-1, 1], with `to_levels` / `from_levels`).
`HEADS` maps a ModelConfig.head name to its builder and `emits`; `register_head` adds one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

Emits = Literal["ids", "values", "levels"]  # what a head's samples are; see ModelIO.emits

class HeadSpec(Protocol):
    """What build_head reads of a config (deqseq.config.ModelConfig has it; this module does not import it)."""

    head: str
    vocab_size: int
    mixtures: int
    min_std: float
    levels: int

    @property
    def target_dim(self) -> int: ...


def bits_per_dim(nll: Tensor, target_dim: int) -> Tensor:
    """Bits per dimension of a per-position NLL in nats: nll / (target_dim * ln 2)."""
    return nll / (target_dim * math.log(2.0))


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 parameters, else float32 (so bf16/fp16 parameters are scored in float32)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_temperature(temperature: float) -> None:
    try:
        ok = math.isfinite(float(temperature)) and float(temperature) >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = deterministic), got {temperature!r}")


def _draw_component(log_weights: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Indices (...) of mixture components drawn from softmax(log_weights / temperature), (..., K) -> (...)."""
    probs = torch.softmax(log_weights / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def _take(x: Tensor, k: Tensor) -> Tensor:
    """Component k of x: x (..., K, Q), k (...) -> (..., Q)."""
    index = k[..., None, None].expand(*k.shape, 1, x.shape[-1])
    return x.gather(-2, index).squeeze(-2)


class Head(nn.Module):
    """The interface of an output head.

    emits:      what a sample is: "ids", "values" or "levels" (values on a level grid; see deqseq.model_io).
    discrete:   whether targets are integer-valued (ids, levels) rather than real values.
    target_dim: Q, the dimensions of one position's target (1 for the categorical head: one id per position).
    num_params: P, the width of the parameter tensor that `forward` returns.
    """

    emits: Emits
    discrete: bool
    target_dim: int
    num_params: int

    def forward(self, h: Tensor) -> Tensor:
        """Distribution parameters (B, T, P) of the readout h (B, T, in_dim)."""
        raise NotImplementedError

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        """Negative log-likelihood in nats (B, T) of each position's target, summed over its Q dimensions."""
        raise NotImplementedError

    def sample(self, params: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """A draw with the target's shape and dtype; 0 = deterministic. Randomness only from `generator`."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The predictive mean per dimension (B, T, Q)."""
        raise NotImplementedError(f"{type(self).__name__} has no mean")

    def std(self, params: Tensor) -> Tensor:
        """The predictive standard deviation per dimension (B, T, Q)."""
        raise NotImplementedError(f"{type(self).__name__} has no standard deviation")

    def mode(self, params: Tensor) -> Tensor:
        """The most probable target."""
        raise NotImplementedError(f"{type(self).__name__} has no mode")

    def bits_per_dim(self, nll: Tensor) -> Tensor:
        """Bits per target dimension of an NLL in nats from `nll`: nll / (target_dim * ln 2)."""
        return bits_per_dim(nll, self.target_dim)

    def _check_params(self, params: Tensor) -> None:
        if params.shape[-1] != self.num_params:
            raise ValueError(f"{type(self).__name__} expects parameters (..., {self.num_params}), "
                             f"got {tuple(params.shape)}")

    def _real_target(self, params: Tensor, target: Tensor) -> Tensor:
        """target as (..., Q), accepting (...) when Q == 1; checked against the parameters' leading shape."""
        lead = params.shape[:-1]
        if self.target_dim == 1 and target.shape == lead:
            target = target[..., None]
        if target.shape != (*lead, self.target_dim):
            raise ValueError(f"{type(self).__name__} expects targets of shape {(*lead, self.target_dim)} for "
                             f"parameters {tuple(params.shape)}, got {tuple(target.shape)}")
        return target


class CategoricalHead(Head):
    """Logits over a vocabulary: a linear map (B, T, in_dim) -> (B, T, vocab). Targets are ids (B, T)."""

    emits = "ids"
    discrete = True

    def __init__(self, in_dim: int, vocab: int):
        super().__init__()
        self.in_dim, self.vocab = in_dim, vocab
        self.target_dim, self.num_params = 1, vocab
        self.proj = nn.Linear(in_dim, vocab)

    @classmethod
    def from_config(cls, cfg: HeadSpec, in_dim: int) -> CategoricalHead:
        """Logits over cfg.vocab_size ids of in_dim readout features."""
        return cls(in_dim, cfg.vocab_size)

    def tie(self, weight: nn.Parameter) -> None:
        """Share a (vocab, in_dim) matrix, e.g. the input embedding table, as the output weight."""
        if weight.shape != self.proj.weight.shape:
            raise ValueError(f"cannot tie a weight of shape {tuple(weight.shape)} to a head of shape "
                             f"{tuple(self.proj.weight.shape)}")
        self.proj.weight = weight

    def forward(self, h: Tensor) -> Tensor:
        """Logits (B, T, vocab)."""
        return self.proj(h)

    def nll(self, logits: Tensor, target: Tensor) -> Tensor:
        """Negative log-likelihood in nats of the integer targets (B, T), per element (B, T)."""
        flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        return flat.view(target.shape)

    def sample(self, logits: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Ids (B, T) drawn from softmax(logits / temperature); temperature 0 = argmax. The generator must live on
        the logits' device."""
        _check_temperature(temperature)
        if temperature == 0:
            return self.mode(logits)
        return _draw_component(logits.to(_compute_dtype(logits)), temperature, generator)

    def mode(self, logits: Tensor) -> Tensor:
        """The most probable ids (B, T): the argmax of the logits."""
        return logits.argmax(dim=-1)

    def mean(self, logits: Tensor) -> Tensor:
        """Not defined: ids are labels, not numbers."""
        raise NotImplementedError("CategoricalHead has no mean or std: its ids are unordered labels (use mode or "
                                  "sample)")

    def std(self, logits: Tensor) -> Tensor:
        """Not defined: ids are labels, not numbers."""
        raise NotImplementedError("CategoricalHead has no mean or std: its ids are unordered labels (use mode or "
                                  "sample)")


class _MixtureHead(Head):
    """The parameter layout both mixture heads share: (P = K + 2*K*Q) = K mixture logits, then K*Q means, then
    K*Q scale parameters (component-major: k*Q + q), all from one linear map of the readout."""

    def _init_layout(self, in_dim: int, target_dim: int, mixtures: int, mean_spread: float, scale_bias: float) -> None:
        """The linear map, initialised so an untrained head has equal weights, component means spread evenly
        over [-mean_spread, mean_spread] (so components differ) and every scale parameter at scale_bias."""
        self.in_dim, self.target_dim, self.mixtures = in_dim, target_dim, mixtures
        self.num_params = mixtures * (1 + 2 * target_dim)
        self.proj = nn.Linear(in_dim, self.num_params)
        k, q = mixtures, target_dim
        with torch.no_grad():
            self.proj.bias.zero_()
            spread = torch.linspace(-mean_spread, mean_spread, k) if k > 1 else torch.zeros(1)
            self.proj.bias[k:k + k * q] = spread.repeat_interleave(q)
            self.proj.bias[k + k * q:] = scale_bias

    def forward(self, h: Tensor) -> Tensor:
        """Parameters (B, T, K + 2*K*Q)."""
        return self.proj(h)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log mixture weights (..., K), means (..., K, Q), raw scale parameters (..., K, Q)), in float32 or
        float64."""
        self._check_params(params)
        params = params.to(_compute_dtype(params))
        k, q = self.mixtures, self.target_dim
        logits, mu, scale = params.split([k, k * q, k * q], dim=-1)
        lead = params.shape[:-1]
        return torch.log_softmax(logits, dim=-1), mu.reshape(*lead, k, q), scale.reshape(*lead, k, q)


class MixtureOfGaussiansHead(_MixtureHead):
    """A mixture of K Gaussians with diagonal covariance over Q real values per position.

    params (P = K + 2*K*Q): K mixture logits, then K*Q means (component-major: k*Q + q), then K*Q raw scales;
    std = softplus(raw) + min_std (min_std is the floor that keeps the likelihood bounded).
    nll = -logsumexp_k [log_softmax(logits)_k + sum_q log N(x_q; mu_kq, std_kq)], targets (B, T, Q) (or (B, T) when
    Q == 1). Temperature t > 0 samples with logits / t and stds * sqrt(t); t = 0 returns the mean of the most
    probable component. The mode of a Gaussian mixture has no closed form, so `mode` raises.
    """

    emits = "values"
    discrete = False

    def __init__(self, in_dim: int, target_dim: int, mixtures: int = 5, min_std: float = 1e-3):
        super().__init__()
        if min_std <= 0:
            raise ValueError(f"min_std must be > 0, got {min_std}")
        self.min_std = float(min_std)
        # An untrained head: means over [-1, 1] and std ~ 1 (softplus(raw) + min_std = 1).
        raw_std = math.log(math.expm1(1.0 - self.min_std)) if self.min_std < 1 else -5.0
        self._init_layout(in_dim, target_dim, mixtures, mean_spread=1.0, scale_bias=raw_std)

    @classmethod
    def from_config(cls, cfg: HeadSpec, in_dim: int) -> MixtureOfGaussiansHead:
        """cfg.mixtures Gaussians over cfg.target_dim values with std >= cfg.min_std."""
        return cls(in_dim, cfg.target_dim, cfg.mixtures, cfg.min_std)

    def components(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log mixture weights (..., K), means (..., K, Q), stds (..., K, Q)), in float32 or float64."""
        log_pi, mu, raw = self._split(params)
        return log_pi, mu, F.softplus(raw) + self.min_std

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        """Negative log-likelihood in nats (B, T) of real targets (B, T, Q), summed over the Q dims."""
        log_pi, mu, std = self.components(params)
        x = self._real_target(params, target).to(mu.dtype)[..., None, :]
        z = (x - mu) / std
        log_normal = -0.5 * z.square() - std.log() - 0.5 * math.log(2 * math.pi)
        return -torch.logsumexp(log_pi + log_normal.sum(-1), dim=-1)

    def mean(self, params: Tensor) -> Tensor:
        """The mixture mean sum_k pi_k mu_k, per dimension (B, T, Q)."""
        log_pi, mu, _ = self.components(params)
        return (log_pi.exp()[..., None] * mu).sum(-2)

    def std(self, params: Tensor) -> Tensor:
        """The mixture standard deviation per dimension (B, T, Q)."""
        log_pi, mu, std = self.components(params)
        pi = log_pi.exp()[..., None]
        mean = (pi * mu).sum(-2, keepdim=True)
        # = sum_k pi_k (std_k^2 + mu_k^2) - mean^2, written centred so it cannot cancel below zero.
        return (pi * (std.square() + (mu - mean).square())).sum(-2).sqrt()

    def sample(self, params: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Values (B, T, Q): a component from softmax(logits / t), then its Gaussian with std * sqrt(t); t = 0
        gives the mean of the most probable component. The generator must live on the parameters' device."""
        _check_temperature(temperature)
        log_pi, mu, std = self.components(params)
        if temperature == 0:
            return _take(mu, log_pi.argmax(-1))
        k = _draw_component(log_pi, temperature, generator)
        noise = torch.randn(mu.shape[:-2] + mu.shape[-1:], generator=generator, device=mu.device, dtype=mu.dtype)
        return _take(mu, k) + _take(std, k) * math.sqrt(temperature) * noise


def _log1mexp(d: Tensor, log_d: Tensor) -> Tensor:
    """log(1 - exp(-d)) for d > 0, given also log d (which stays exact where d itself underflows)."""
    small = d < 1e-6
    safe = torch.where(small, torch.ones_like(d), d)
    exact = torch.where(safe > math.log(2.0), torch.log1p(-torch.exp(-safe)), torch.log(-torch.expm1(-safe)))
    return torch.where(small, log_d - 0.5 * d, exact)  # log(1 - e^-d) = log d - d/2 + O(d^2)


class DiscretizedLogisticMixtureHead(_MixtureHead):
    """The PixelCNN++ discretized mixture of K logistics over `levels` equally spaced values in [-1, 1].

    Level l has the value 2*l/(levels-1) - 1 and owns the bin of half-width 1/(levels-1) around it; the edge levels
    take the tails (l = 0 the mass from -inf, l = levels-1 the mass up to +inf), so the pmf sums to 1. Per component
    k and dim q a mean and a log-scale (clamped >= -7); the mixture weights are shared by the Q dims of a position:
    log p(x) = logsumexp_k [log pi_k + sum_q log P_k(x_q)]. This is PixelCNN++ without its RGB channel coupling
    (dims are independent given the component).

    params (P = K + 2*K*Q): K mixture logits, K*Q means, K*Q log-scales (component-major: k*Q + q).
    Targets: values (B, T, Q) in [-1, 1], snapped to the nearest level (values outside are clamped), or integer
    level ids (B, T, Q), or (B, T) when Q == 1.

    A bin's log-mass is log(sigmoid(a) - sigmoid(b)) with a, b the scaled bin edges, evaluated as
    logsigmoid(a) + logsigmoid(-b) + log(1 - exp(-(a - b))): exact and finite for every mean and scale. PixelCNN++
    instead substitutes log-density + log(bin width) where its float32 difference of CDFs falls below 1e-5; that
    guard is not needed here, and would make the pmf sum to 1 only to ~1e-5.

    Temperature t > 0 samples with logits / t and scales * sqrt(t) (the component variances times t); t = 0 gives
    the mode. mean, std and mode are exact, by enumerating the levels of each dim's marginal pmf; for Q > 1 `mode`
    is the per-dim marginal mode. Bits per dim: `bits_per_dim(nll)` = nll / (Q ln 2).
    """

    emits = "levels"
    discrete = True
    min_log_scale = -7.0

    def __init__(self, in_dim: int, target_dim: int, mixtures: int = 5, levels: int = 256):
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}")
        self.levels = levels
        # An untrained head: means over [-0.5, 0.5], each component's std ~ 0.5 (logistic std = scale * pi / sqrt 3).
        log_scale = math.log(0.5 * math.sqrt(3) / math.pi)
        self._init_layout(in_dim, target_dim, mixtures, mean_spread=0.5, scale_bias=log_scale)

    @classmethod
    def from_config(cls, cfg: HeadSpec, in_dim: int) -> DiscretizedLogisticMixtureHead:
        """cfg.mixtures logistics over cfg.target_dim values on cfg.levels levels."""
        return cls(in_dim, cfg.target_dim, cfg.mixtures, cfg.levels)

    def to_levels(self, values: Tensor) -> Tensor:
        """Level ids (long) of the nearest levels to values (values outside [-1, 1] go to the edge levels)."""
        ids = torch.round((values.to(_compute_dtype(values)) + 1) * (0.5 * (self.levels - 1)))
        return ids.clamp(0, self.levels - 1).long()

    def from_levels(self, ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """The values 2*id/(levels-1) - 1 of level ids."""
        return ids.to(dtype) * (2.0 / (self.levels - 1)) - 1

    def components(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log mixture weights (..., K), means (..., K, Q), clamped log-scales (..., K, Q)), float32 or float64."""
        log_pi, mu, log_s = self._split(params)
        return log_pi, mu, log_s.clamp(min=self.min_log_scale)

    def _log_mass(self, ids: Tensor, mu: Tensor, log_s: Tensor) -> Tensor:
        """log P(level id) under logistics (mu, exp(log_s)); all arguments broadcast together."""
        half = 1.0 / (self.levels - 1)
        inv_s = torch.exp(-log_s)
        centred = self.from_levels(ids, mu.dtype) - mu
        upper = inv_s * (centred + half)
        lower = inv_s * (centred - half)
        log_width = math.log(2 * half) - log_s  # log(upper - lower), exact even when it underflows
        interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + _log1mexp(log_width.exp(), log_width)
        bottom = F.logsigmoid(upper)  # level 0: sigmoid(upper) - 0
        top = F.logsigmoid(-lower)  # last level: 1 - sigmoid(lower)
        return torch.where(ids == 0, bottom, torch.where(ids == self.levels - 1, top, interior))

    def _target_ids(self, params: Tensor, target: Tensor) -> Tensor:
        target = self._real_target(params, target)
        if target.dtype.is_floating_point:
            return self.to_levels(target)
        if target.numel() and bool((target < 0).any() | (target >= self.levels).any()):
            raise ValueError(f"level ids must be in [0, {self.levels}), got values "
                             f"{target.min().item()}..{target.max().item()}")
        return target.long()

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        """Negative log-likelihood in nats (B, T) of values (B, T, Q) in [-1, 1] or level ids, summed over the Q
        dims (nats/dim = nll / Q)."""
        log_pi, mu, log_s = self.components(params)
        ids = self._target_ids(params, target)[..., None, :]
        return -torch.logsumexp(log_pi + self._log_mass(ids, mu, log_s).sum(-1), dim=-1)

    def log_pmf(self, params: Tensor) -> Tensor:
        """The log-probabilities (B, T, Q, levels) of every level of each dim's marginal distribution."""
        log_pi, mu, log_s = self.components(params)
        grid = torch.arange(self.levels, device=mu.device)
        out = None
        for k in range(self.mixtures):  # one component at a time: memory B*T*Q*levels, not K times that
            term = log_pi[..., k, None, None] + self._log_mass(grid, mu[..., k, :, None], log_s[..., k, :, None])
            out = term if out is None else torch.logaddexp(out, term)
        return out

    def mean(self, params: Tensor) -> Tensor:
        """The exact mean of each dim's discretized distribution (B, T, Q)."""
        p = self.log_pmf(params).exp()
        return (p * self.from_levels(torch.arange(self.levels, device=p.device), p.dtype)).sum(-1)

    def std(self, params: Tensor) -> Tensor:
        """The exact standard deviation of each dim's discretized distribution (B, T, Q)."""
        p = self.log_pmf(params).exp()
        values = self.from_levels(torch.arange(self.levels, device=p.device), p.dtype)
        mean = (p * values).sum(-1, keepdim=True)
        return (p * (values - mean).square()).sum(-1).sqrt()

    def mode(self, params: Tensor) -> Tensor:
        """The value (B, T, Q) of the most probable level of each dim's marginal pmf (the exact mode when Q == 1)."""
        log_p = self.log_pmf(params)
        return self.from_levels(log_p.argmax(-1), log_p.dtype)

    def sample(self, params: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Values (B, T, Q) on the level grid: a component from softmax(logits / t), then a logistic draw with scale
        * sqrt(t) snapped to its level (the tails to the edge levels), an exact draw from the discretized pmf;
        t = 0 gives the mode. Level ids: `to_levels(sample)`. The generator must live on the parameters' device."""
        _check_temperature(temperature)
        if temperature == 0:
            return self.mode(params)
        log_pi, mu, log_s = self.components(params)
        k = _draw_component(log_pi, temperature, generator)
        u = torch.rand(mu.shape[:-2] + mu.shape[-1:], generator=generator, device=mu.device, dtype=mu.dtype)
        scale = torch.exp(_take(log_s, k)) * math.sqrt(temperature)
        x = _take(mu, k) + scale * (torch.log(u) - torch.log1p(-u))  # inverse logistic CDF; u = 0 gives -inf
        return self.from_levels(self.to_levels(x.clamp(-1, 1)), mu.dtype)


@dataclass(frozen=True)
class HeadEntry:
    """A registered head: build(cfg, in_dim) makes the head a model config (ModelConfig.head = its name)
    describes, reading in_dim readout features per position; `emits` says what its samples are."""

    build: Callable[[Any, int], nn.Module]
    emits: Emits


HEADS: Registry[HeadEntry] = Registry("head")


def register_head(name: str, build: Callable[[Any, int], nn.Module], *, emits: Emits,
                  replace: bool = False) -> HeadEntry:
    """Make `name` a valid ModelConfig.head whose head is build(cfg, in_dim) (see `Head` for the interface; a
    head that emits "ids" returns logits, one that emits "levels" has to_levels / from_levels); ValueError for a
    name already registered (unless replace=True) or an unknown `emits`."""
    if emits not in get_args(Emits):
        raise ValueError(f"head {name!r}: emits={emits!r} must be one of {', '.join(get_args(Emits))}")
    return HEADS.register(name, HeadEntry(build, emits), replace=replace)


def heads_emitting(*kinds: Emits) -> tuple[str, ...]:
    """The registered head names whose `emits` is one of kinds, in registration order."""
    return tuple(name for name, entry in HEADS.items() if entry.emits in kinds)


def build_head(cfg: HeadSpec, in_dim: int) -> nn.Module:
    """The head named by cfg.head, reading in_dim features per position."""
    return HEADS.entry(cfg.head).build(cfg, in_dim)


register_head("categorical", CategoricalHead.from_config, emits=CategoricalHead.emits)
register_head("mog", MixtureOfGaussiansHead.from_config, emits=MixtureOfGaussiansHead.emits)
register_head("dmol", DiscretizedLogisticMixtureHead.from_config, emits=DiscretizedLogisticMixtureHead.emits)
