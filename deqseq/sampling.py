"""Next-token sampling from logits (N, V): repetition penalty, temperature, top-k and top-p (nucleus) filtering.

Pure functions over tensors with no knowledge of the model. None of them modifies its input in place.
`SamplingConfig` holds every option of a draw; `sampling_config` is the one place keyword shortcuts
(temperature=0.8, seed=0, ...) become one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the model's logits (heads of real values use temperature and seed only).

    temperature: divides the logits; 0 = greedy (argmax after the repetition penalty).
    top_k: keep the k largest logits (None = all).
    top_p: nucleus; keep the smallest set of most likely tokens whose probability mass is >= top_p (1 = all).
    repetition_penalty: CTRL-style (Keskar et al. 2019); for tokens already in the sequence, positive logits are
        divided by it and negative ones multiplied by it (1 = off).
    seed: seeds the private generator of a generation, so the same seed gives the same samples (None = random).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:  # also rejects NaN
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), "
                             f"got {self.repetition_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise ValueError(f"seed must be None or an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax rather than a random draw."""
        return self.temperature == 0

    @property
    def filters(self) -> bool:
        """True when top-k, top-p or the repetition penalty change the logits (options for ids only)."""
        return self.top_k is not None or self.top_p < 1 or self.repetition_penalty != 1

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A new private generator on `device`, seeded with `seed` (from fresh entropy when it is None)."""
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(self.seed))
        return generator


SAMPLING_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(SamplingConfig))


def sampling_config(sampling: SamplingConfig | None, options: Mapping[str, Any],
                    others: Sequence[str] = ()) -> SamplingConfig:
    """`sampling` (SamplingConfig() when None) with the fields named in `options` replaced (and checked).

    A name that is not a field raises a one-line TypeError that lists the fields and `others` (the caller's
    remaining keyword options, so the list is complete).
    """
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise TypeError(f"sampling must be a SamplingConfig or None, got {sampling!r}; give temperature, top_k, "
                        "... by name")
    unknown = [name for name in options if name not in SAMPLING_OPTIONS]
    if unknown:
        raise TypeError(f"unknown option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; the options "
                        f"are {', '.join((*SAMPLING_OPTIONS, *others))}")
    base = sampling if sampling is not None else SamplingConfig()
    return replace(base, **options) if options else base


def _check_logits(logits: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, V), got {tuple(logits.shape)}")


def apply_repetition_penalty(logits: Tensor, previous: Tensor | None, penalty: float) -> Tensor:
    """Penalise the tokens of `previous` (N, L) in `logits` (N, V): positive logits / penalty, negative ones * penalty.

    A token is penalised once however often it occurs. Returns a new tensor; with penalty 1, previous None or L == 0
    it is a copy of `logits`.
    """
    _check_logits(logits)
    if not (math.isfinite(penalty) and penalty > 0):
        raise ValueError(f"repetition penalty must be a finite number > 0, got {penalty!r}")
    if previous is not None and (previous.dim() != 2 or previous.shape[0] != logits.shape[0]):
        raise ValueError(f"previous must have shape (N, L) with N = {logits.shape[0]}, got {tuple(previous.shape)}")
    if penalty == 1 or previous is None or previous.numel() == 0:
        return logits.clone()
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, previous.long(), True)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Set to -inf every logit below the k-th largest of its row.

    Ties at the k-th value are all kept, so a row keeps exactly the entries >= its k-th largest value (more than k
    when there are ties there). k None or >= V: `logits` is returned unchanged.
    """
    if k is None or k >= logits.shape[-1]:
        return logits
    if k < 1:
        raise ValueError(f"top_k must be None or an integer >= 1, got {k!r}")
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Set to -inf every logit outside the nucleus of its row.

    The nucleus is the smallest set of highest-probability tokens (softmax over the given logits) whose total
    probability is >= p; the most likely token is always kept. The comparison allows a few float ulps of rounding, so
    a set whose exact mass equals p is not extended by one more token. Equal probabilities are ranked by index.
    p == 1: `logits` is returned unchanged.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if p == 1:
        return logits
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    probs = torch.softmax(logits.to(work), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    # Mass of the strictly more likely tokens: a token is needed only while that mass is still short of p.
    mass_before = F.pad(torch.cumsum(sorted_probs, dim=-1)[..., :-1], (1, 0))
    tol = 16 * torch.finfo(work).eps
    drop_sorted = mass_before >= p - tol
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def processed_logits(logits: Tensor, config: SamplingConfig, previous: Tensor | None = None) -> Tensor:
    """The logits (N, V) the next token is drawn from.

    In float32 (float64 if the input is float64): repetition penalty, then / temperature (skipped when greedy),
    then top-k, then top-p on the softmax of the result so far.
    """
    _check_logits(logits)
    x = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    x = apply_repetition_penalty(x, previous, config.repetition_penalty)
    if not config.greedy:
        x = x / config.temperature
    x = top_k_filter(x, config.top_k)
    return top_p_filter(x, config.top_p)


def sample_next(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None = None,
                previous: Tensor | None = None) -> Tensor:
    """Next token ids (N,) int64 from logits (N, V).

    Greedy: the argmax of the penalised logits (lowest index on ties). Otherwise a draw from
    softmax(processed_logits) with `generator`, so a seeded generator gives the same ids every time.
    """
    x = processed_logits(logits, config, previous)
    if config.greedy:
        return x.argmax(dim=-1)
    return torch.multinomial(torch.softmax(x, dim=-1), 1, generator=generator).squeeze(-1)
