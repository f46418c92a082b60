"""Token-by-token generation from frozen equilibria.

A causal DEQ's equilibrium at position t depends only on positions <= t, so once a position is solved its z*
can be frozen: the cell keeps what later positions need of it (a transformer's keys and values, a trellis's
left window) as history, like a KV cache. The prompt is solved once at sequence level (prefill); every new
token then solves a single position against that history, never re-solving the prefix.
`check_equivalence` proves, for a given model and sequence, that this computes the same equilibria as one
sequence-level solve.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .cells import History
from .model import DEQSequenceModel
from .sampling import SamplingConfig, sample_next


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


@dataclass
class Generation:
    """Everything `generate(..., details=True)` returns.

    ids:       (N, P + G) prompt followed by the G generated tokens ((N, P + G, I) real values for a model with
               real-valued inputs); row i is prompt i // num_samples.
    logprobs:  (N, G) model log-probability of each generated token.
    lengths:   (N,) number of generated tokens up to and including the first stop token (G without one).
    steps:     the per-token TokenSteps (solver iterations, residuals, timing); steps[0] holds the prompt's
               sequence-level solve (prefill) and the first sample.
    """

    ids: Tensor
    logprobs: Tensor
    lengths: Tensor
    prompt_len: int
    steps: list[TokenStep] = field(default_factory=list)

    @property
    def new_ids(self) -> Tensor:
        """(N, G) the generated tokens only."""
        return self.ids[:, self.prompt_len :]

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


def model_prompt(model: DEQSequenceModel, prompt: Tensor | Sequence) -> Tensor:
    """The prompt as the model's input: (B, P) ids, or (B, P, in_dim) values for real-valued input transforms."""
    weight = next(model.parameters())
    if getattr(model.input, "takes_ids", True):
        return as_prompt(prompt, weight.device)
    return as_values_prompt(prompt, model.input.in_dim, weight.device, weight.dtype)


def next_input(model: DEQSequenceModel, sample: Tensor) -> Tensor:
    """A head's sample for one position (N,) / (N, Q) as the model's next input (N, 1) ids or (N, 1, I) values:
    ids for a categorical head, level ids for a dmol head over vocab_size levels, or the values themselves
    when the input takes real values of the head's width."""
    head, takes_ids = model.head, getattr(model.input, "takes_ids", True)
    if takes_ids and sample.dim() == 1 and not sample.dtype.is_floating_point:
        return sample[:, None]
    if takes_ids and hasattr(head, "to_levels") and sample.shape[-1] == 1 and head.levels == model.config.vocab_size:
        return head.to_levels(sample)[:, :1]
    if not takes_ids and sample.dim() == 2 and sample.shape[-1] == getattr(model.input, "in_dim", -1):
        return sample[:, None, :]
    raise ValueError(f"cannot feed the {model.config.head!r} head's samples of shape {tuple(sample.shape)[1:]} back "
                     f"as inputs to a {model.config.input!r} input: generation needs the input and output spaces "
                     "to match")


def _is_categorical(model: DEQSequenceModel) -> bool:
    return getattr(model.head, "discrete", True) and not hasattr(model.head, "to_levels")


def as_prompt(prompt: Tensor | Sequence[int] | Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """A (B, P) int64 tensor from ids given as (P,) / (B, P) tensor or (nested) lists; P >= 1, equal lengths."""
    if isinstance(prompt, Tensor):
        ids = prompt
    else:
        rows = list(prompt)
        if rows and not isinstance(rows[0], int | Tensor) and len({len(r) for r in rows}) > 1:
            raise ValueError("prompts in one batch must have the same length (one history offset per batch)")
        empty = not rows or (not isinstance(rows[0], int) and len(rows[0]) == 0)
        ids = torch.as_tensor(rows, dtype=torch.long if empty else None)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"prompt must be integer ids of shape (P,) or (B, P), got {ids.dtype} {tuple(ids.shape)}")
    if ids.shape[1] < 1:
        raise ValueError("prompt is empty: generation needs at least one token to condition on")
    return ids.to(device=device, dtype=torch.long)


def _stop_ids(stop: int | Sequence[int] | None, device: torch.device) -> Tensor:
    if stop is None:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.as_tensor([stop] if isinstance(stop, int) else list(stop), dtype=torch.long, device=device)


def _is_local(cond: Tensor) -> bool:
    """Per-position conditioning: vectors (N, T, C), or class ids (N, T)."""
    return cond.dim() == (3 if cond.dtype.is_floating_point else 2)


def _cond_at(cond: Tensor | None, start: int, stop: int) -> Tensor | None:
    """The conditioning of positions [start, stop): global (N, C) / (N,) as is, local (N, T, C) / (N, T) sliced."""
    if cond is None or not _is_local(cond):
        return cond
    return cond[:, start:stop]


def _check_cond(cond: Tensor | None, batch: int, total: int) -> None:
    if cond is None:
        return
    if _is_local(cond) and cond.shape[1] < total - 1:
        raise ValueError(f"local conditioning must cover the prompt and every generated position but the last "
                         f"({total - 1} positions), got {cond.shape[1]}")
    if cond.shape[0] != batch:
        raise ValueError(f"cond has batch size {cond.shape[0]} but there are {batch} prompts")


def _solve_stats(stats) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence iterations, relative residual and convergence of a solve (its last position's system)."""
    def last(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], -1)[:, -1] if t.dim() > 1 else t

    return last(stats.nstep), last(stats.rel_residual), last(stats.converged)


