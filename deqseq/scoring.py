"""Scoring under a model: the one loop that sums the NLL of segments (score_segments, which training's
evaluation also runs), and a text's negative log-likelihood, perplexity and bits per token (score), with the
history of frozen equilibria carried across segments, so a text longer than the training segment is scored as one
sequence."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor

from .model import DEQSequenceModel, cond_at, eval_mode


@dataclass(frozen=True)
class NLLTotal:
    """nats: the NLL summed over `count` predicted positions (accumulated in float64)."""

    nats: float
    count: int

    @property
    def mean(self) -> float:
        """Mean NLL in nats per predicted position (0 when none was predicted)."""
        return self.nats / max(self.count, 1)


@torch.no_grad()
def score_segments(
    model: DEQSequenceModel,
    segments: Iterable[dict[str, Tensor]],
    *,
    carry_history: bool = False,
    window: int | None = None,
    limit: int = 0,
    device: torch.device | None = None,
) -> NLLTotal:
    """The summed NLL of every target of `segments`, solved one after the other in eval mode, without autograd.

    A segment is a batch {"x": inputs, "t": optional targets, "c": optional conditioning} as DEQSequenceModel.nll
    scores it. With carry_history each segment continues from the frozen equilibria of the one before (the
    segments of one stream), otherwise each starts afresh. window: as in DEQSequenceModel.forward (None: the
    cell's own). limit: score the first `limit` segments only (0: all). Segments are moved to device (default:
    the model's).
    """
    device = device if device is not None else next(model.parameters()).device
    total, count, history = 0.0, 0, None
    with eval_mode(model):
        for segment in islice(segments, limit or None):
            batch = {k: v.to(device) for k, v in segment.items()}
            out = model(batch["x"], history=history, cond=batch.get("c"), window=window)
            nll = model.nll(out, batch)
            total += float(nll.double().sum())
            count += nll.numel()
            history = out.history if carry_history else None
    return NLLTotal(total, count)


def text_segments(ids: Tensor, segment_len: int, cond: Tensor | None = None) -> Iterator[dict[str, Tensor]]:
    """Consecutive segments {"x", "t"[, "c"]} of ids (B, N) that predict every id after the first, segment_len
    positions each (the last may be shorter); cond (B, C) or (B, N, C) is sliced to each segment."""
    for start in range(0, ids.shape[1] - 1, segment_len):
        stop = min(start + segment_len, ids.shape[1] - 1)
        segment = {"x": ids[:, start:stop], "t": ids[:, start + 1 : stop + 1]}
        c = cond_at(cond, start, stop)
        if c is not None:
            segment["c"] = c
        yield segment


@dataclass
class Score:
    """nll: mean NLL in nats per predicted token; ppl = exp(nll); bits = nll / ln 2; tokens predicted."""

    nll: float
    ppl: float
    bits: float
    tokens: int

    def __str__(self) -> str:
        return f"nll {self.nll:.4f} nats/token  ppl {self.ppl:.3f}  bits/token {self.bits:.4f}  ({self.tokens} tokens)"


@torch.no_grad()
def score(
    model: DEQSequenceModel,
    ids: Tensor,
    segment_len: int,
    carry_history: bool = True,
    mem_len: int | str | None = "auto",
    cond: Tensor | None = None,
) -> Score:
    """Score every token of ids (N,) or (B, N) after the first, given all the tokens before it.

    The text is solved segment_len positions at a time; with carry_history each segment continues from the
    frozen equilibria of the previous ones (exactly one sequence-level solve, up to the solver tolerance),
    otherwise every segment starts afresh (as training evaluation does with data.mem_len=0). mem_len is the
    attention window as in `generate` ("auto": the model's default_window, the same default as the command
    line). cond: (B, C) global or (B, N, C) local conditioning.
    """
    if segment_len < 1:
        raise ValueError(f"segment_len must be >= 1, got {segment_len}")
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.shape[1] < 2:
        raise ValueError(f"a text needs at least 2 tokens to be scored (one to predict from), got {ids.shape[1]}")
    ids = ids.to(next(model.parameters()).device)
    total = score_segments(model, text_segments(ids, segment_len, cond), carry_history=carry_history,
                           window=model.resolve_window(mem_len))
    nll = total.mean
    return Score(nll=nll, ppl=perplexity(nll), bits=nll / math.log(2), tokens=total.count)


def perplexity(nll: float) -> float:
    """exp(nll) for a mean NLL in nats; inf where that overflows a float (never a capped, plausible number)."""
    return math.inf if nll >= 709.0 else math.exp(nll)  # NaN stays NaN
