"""Token-by-token generation from frozen equilibria.

A causal DEQ's equilibrium at position t depends only on positions <= t, so once a position is solved its z*
can be frozen: the cell keeps what later positions need of it (a transformer's keys and values, a trellis's
left window) as history, like a KV cache. The prompt is solved once at sequence level (`prefill`); every new
token is drawn from the head's output (`draw`, with a `SamplingConfig`), fed back (`next_input`, as `model.io`
says) and solved as a single position against that history (`step`), never re-solving the prefix. `stream`
is that loop; `generate` collects it.
`check_equivalence` proves, for a given model and sequence, that this computes the same equilibria as one
sequence-level solve.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from solvers import SolverConfig

from .cells import History
from .model import DEQSequenceModel, ModelOutput, cond_at, eval_mode, is_local_cond
from .sampling import SamplingConfig, sample_next, sampling_config


@dataclass
class TokenStep:
    """One generated position, for all N sequences (N = prompts x num_samples).

    ids:        (N,) the sampled tokens (the stop token again for sequences that had already stopped); for a
                real-valued head, the sampled values (N, Q).
    logprobs:   (N,) their log-probabilities (log-densities for real values) under the model (temperature 1,
                no filtering).
    iterations: (N,) solver iterations of the solve whose logits the token was drawn from (for the first
                token, the prefill of the prompt).
    residual:   (N,) relative residual ||f(z)-z|| / ||f(z)|| that solve stopped at.
    converged:  (N,) whether it reached the solver tolerance.
    finished:   (N,) whether the sequence has emitted a stop token (at this step or earlier).
    seconds:    wall time of that solve plus the sampling (for the first token, the prompt's prefill).
    params:     (N, P) the head's parameters the token was drawn from (logits, or mixture parameters whose
                `model.head.mean` / `std` give the predictive mean and spread).
    sampled:    (N,) whether `ids` is a generated token of that sequence. All True for prompts of one length;
                with prompts of different lengths, False where a longer prompt is still being fed (`ids` is its
                next prompt token, `logprobs` its log-probability) or where a sequence already has all its tokens.
    """

    index: int
    ids: Tensor
    logprobs: Tensor
    iterations: Tensor
    residual: Tensor
    converged: Tensor
    finished: Tensor
    seconds: float
    params: Tensor | None = None
    sampled: Tensor | None = None


@dataclass
class Generation:
    """Everything `generate(..., details=True)` returns.

    ids:       (N, P + G) prompt followed by the G generated tokens ((N, P + G, I) real values for a model with
               real-valued inputs); row i is prompt i // num_samples. Prompts of different lengths: (N, max P + G),
               row i is its prompt, its G tokens, then PAD (-1) up to the width.
    logprobs:  (N, G) model log-probability of each generated token (NaN where a row has no token: after a
               row of ragged prompts stopped earlier than the others).
    lengths:   (N,) number of generated tokens up to and including the first stop token (G without one).
    steps:     the per-token TokenSteps (solver iterations, residuals, timing); steps[0] holds the prompt's
               sequence-level solve (prefill) and the first sample.
    prompt_lengths: (N,) each row's prompt length (all equal to prompt_len unless the prompts were ragged).
    """

    ids: Tensor
    logprobs: Tensor
    lengths: Tensor
    prompt_len: int
    steps: list[TokenStep] = field(default_factory=list)
    prompt_lengths: Tensor | None = None

    @property
    def new_ids(self) -> Tensor:
        """(N, G) the generated tokens only."""
        if self.prompt_lengths is None or bool((self.prompt_lengths == self.prompt_len).all()):
            return self.ids[:, self.prompt_len :]
        steps = torch.arange(self.logprobs.shape[1], device=self.ids.device)
        return self.ids.gather(1, self.prompt_lengths.to(self.ids.device)[:, None] + steps)

    @property
    def sequences(self) -> list[Tensor]:
        """Each row's prompt and generated tokens up to and including its first stop token, without padding."""
        prompt = self.prompt_lengths if self.prompt_lengths is not None else torch.full_like(self.lengths,
                                                                                             self.prompt_len)
        return [row[: int(p) + int(n)] for row, p, n in zip(self.ids, prompt, self.lengths, strict=True)]

    @property
    def prefill_seconds(self) -> float:
        """Time of the prompt's solve and the first sample."""
        return self.steps[0].seconds if self.steps else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Tokens per second over all N sequences after the first (one single-position solve each)."""
        seconds = sum(s.seconds for s in self.steps[1:])
        return self.ids.shape[0] * (len(self.steps) - 1) / seconds if seconds > 0 else float("nan")

    @property
    def mean_iterations(self) -> float:
        """Mean solver iterations per generated token (the first token's prefill solve excluded)."""
        later = [s.iterations.float().mean().item() for s in self.steps[1:]]
        return sum(later) / len(later) if later else float("nan")


def as_values_prompt(prompt: Tensor | Sequence, in_dim: int, device: torch.device,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """A (B, P, in_dim) float tensor from real values given as (P,) (when in_dim = 1), (P, in_dim) or
    (B, P, in_dim); P >= 1."""
    x = torch.as_tensor(prompt, dtype=dtype) if not isinstance(prompt, Tensor) else prompt
    if not x.dtype.is_floating_point:
        x = x.to(dtype)
    if x.dim() == 1 and in_dim == 1:
        x = x[:, None]
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"prompt must be real values of shape (P, {in_dim}) or (B, P, {in_dim}), "
                         f"got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError("prompt is empty: generation needs at least one observed step to condition on")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("prompt has non-finite values")
    return x.to(device=device, dtype=dtype)


PAD = -1  # fills Generation.ids after the shorter rows of prompts of different lengths


def model_prompt(model: DEQSequenceModel, prompt: Tensor | Sequence) -> tuple[Tensor, Tensor]:
    """The prompt as the model's input and each row's length: (B, P) ids (rows of a ragged list padded with 0
    up to the longest; positions past a row's length are never fed), or (B, P, in_dim) values for a model that
    reads real values (one length); lengths (B,)."""
    weight = next(model.parameters())
    if model.io.reads == "ids":
        return prompt_rows(prompt, weight.device)
    values = as_values_prompt(prompt, model.io.value_width, weight.device, weight.dtype)
    return values, torch.full((values.shape[0],), values.shape[1], dtype=torch.long, device=weight.device)


def next_input(model: DEQSequenceModel, sample: Tensor) -> Tensor:
    """A head's sample for one position (N,) / (N, Q) as the model's next input (N, 1) ids or (N, 1, I) values,
    as `model.io.feedback` says: ids for a categorical head, level ids for a dmol head over vocab_size levels, or
    the values themselves when the input takes real values of the head's width."""
    step = model.io.as_input(sample, model.head)
    if step is None:
        raise ValueError(f"cannot feed the {model.config.head!r} head's samples of shape {tuple(sample.shape)[1:]} "
                         f"back as inputs to a {model.config.input!r} input: generation needs the input and output "
                         "spaces to match")
    return step


def as_prompt(prompt: Tensor | Sequence[int] | Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """A (B, P) int64 tensor from ids given as (P,) / (B, P) tensor or (nested) lists; P >= 1, equal lengths."""
    ids, lengths = prompt_rows(prompt, device)
    if bool((lengths != ids.shape[1]).any()):
        raise ValueError("prompts in one batch must have the same length here; generate() and stream() take "
                         "prompts of different lengths")
    return ids


def prompt_rows(prompt: Tensor | Sequence[int] | Sequence[Sequence[int]],
                device: torch.device) -> tuple[Tensor, Tensor]:
    """(B, P) int64 ids and their lengths (B,) from a (P,) / (B, P) tensor, a list of ids, or a list of rows
    (lists or 1-D tensors) of any lengths >= 1; shorter rows are padded with 0 up to the longest."""
    if isinstance(prompt, Tensor):
        rows = [prompt] if prompt.dim() <= 1 else list(prompt) if prompt.dim() == 2 else None
        if rows is None or prompt.dtype.is_floating_point or prompt.dtype == torch.bool:
            raise ValueError(f"prompt must be integer ids of shape (P,) or (B, P), got {prompt.dtype} "
                             f"{tuple(prompt.shape)}")
    else:
        items = list(prompt)
        flat = not items or isinstance(items[0], int) or (isinstance(items[0], Tensor) and items[0].dim() == 0)
        rows = [items] if flat else items
    tensors = []
    for row in rows:
        t = row if isinstance(row, Tensor) else torch.as_tensor(list(row), dtype=torch.long)
        if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"prompt must be integer ids of shape (P,) or (B, P), got {t.dtype} {tuple(t.shape)}")
        if t.numel() < 1:
            raise ValueError("prompt is empty: generation needs at least one token to condition on")
        tensors.append(t.to(device=device, dtype=torch.long))
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.long, device=device)
    ids = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=0)
    return ids, lengths