def stream(
    model: DEQSequenceModel,
    prompt: Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    num_samples: int = 1,
    stop: int | Sequence[int] | None = None,
    cond: Tensor | None = None,
    mem_len: int | str | None = "auto",
    warm_start: bool = False,
) -> Iterator[TokenStep]:
    """Generate like `generate`, yielding each position's TokenStep as soon as its tokens are sampled."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    sampling = SamplingConfig(temperature, top_k, top_p, repetition_penalty)
    categorical = _is_categorical(model)
    if not categorical and (top_k is not None or top_p < 1 or repetition_penalty != 1 or stop is not None):
        raise ValueError(f"top_k, top_p, repetition_penalty and stop apply to categorical heads only, not to "
                         f"the {model.config.head!r} head (its samples are drawn by head.sample with temperature)")
    device = next(model.parameters()).device
    window = model.resolve_window(mem_len)
    ids = model_prompt(model, prompt)
    batch, prompt_len = ids.shape[:2]
    _check_cond(cond, batch, prompt_len + max_new_tokens)
    if cond is not None:  # class ids become vectors once, not at every token
        cond = model.condition_vectors(cond.to(device))
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    stop_ids = _stop_ids(stop, device)
    fan_out = torch.arange(batch, device=device).repeat_interleave(num_samples)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            # Prefill: the prompt's positions in one solve, once per prompt; samples share it.
            out = model(ids, cond=_cond_at(cond, 0, prompt_len), window=window)
            history: History = out.history.select(fan_out)
            logits, z = out.logits[:, -1][fan_out], out.z[:, -1:][fan_out]
            iterations, residual, converged = (t[fan_out] for t in _solve_stats(out.stats))
            ids = ids[fan_out]
            cond = cond[fan_out] if cond is not None else None
            finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
            for index in range(max_new_tokens):
                if categorical:
                    token = sample_next(logits, sampling, generator, previous=ids)
                    if stop_ids.numel():
                        token = torch.where(finished, stop_ids[0], token)
                        finished = finished | torch.isin(token, stop_ids)
                    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # no log-softmax in bf16
                    logprobs = torch.log_softmax(wide, dim=-1).gather(1, token[:, None])[:, 0]
                else:
                    token = model.head.sample(logits[:, None], temperature, generator)[:, 0]
                    logprobs = -model.head.nll(logits[:, None], token[:, None])[:, 0]
                step_input = next_input(model, token)
                ids = torch.cat([ids, step_input], dim=1)
                yield TokenStep(index, token, logprobs, iterations, residual, converged, finished.clone(),
                                time.perf_counter() - start, logits)
                if index == max_new_tokens - 1 or bool(finished.all()):
                    return
                start = time.perf_counter()
                position = prompt_len + index
                out = model(step_input, history=history, cond=_cond_at(cond, position, position + 1),
                            z0=z if warm_start else None, window=window)
                history, logits, z = out.history, out.logits[:, -1], out.z
                iterations, residual, converged = _solve_stats(out.stats)
    finally:
        model.train(was_training)


def generate(
    model: DEQSequenceModel,
    prompt: Tensor | Sequence[int] | Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    num_samples: int = 1,
    stop: int | Sequence[int] | None = None,
    cond: Tensor | None = None,
    mem_len: int | str | None = "auto",
    warm_start: bool = False,
    details: bool = False,
) -> Tensor | Generation:
    """Continue each prompt by up to max_new_tokens sampled tokens, solving one new position per token.

    prompt:      ids (P,) or (B, P) (or lists); all prompts of a batch have the same length. A model with
                 real-valued inputs takes observed values (P, I) or (B, P, I) ((P,) when I = 1).
    temperature: 0 = greedy; top_k, top_p (nucleus) and repetition_penalty as in `SamplingConfig`. Other
                 heads draw with `model.head.sample(params, temperature, generator)` (0 = deterministic) and
                 reject top_k, top_p, repetition_penalty and stop.
    seed:        seeds a private generator, so the same seed gives the same samples (None = random).
    num_samples: continuations per prompt; they share the prompt's prefill. Output row i continues
                 prompt i // num_samples.
    stop:        token id(s) that end a sequence; later positions repeat the stop token, and generation ends
                 when every sequence has stopped.
    cond:        conditioning (B, C) global, or (B, P + max_new_tokens - 1, C) local, covering future positions;
                 class ids (B,) or (B, P + max_new_tokens - 1) for a model with one-hot class conditioning.
    mem_len:     how many earlier positions each new position attends to (a sliding window over a transformer's
                 history, which also bounds memory and time per token): "auto" (default) is the model's
                 `default_window`, its own window or else what it saw in training; an integer N the last N;
                 "all" or None no limit beyond the model's own window.
    warm_start:  start each position's solve from the previous position's equilibrium instead of zeros.
    Returns the (N, P + G) ids, or a `Generation` with log-probabilities and solver stats when details=True.
    """
    prompt_ids = model_prompt(model, prompt)
    steps = list(stream(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed,
                        num_samples, stop, cond, mem_len, warm_start))
    new = torch.cat([next_input(model, s.ids) for s in steps], dim=1)
    ids = torch.cat([prompt_ids.repeat_interleave(num_samples, dim=0), new], dim=1)
    if not details:
        return ids
    finished = torch.stack([s.finished for s in steps], dim=1)
    # Position of the first stop token + 1, or every generated token when a sequence never stopped.
    lengths = torch.where(finished.any(1), finished.int().argmax(1) + 1, len(steps))
    return Generation(ids=ids, logprobs=torch.stack([s.logprobs for s in steps], dim=1), lengths=lengths,
                      prompt_len=prompt_ids.shape[1], steps=steps)
