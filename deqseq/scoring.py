"""Scoring a text under a model: negative log-likelihood, perplexity and bits per token, with the history of
frozen equilibria carried across segments, so a text longer than the training segment is scored as one
sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import DEQSequenceModel, cond_at, eval_mode


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
    window = model.resolve_window(mem_len)
    total, history = 0.0, None
    with eval_mode(model):
        for start in range(0, ids.shape[1] - 1, segment_len):
            stop = min(start + segment_len, ids.shape[1] - 1)
            out = model(ids[:, start:stop], history=history, cond=cond_at(cond, start, stop), window=window)
            total += float(model.head.nll(out.logits, ids[:, start + 1 : stop + 1]).double().sum())
            history = out.history if carry_history else None
    count = ids.shape[0] * (ids.shape[1] - 1)
    nll = total / count
    return Score(nll=nll, ppl=math.exp(min(nll, 700.0)), bits=nll / math.log(2), tokens=count)
