"""DEQSequenceModel: input transform + optional conditioning + DEQ layer + readout + head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import solvers

from .cells import History, build_cell
from .config import ModelConfig, SolverSettings
from .deq import DEQLayer
from .heads import build_head
from .inputs import build_input


@dataclass
class ModelOutput:
    """What a forward pass returns.

    logits:      (B, T, vocab) from the head.
    history:     the history extended by these T positions (detached), to continue the sequence later.
    stats:       forward solver stats; `stats.backward` holds the adjoint solve's stats after loss.backward().
    z:           the equilibrium state (B, T, state_dim).
    jac_penalty: the Jacobian penalty at z*, when it was asked for.
    """

    logits: Tensor
    history: History
    stats: solvers.SolverStats
    z: Tensor
    jac_penalty: Tensor | None = None


def _build_cell(cfg: ModelConfig):
    """The cell the config names, injecting cfg.embed_dim input features."""
    if cfg.cell == "transformer":
        return build_cell("transformer", d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff,
                          d_input=cfg.embed_dim, dropout=cfg.dropout, norm=cfg.norm,
                          weight_norm=cfg.weight_norm, window=cfg.window, state_skip=cfg.state_skip)
    return build_cell("trellis", hidden=cfg.d_model, d_input=cfg.embed_dim, kernel_size=cfg.kernel_size,
                      dilation=cfg.dilation, dropout=cfg.dropout, weight_norm=cfg.weight_norm)


class DEQSequenceModel(nn.Module):
    """A causal sequence model whose single layer is the equilibrium of a weight-tied cell.

    model(x) solves all positions of x at once; passing the returned history back in continues the
    sequence, so a sequence can be solved in chunks or one token at a time with the same result.
    """

    def __init__(self, config: ModelConfig, solver: SolverSettings | None = None):
        super().__init__()
        self.config = config
        self.input = build_input(config)
        self.cond = nn.Linear(config.cond_dim, config.embed_dim) if config.cond_dim > 0 else None
        self.deq = DEQLayer(_build_cell(config), solver if solver is not None else SolverSettings())
        self.head = build_head(config, self.deq.cell.readout_dim)
        if config.tie_embeddings:
            self.head.tie(self.input.weight)
        self.last_stats: solvers.SolverStats | None = None
        self.last_history: History | None = None  # what the last forward leaves for the next segment

    @property
    def settings(self) -> SolverSettings:
        """The solver settings in use; assign a new SolverSettings (or change fields) to switch e.g. grad mode."""
        return self.deq.settings

    @settings.setter
    def settings(self, value: SolverSettings) -> None:
        if not isinstance(value, SolverSettings):
            raise TypeError(f"settings must be a SolverSettings, got {type(value).__name__}")
        self.deq.settings = value

    def embed(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """The embedded input (B, T, d_embed) the injection is computed from, with the conditioning added.

        cond is (B, cond_dim) for one vector per sequence or (B, T, cond_dim) for one per position.
        """
        e = self.input(x)
        if cond is None:
            return e
        if self.cond is None:
            raise ValueError("cond was given but the model has ModelConfig.cond_dim=0")
        if cond.dim() not in (2, 3) or cond.shape[0] != e.shape[0] or cond.shape[-1] != self.config.cond_dim or (
            cond.dim() == 3 and cond.shape[1] != e.shape[1]
        ):
            raise ValueError(f"cond must have shape (B, {self.config.cond_dim}) or (B, T, {self.config.cond_dim}) "
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
    ) -> ModelOutput:
        """Logits of the T positions of x (B, T) after the frozen `history` (None = a sequence start)."""
        out = self.deq(self.embed(x, cond), history=history, z0=z0, attn_mask=attn_mask, jacobian=jacobian)
        self.last_stats, self.last_history = out.stats, out.history
        logits = self.head(self.deq.cell.readout(out.z))
        return ModelOutput(logits=logits, history=out.history, stats=out.stats, z=out.z, jac_penalty=out.jac_penalty)

    def loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        """Mean negative log-likelihood (nats) of a batch, plus the weighted Jacobian penalty when it is drawn.

        batch: {"x": inputs (B, T), "t": optional targets (B, T), "c": optional conditioning, "history":
        optional history}. Without "t" the targets are the next inputs: logits[:, :-1] score x[:, 1:].
        The penalty is computed in training mode when settings.jac_weight > 0, with probability jac_prob.
        metrics: "loss", "nll", "jac" (when computed) and the forward solver stats "fwd_*". The backward
        (adjoint) solve only runs in loss.backward(); read `model.last_stats.backward` after it.
        """
        s = self.settings
        use_jac = self.training and s.jac_weight > 0 and bool(torch.rand(()) < s.jac_prob)
        x = batch["x"]
        out = self(x, history=batch.get("history"), cond=batch.get("c"), jacobian=use_jac)
        if batch.get("t") is not None:
            nll = self.head.nll(out.logits, batch["t"])
        else:
            nll = self.head.nll(out.logits[:, :-1], x[:, 1:])
        nll = nll.mean()
        loss = nll
        metrics = {"nll": nll.item()}
        if use_jac:
            loss = loss + s.jac_weight * out.jac_penalty
            metrics["jac"] = out.jac_penalty.item()
        metrics["loss"] = loss.item()
        metrics.update(out.stats.summary("fwd_"))
        return loss, metrics
