"""Continuing a real-valued series from an observed prefix: sampled continuations and their spread.

The prefix is solved once at sequence level; each continuation then adds one position at a time against the
frozen history (as in `generate`), all samples sharing the prefix's solve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .generation import Generation, generate
from .model import DEQSequenceModel
from .sampling import SamplingConfig


@dataclass
class Continuation:
    """Sampled continuations of one observed prefix.

    prefix:   (P, I) the observed values.
    samples:  (N, G, Q) N sampled continuations of G steps.
    mean:     (G, Q) the mean over samples: a Monte-Carlo estimate of the predictive mean G steps ahead.
    std:      (G, Q) the standard deviation over samples (0 when N = 1).
    first_mean, first_std: (Q,) the exact one-step-ahead predictive mean and std after the prefix (the head's).
    truth:    (G, Q) the true continuation when it is known (held-out data), else None.
    generation: the underlying Generation (solver stats, log-densities of the sampled values).
    """

    prefix: Tensor
    samples: Tensor
    mean: Tensor
    std: Tensor
    first_mean: Tensor
    first_std: Tensor
    truth: Tensor | None
    generation: Generation

    def table(self, max_rows: int | None = None) -> str:
        """The continuation as text: step, mean, std, mean - 2 std, mean + 2 std, the truth and sample 1 (first
        dimension when Q > 1)."""
        head = ["step", "mean", "std", "mean-2std", "mean+2std"] + (["truth"] if self.truth is not None else [])
        head.append("sample1")
        rows = ["  ".join(f"{h:>10}" for h in head)]
        steps = self.samples.shape[1] if max_rows is None else min(max_rows, self.samples.shape[1])
        for g in range(steps):
            m, s = self.mean[g, 0].item(), self.std[g, 0].item()
            values = [m, s, m - 2 * s, m + 2 * s]
            if self.truth is not None:
                values.append(self.truth[g, 0].item())
            values.append(self.samples[0, g, 0].item())
            rows.append(f"{self.prefix.shape[0] + g:>10}  " + "  ".join(f"{v:>10.4f}" for v in values))
        return "\n".join(rows)


def continue_series(
    model: DEQSequenceModel,
    prefix: Tensor,
    steps: int,
    sampling: SamplingConfig | None = None,
    *,
    num_samples: int = 16,
    cond: Tensor | None = None,
    truth: Tensor | None = None,
    mem_len: int | str | None = "auto",
    **sampling_options: Any,
) -> Continuation:
    """Sample `num_samples` continuations of `steps` steps after the observed `prefix` (P, I) ((P,) for I = 1).

    sampling (or its fields by name: temperature=, seed=): how values are drawn, as in `stream`;
    cond: one sequence's conditioning: (C,) global, (P + steps - 1, C) local, or a class id (a 0-dim tensor);
    truth: the true continuation (steps, Q), kept for tables and plots. The model must take real values whose
    width equals its head's (so samples can be fed back). mem_len: the attention window, as in `generate`.
    """
    if model.io.reads != "values":
        raise ValueError(f"continue_series needs a model of real-valued inputs, not input={model.config.input!r}")
    x = prefix[:, None] if prefix.dim() == 1 else prefix
    if cond is not None:
        cond = cond[None]
    gen = generate(model, x[None], steps, sampling, num_samples=num_samples, cond=cond, mem_len=mem_len,
                   details=True, **sampling_options)
    samples = gen.ids[:, x.shape[0]:].detach().cpu()
    first = gen.steps[0].params[:1, None]
    first_mean = model.head.mean(first)[0, 0].detach().cpu()
    first_std = model.head.std(first)[0, 0].detach().cpu()
    std = samples.std(dim=0, unbiased=True) if num_samples > 1 else torch.zeros_like(samples[0])
    if truth is not None:
        truth = (truth[:, None] if truth.dim() == 1 else truth)[:steps].detach().cpu()
    return Continuation(prefix=x.detach().cpu(), samples=samples, mean=samples.mean(dim=0), std=std,
                        first_mean=first_mean, first_std=first_std, truth=truth, generation=gen)


def plot_continuation(result: Continuation, path: str, title: str = "", max_lines: int = 8) -> None:
    """Write a PNG of the prefix, up to max_lines sampled continuations, the mean +- 2 std band over samples
    and the truth when known (first dimension). Needs matplotlib (`pip install matplotlib`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install matplotlib (or pip install deqseq[plot])") from None
    p = result.prefix.shape[0]
    observed = torch.arange(p)
    future = torch.arange(p, p + result.samples.shape[1])
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=120)
    ax.plot(observed, result.prefix[:, 0], color="black", lw=1.6, label="observed prefix")
    for i in range(min(max_lines, result.samples.shape[0])):
        ax.plot(future, result.samples[i, :, 0], color="tab:blue", lw=0.7, alpha=0.45,
                label="sampled continuations" if i == 0 else None)
    mean, std = result.mean[:, 0], result.std[:, 0]
    ax.fill_between(future, mean - 2 * std, mean + 2 * std, color="tab:orange", alpha=0.25,
                    label=f"mean ± 2σ over {result.samples.shape[0]} samples")
    ax.plot(future, mean, color="tab:orange", lw=1.4, label="sample mean")
    if result.truth is not None:
        ax.plot(future, result.truth[:, 0], color="black", lw=1.0, ls="--", label="true continuation")
    ax.axvline(p - 0.5, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
