"""Next-token sampling from logits (N, V): repetition penalty, temperature, top-k and top-p (nucleus) filtering.

Pure functions over tensors with no knowledge of the model. None of them modifies its input in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the model's logits.

    temperature: divides the logits; 0 = greedy (argmax after the repetition penalty).
    top_k: keep the k largest logits (None = all).
    top_p: nucleus; keep the smallest set of most likely tokens whose probability mass is >= top_p (1 = all).
    repetition_penalty: CTRL-style (Keskar et al. 2019); for tokens already in the sequence, positive logits are
        divided by it and negative ones multiplied by it (1 = off).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0

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

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax rather than a random draw."""
        return self.temperature == 0


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
