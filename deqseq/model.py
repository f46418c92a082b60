"""DEQSequenceModel: input transform + optional conditioning + DEQ layer + readout + head."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import solvers
from solvers import SolverConfig

from .cells import History, build_cell
from .deq import DEQLayer, SolverSettings
from .heads import build_head
from .inputs import build_input
from .model_config import ModelConfig
from .model_io import ModelIO, derive_io


@dataclass
class ModelOutput:
    """What a forward pass returns.

    params:      (B, T, P) the head's distribution parameters: logits (B, T, vocab) for the categorical head,
                 mixture weights, means and scales for the mixture heads. `logits` is the same tensor.
    history:     the history extended by these T positions (detached), to continue the sequence later.
    stats:       forward solver stats; `stats.backward` holds the adjoint solve's stats after loss.backward().
    z:           the equilibrium state (B, T, state_dim).
    jac_penalty: the Jacobian penalty at z*, when it was asked for.
    """

    params: Tensor
    history: History
    stats: solvers.SolverStats
    z: Tensor
    jac_penalty: Tensor | None = None

    @property
    def logits(self) -> Tensor:
        """The head's output; for the categorical head, the (B, T, vocab) logits."""
        return self.params


def is_local_cond(cond: Tensor) -> bool:
    """Per-position conditioning: vectors (N, T, C), or class ids (N, T)."""
    return cond.dim() == (3 if cond.dtype.is_floating_point else 2)