def _stop_ids(stop: int | Sequence[int] | None, device: torch.device) -> Tensor:
    if stop is None:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.as_tensor([stop] if isinstance(stop, int) else list(stop), dtype=torch.long, device=device)


def _check_cond(cond: Tensor | None, batch: int, total: int) -> None:
    if cond is None:
        return
    if is_local_cond(cond) and cond.shape[1] < total - 1:
        raise ValueError(f"local conditioning must cover the prompt and every generated position but the last "
                         f"({total - 1} positions), got {cond.shape[1]}")
    if cond.shape[0] != batch:
        raise ValueError(f"cond has batch size {cond.shape[0]} but there are {batch} prompts")


def _solve_stats(stats) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence iterations, relative residual and convergence of a solve (its last position's system)."""
    def last(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1)[:, -1] if t.dim() > 1 else t

    return last(stats.nstep), last(stats.rel_residual), last(stats.converged)


@dataclass(frozen=True)
class Solved:
    """The newest solved position of N sequences: what the next draw and the next solve need.

    params:  (N, P) the head's output there (logits, or a real-valued head's distribution parameters).
    z:       (N, 1, D) its equilibrium (what a warm start of the next position starts from).
    history: the frozen history of every position so far, this one included.
    iterations, residual, converged: (N,) that solve's stats, as in TokenStep.
    """

    params: Tensor
    z: Tensor
    history: History
    iterations: Tensor
    residual: Tensor
    converged: Tensor

    @classmethod
    def last_of(cls, out: ModelOutput) -> Solved:
        """The last position of a forward pass."""
        return cls(out.params[:, -1], out.z[:, -1:], out.history, *_solve_stats(out.stats))

    def select(self, rows: Tensor) -> Solved:
        """The state of sequences `rows` (N',), repeats allowed (samples fanned out of one prompt's solve)."""
        return Solved(self.params[rows], self.z[rows], self.history.select(rows), self.iterations[rows],
                      self.residual[rows], self.converged[rows])


def prefill(model: DEQSequenceModel, prompt: Tensor, cond: Tensor | None = None,
            window: int | None = None) -> Solved:
    """Solve a prompt (B, P) of ids ((B, P, I) of values) once, at sequence level: the frozen history of its
    P positions and the head's output at the last. cond: conditioning vectors (B, C) or (B, P, C); window: how
    many earlier positions each one attends to (None = all). Call it under torch.no_grad() in eval mode, as
    `stream` does."""
    return Solved.last_of(model(prompt, cond=cond, window=window))


def step(model: DEQSequenceModel, x: Tensor, history: History, cond: Tensor | None = None,
         window: int | None = None, z0: Tensor | None = None, solver: SolverConfig | None = None) -> Solved:
    """Solve one new position x ((N, 1) ids or (N, 1, I) values) against the frozen `history` of the positions
    before it: the head's output there and the history extended by it. z0 (N, 1, D): where the solve starts
    (zeros when None; the previous position's `Solved.z` is a warm start). cond: this position's conditioning.
    solver: the solve's config (None = the model's forward solver; `fused_solver(model)` is its fused twin)."""
    return Solved.last_of(model(x, history=history, cond=cond, z0=z0, window=window, solver=solver))


def fused_solver(model: DEQSequenceModel) -> SolverConfig:
    """The model's forward solver with fused iterations (solvers.fused): the same method, tolerance and
    iteration limit, each iteration one compiled graph. ValueError for a solver the fused path cannot run
    (line search, a user-registered or peer method)."""
    forward = model.deq.settings.forward
    try:
        return replace(forward, fused=True)
    except ValueError as err:
        raise ValueError(f"fused=True: {err}") from None


def draw(model: DEQSequenceModel, params: Tensor, sampling: SamplingConfig, generator: torch.Generator,
         previous: Tensor | None = None) -> Tensor:
    """The next sample from the head's output params (N, P), of the kind `model.io.emits` says: ids (N,) by
    `sample_next` (previous (N, L): the ids so far, for the repetition penalty), else the head's draw at
    sampling.temperature ((N, Q) values). `next_input` makes it what is fed back."""
    if model.io.categorical:
        return sample_next(params, sampling, generator, previous=previous)
    return model.head.sample(params[:, None], sampling.temperature, generator)[:, 0]


def log_prob(model: DEQSequenceModel, params: Tensor, sample: Tensor) -> Tensor:
    """(N,) the log-probability of ids (log-density of values) `sample` under the head's output params (N, P),
    at temperature 1 without filtering."""
    if model.io.categorical:
        wide = params.to(torch.promote_types(params.dtype, torch.float32))  # no log-softmax in bf16
        return torch.log_softmax(wide, dim=-1).gather(1, sample[:, None])[:, 0]
    return -model.head.nll(params[:, None], sample[:, None])[:, 0]


def _prompt_or_stop(token: Tensor, prompt_ids: Tensor, position: int, forced: Tensor, sampled: Tensor,
                    finished: Tensor, stop_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Drawn ids where rows still feed their prompt (`forced`) replaced by the prompt's token, and where rows
    have stopped by the stop token; also which rows have stopped now."""
    if position < prompt_ids.shape[1]:
        token = torch.where(forced, prompt_ids[:, position], token)
    if stop_ids.numel():
        token = torch.where(finished & sampled, stop_ids[0], token)
        finished = finished | (sampled & torch.isin(token, stop_ids))
    return token, finished


def _checked_sampling(model: DEQSequenceModel, max_new_tokens: int, num_samples: int, stop: int | Sequence[int] | None,
                      sampling: SamplingConfig | None, options: dict[str, Any]) -> SamplingConfig:
    """The SamplingConfig of a stream, after its counts and its head's options are checked."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    others = [p.name for p in inspect.signature(stream).parameters.values() if p.kind is p.KEYWORD_ONLY]
    sampling = sampling_config(sampling, options, others)
    if not model.io.categorical and (sampling.filters or stop is not None):
        raise ValueError(f"top_k, top_p, repetition_penalty and stop apply to categorical heads only, not to "
                         f"the {model.config.head!r} head (its samples are drawn by head.sample with temperature)")
    return sampling


Prompt = Tensor | Sequence[int] | Sequence[Sequence[int]]


def stream(
    model: DEQSequenceModel,
    prompt: Prompt,
    max_new_tokens: int,
    sampling: SamplingConfig | None = None,
    *,
    num_samples: int = 1,
    stop: int | Sequence[int] | None = None,
    cond: Tensor | None = None,
    mem_len: int | str | None = "auto",
    warm_start: bool = False,
    fused: bool = False,
    **sampling_options: Any,
) -> Iterator[TokenStep]:
    """Continue each prompt by up to max_new_tokens drawn tokens, yielding each position's TokenStep as soon as
    its tokens are drawn: `prefill` once, then `draw` and `step` (one new position) per token.

    prompt:      ids (P,) or (B, P) (or lists), or a list of rows of different lengths. A model with real-valued
                 inputs takes observed values (P, I) or (B, P, I) ((P,) when I = 1).
    sampling:    how tokens are drawn (`SamplingConfig`: temperature, 0 = greedy; top_k, top_p,
                 repetition_penalty; seed, the same seed giving the same samples); its fields may also be given
                 by name (`temperature=0.8, seed=0`), replacing the config's. Other heads draw with
                 `model.head.sample(params, temperature, generator)` and reject top_k, top_p,
                 repetition_penalty and stop.
    num_samples: continuations per prompt; they share the prompt's prefill. Row i continues prompt
                 i // num_samples.
    stop:        token id(s) that end a sequence; later positions repeat the stop token, and generation ends
                 when every sequence has stopped.
    cond:        conditioning (B, C) global, or (B, P + max_new_tokens - 1, C) local, covering future positions;
                 class ids (B,) or (B, P + max_new_tokens - 1) for a model with one-hot class conditioning.
    mem_len:     how many earlier positions each new position attends to (a sliding window over a transformer's
                 history, which also bounds memory and time per token): "auto" (default) is the model's
                 `default_window`, its own window or else what it saw in training; an integer N the last N;
                 "all" or None no limit beyond the model's own window.
    warm_start:  start each position's solve from the previous position's equilibrium instead of zeros.
    fused:       solve every position after the prompt with fused, compiled solver iterations (`fused_solver`):
                 the same solver and results to rounding, several times less overhead per token, after a
                 compile of a few seconds on first use (per batch size and width).

    Prompts of different lengths are aligned at their first token: the shortest prompt is solved for all rows
    at once, then every step solves one position of every row, feeding a longer row its next prompt token
    (TokenStep.sampled False) until its prompt is used up, so each row computes what generating it alone does
    (its prompt's tail solved token by token instead of in the prefill: equal up to the solver tolerance, as
    `check_equivalence` shows). There are max(P) - min(P) + max_new_tokens steps at most.
    """
    sampling = _checked_sampling(model, max_new_tokens, num_samples, stop, sampling, sampling_options)
    window = model.resolve_window(mem_len)
    prompt_ids, lengths = model_prompt(model, prompt)
    shortest, longest, device = int(lengths.min()), prompt_ids.shape[1], prompt_ids.device
    _check_cond(cond, len(prompt_ids), longest + max_new_tokens)
    cond = model.condition_vectors(cond.to(device)) if cond is not None else None  # once, not at every token
    generator, stop_ids = sampling.generator(device), _stop_ids(stop, device)
    fan_out = torch.arange(len(prompt_ids), device=device).repeat_interleave(num_samples)
    solver = fused_solver(model) if fused else None
    with eval_mode(model), torch.no_grad():
        start = time.perf_counter()
        state = prefill(model, prompt_ids[:, :shortest], cond_at(cond, 0, shortest), window).select(fan_out)
        if window is None:  # room for every position at once: a transformer's store is sized, not doubled
            state = replace(state, history=state.history.reserve(longest + max_new_tokens))
        prompt_ids, lengths, cond = prompt_ids[fan_out], lengths[fan_out], None if cond is None else cond[fan_out]
        fed = prompt_ids[:, :shortest]  # every row's inputs so far (the repetition penalty's history)
        finished = torch.zeros(len(fed), dtype=torch.bool, device=device)
        produced = torch.zeros(len(fed), dtype=torch.long, device=device)
        for index in range(longest - shortest + max_new_tokens):
            position = shortest + index  # where this step's token goes
            forced = lengths > position  # rows still feeding their prompt
            sampled = ~forced & (produced < max_new_tokens)
            token = draw(model, state.params, sampling, generator, previous=fed)
            if model.io.categorical:
                token, finished = _prompt_or_stop(token, prompt_ids, position, forced, sampled, finished, stop_ids)
            x = next_input(model, token)
            fed, produced = torch.cat([fed, x], dim=1), produced + sampled
            yield TokenStep(index, token, log_prob(model, state.params, token), state.iterations, state.residual,
                            state.converged, finished.clone(), time.perf_counter() - start, state.params, sampled)
            if bool((finished | (produced >= max_new_tokens)).all()):
                return
            start = time.perf_counter()
            state = step(model, x, state.history, cond_at(cond, position, position + 1), window,
                         z0=state.z if warm_start else None, solver=solver)


def generate(model: DEQSequenceModel, prompt: Prompt, max_new_tokens: int, sampling: SamplingConfig | None = None,
             *, details: bool = False, **options: Any) -> Tensor | list[Tensor] | Generation:
    """Continue each prompt by up to max_new_tokens drawn tokens, solving one new position per token: `stream`,
    collected. options: stream's (num_samples, stop, cond, mem_len, warm_start, and SamplingConfig's fields by
    name: temperature, top_k, top_p, repetition_penalty, seed).

    Returns the (N, P + G) ids (for prompts of different lengths, a list of N 1-D tensors, prompt then its
    tokens), or a `Generation` with log-probabilities and solver stats when details=True.
    """
    prompt_ids, prompt_lengths = model_prompt(model, prompt)
    ragged = bool((prompt_lengths != prompt_ids.shape[1]).any())
    if ragged:  # the list of rows as given, so that stream pads them itself
        prompt_ids = [row[:n] for row, n in zip(prompt_ids, prompt_lengths.tolist(), strict=True)]
    steps = list(stream(model, prompt_ids, max_new_tokens, sampling, **options))
    num_samples = len(steps[0].ids) // len(prompt_ids)
    prompt_lengths = prompt_lengths.repeat_interleave(num_samples)
    if ragged:
        return _ragged_result(steps, prompt_ids, prompt_lengths, num_samples, options.get("stop"), details)
    return _result(model, steps, prompt_ids, prompt_lengths, num_samples, details)


def _result(model: DEQSequenceModel, steps: list[TokenStep], prompt_ids: Tensor, prompt_lengths: Tensor,
            num_samples: int, details: bool) -> Tensor | Generation:
    """generate's result for prompts of one length: the prompts followed by their sampled tokens."""
    new = torch.cat([next_input(model, s.ids) for s in steps], dim=1)
    ids = torch.cat([prompt_ids.repeat_interleave(num_samples, dim=0), new], dim=1)
    if not details:
        return ids
    finished = torch.stack([s.finished for s in steps], dim=1)
    logprobs = torch.stack([s.logprobs for s in steps], dim=1)
    lengths = torch.where(finished.any(1), finished.int().argmax(1) + 1, len(steps))
    return Generation(ids=ids, logprobs=logprobs, lengths=lengths, prompt_len=prompt_ids.shape[1], steps=steps,
                      prompt_lengths=prompt_lengths)


def _ragged_result(steps: list[TokenStep], prompts: list[Tensor], prompt_lengths: Tensor, num_samples: int,
                   stop: int | Sequence[int] | None, details: bool) -> list[Tensor] | Generation:
    """generate's result for prompts of different lengths: each row's sampled tokens after its own prompt."""
    tokens = torch.stack([s.ids for s in steps], dim=1)
    sampled = torch.stack([s.sampled for s in steps], dim=1)
    rows = [prompts[i // num_samples] for i in range(len(prompt_lengths))]
    new = [t[m] for t, m in zip(tokens, sampled, strict=True)]
    if not details:
        return [torch.cat([p, n]) for p, n in zip(rows, new, strict=True)]
    width = max(len(n) for n in new)  # rows that stopped before the others are padded with the stop token
    fill = _stop_ids(stop, tokens.device)[:1]
    fill = fill.expand(width) if fill.numel() else tokens.new_full((width,), PAD)
    new_ids = torch.stack([torch.cat([n, fill[len(n):]]) for n in new])
    logprob_rows = torch.stack([s.logprobs for s in steps], dim=1)
    logprobs = torch.full(new_ids.shape, math.nan, dtype=logprob_rows.dtype, device=tokens.device)
    for i, (row, m) in enumerate(zip(logprob_rows, sampled, strict=True)):
        logprobs[i, : int(m.sum())] = row[m]
    finished = torch.stack([s.finished for s in steps], dim=1)
    first_stop = [int(m.nonzero()[0]) if bool(m.any()) else -1 for m in finished]
    lengths = torch.tensor([int(sampled[i, : f + 1].sum()) if f >= 0 else width for i, f in enumerate(first_stop)],
                           device=tokens.device)
    longest = int(prompt_lengths.max())
    ids = torch.full((len(rows), longest + width), PAD, dtype=torch.long, device=tokens.device)
    for i, (p, n) in enumerate(zip(rows, new_ids, strict=True)):
        ids[i, : len(p) + width] = torch.cat([p, n])
    return Generation(ids=ids, logprobs=logprobs, lengths=lengths, prompt_len=longest, steps=steps,
                      prompt_lengths=prompt_lengths)