def cond_at(cond: Tensor | None, start: int, stop: int) -> Tensor | None:
    """The conditioning of positions [start, stop): global (N, C) / (N,) as is, local (N, T, C) / (N, T) sliced."""
    if cond is None or not is_local_cond(cond):
        return cond
    return cond[:, start:stop]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode for the block and restore its train/eval mode afterwards, also on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class DEQSequenceModel(nn.Module):
    """A causal sequence model whose single layer is the equilibrium of a weight-tied cell.

    model(x) solves all positions of x at once; passing the returned history back in continues the
    sequence, so a sequence can be solved in chunks or one token at a time with the same result.

    Inputs are ids (B, T) or real values (B, T, in_dim), as the input transform takes; the head is an independent
    choice (categorical, mixture of Gaussians, discretized logistic mixture). `input` and `head` replace the
    modules the config names with the user's own: `input` maps x to (B, T, config.embed_dim), `head` maps the
    readout (B, T, readout_dim) to parameters and has `nll(params, target)` (and `sample` for generation).

    `io` (a deqseq.model_io.ModelIO) says what the model reads, what its head emits, what a sample feeds back and
    what the default targets are. It is derived from the registry entries of the config's input and head; a
    user's module may declare `reads` / `emits` (and its sizes) as attributes, or pass `io=` to state it outright
    (the rule: deqseq.model_io).
    """

    def __init__(self, config: ModelConfig, solver: SolverSettings | None = None, input: nn.Module | None = None,
                 head: nn.Module | None = None, io: ModelIO | None = None):
        super().__init__()
        self.config = config
        self._io_given: bool | None = None  # set once the modules exist; see __setattr__
        self.input = input if input is not None else build_input(config)
        self.cond = nn.Linear(config.cond_dim, config.embed_dim) if config.cond_dim > 0 else None
        self.deq = DEQLayer(build_cell(config), solver if solver is not None else SolverSettings())
        self.head = head if head is not None else build_head(config, self.deq.cell.readout_dim)
        if config.tie_embeddings:
            self.head.tie(self.input.weight)
        self._user_modules = {"input": input is not None, "head": head is not None}
        self._io_given = io is not None
        self.io = io if io is not None else self._derive_io()
        self.last_stats: solvers.SolverStats | None = None
        self.last_history: History | None = None  # what the last forward leaves for the next segment

    def _derive_io(self) -> ModelIO:
        user = self._user_modules
        return derive_io(self.config, self.input, self.head, user_input=user["input"], user_head=user["head"])

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        # An input or head swapped in after construction is the user's: `io` follows it, unless io= was given.
        if name in ("input", "head") and self._io_given is False:
            self._user_modules[name] = True
            self.io = self._derive_io()

    @property
    def settings(self) -> SolverSettings:
        """The solver settings in use; assign a new SolverSettings (or change fields) to switch e.g. grad mode."""
        return self.deq.settings

    @settings.setter
    def settings(self, value: SolverSettings) -> None:
        if not isinstance(value, SolverSettings):
            raise TypeError(f"settings must be a SolverSettings, got {type(value).__name__}")
        self.deq.settings = value

    @property
    def default_window(self) -> int | None:
        """The attention window generation and scoring use unless told otherwise: the cell's own window, else
        trained_len - 1 earlier positions (what each query saw in training), else None (unlimited). Cells without
        a window (trellis) keep a bounded history anyway and get None."""
        cell = self.deq.cell
        if not cell.has_window or cell.window is not None:
            return cell.window if cell.has_window else None
        n = self.config.trained_len
        return n - 1 if n is not None else None

    def resolve_window(self, window: int | str | None) -> int | None:
        """A window argument as a number or None: "auto" is `default_window`; "all" or None the cell's own window
        (unlimited if it has none); an integer >= 0 that many earlier positions."""
        if window == "auto":
            return self.default_window
        if window is None or window == "all":
            return None
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"window (mem_len) must be 'auto', 'all', None or an integer >= 0, got {window!r}")
        return window

    def condition_vectors(self, cond: Tensor) -> Tensor:
        """Conditioning as vectors: class ids (B,) / (B, T) one-hot encoded over cond_dim classes (checked to be
        in range), vectors as they are. Generation converts once, so its per-token steps skip the check."""
        if self.cond is None:
            raise ValueError("cond was given but the model has ModelConfig.cond_dim=0")
        if cond.dtype.is_floating_point:
            return cond
        dim = self.config.cond_dim
        if cond.dim() not in (1, 2) or bool((cond < 0).any() | (cond >= dim).any()):
            raise ValueError(f"class conditioning must be ids in [0, {dim}) of shape (B,) or (B, T), got "
                             f"{tuple(cond.shape)} with values {cond.min().item()}..{cond.max().item()}")
        return F.one_hot(cond.long(), dim).to(self.cond.weight.dtype)

    def embed(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The embedded input (B, T, d_embed) the injection is computed from, with the conditioning added.

        cond is (B, cond_dim) for one vector per sequence or (B, T, cond_dim) for one per position; integer
        class ids (B,) or (B, T) are one-hot encoded over cond_dim classes.
        """
        self.io.check_input(x)
        e = self.input(x)
        if cond is None:
            return e
        cond = self.condition_vectors(cond)
        dim = self.config.cond_dim
        if cond.dim() not in (2, 3) or cond.shape[0] != e.shape[0] or cond.shape[-1] != dim or (
            cond.dim() == 3 and cond.shape[1] != e.shape[1]
        ):
            raise ValueError(f"cond must have shape (B, {dim}) or (B, T, {dim}) "
                             f"with B, T = {tuple(e.shape[:2])}, got {tuple(cond.shape)}")
        c = self.cond(cond.to(e.dtype))
        return e + (c[:, None] if c.dim() == 2 else c)

    def forward(
        self,
        x: Tensor,
        history: History | None = None,
        cond: Tensor | None = None,
        z0: Tensor | None = None,
        attn_mask: Tensor | None = None,
        jacobian: bool = False,
        window: int | None = None,
        solver: SolverConfig | None = None,
    ) -> ModelOutput:
        """Head parameters of the T positions of x ((B, T) ids or (B, T, in_dim) values) after the frozen
        `history` (None = a sequence start). window: earlier positions each query attends to in this solve, for
        cells with a window (None = the cell's own; generation and scoring pass `default_window`). solver: this
        call's forward solver (None = settings.forward)."""
        out = self.deq(self.embed(x, cond), history=history, z0=z0, attn_mask=attn_mask, jacobian=jacobian,
                       window=window, solver=solver)
        self.last_stats, self.last_history = out.stats, out.history
        params = self.head(self.deq.cell.readout(out.z))
        return ModelOutput(params=params, history=out.history, stats=out.stats, z=out.z, jac_penalty=out.jac_penalty)

    def next_step_targets(self, x: Tensor) -> Tensor:
        """The targets of positions 0..T-2 when none are given: the next inputs x[:, 1:], which needs the input
        and the output to live in the same space (`io.feedback`: ids scored by a categorical head over the same
        vocabulary, level ids by a dmol head over as many levels, or real values of the head's width)."""
        targets = self.io.next_step_targets(x)
        if targets is not None:
            return targets
        what = f"ids {tuple(x.shape)}" if not x.dtype.is_floating_point else f"values {tuple(x.shape)}"
        raise ValueError(f"the batch has no targets 't' and its inputs ({what}) are not in the {self.config.head!r} "
                         f"head's output space (target_dim={self.io.target_dim}); give batch['t'] with the targets")

    def nll(self, out: ModelOutput, batch: dict) -> Tensor:
        """Per-position NLL in nats (B, T') of a forward output against batch["t"], or against the next inputs
        (positions 0..T-2) when "t" is absent."""
        target = batch.get("t")
        if target is not None:
            return self.head.nll(out.params, target)
        return self.head.nll(out.params[:, :-1], self.next_step_targets(batch["x"]))

    def loss(self, batch: dict, with_output: bool = False):
        """Mean negative log-likelihood (nats per position) of a batch, plus the weighted Jacobian penalty when it
        is drawn.

        batch: {"x": inputs (B, T) ids or (B, T, in_dim) values, "t": optional targets, "c": optional
        conditioning, "history": optional history}. Without "t" the targets are the next inputs (see
        `next_step_targets`). The penalty is computed in training mode when settings.jac_weight > 0, with
        probability jac_prob. metrics: "loss", "nll", "jac" (when computed) and the forward solver stats
        "fwd_*". The backward (adjoint) solve only runs in loss.backward(); read `model.last_stats.backward`
        after it. Returns (loss, metrics), or (loss, metrics, output) with with_output=True.
        """
        s = self.settings
        use_jac = self.training and s.jac_weight > 0 and bool(torch.rand(()) < s.jac_prob)
        out = self(batch["x"], history=batch.get("history"), cond=batch.get("c"), jacobian=use_jac)
        nll = self.nll(out, batch).mean()
        loss = nll
        metrics = {"nll": nll.item()}
        if use_jac:
            loss = loss + s.jac_weight * out.jac_penalty
            metrics["jac"] = out.jac_penalty.item()
        metrics["loss"] = loss.item()
        metrics.update(out.stats.summary("fwd_"))
        return (loss, metrics, out) if with_output else (loss, metrics)
