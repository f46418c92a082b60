"""A DEQ next-token discriminator: real vs generated next tokens, scored with a 2T layout and an attention mask.

The generator predicts token i from the ground truth before it. The discriminator sees both in one sequence of
2T positions (C = token embedding width):

    position  0        1        ..  T-1          T        T+1      ..  2T-1
    content   init     prev_0   ..  prev_{T-2}   curr_0   curr_1   ..  curr_{T-1}

The first half is the ground truth shifted right behind a learned initial embedding and is causal over itself.
Prediction i (position T+i) attends to positions 0..i (the initial embedding and the ground truth before token i)
and to itself: never to another prediction and never to the ground truth at i or later. Its score says whether
curr_i is the real token i (curr = prev) or a generated one.

Positions. A position stands for a token index: first-half position j holds token j-1 (the initial embedding is
"token -1"), so it gets position j; prediction i is a candidate for token i, so it gets position i+1, the same as
prev_i would have in the first half. Prediction i is then processed exactly like slot i+1 of a causal sequence
whose token i was replaced by the candidate. Both the learned absolute position embeddings (max_len+1 rows) and the
cell's rotary tables use these positions, so relative offsets do not depend on T.

Leakage. The mask is closed under composition (everything prediction i attends to attends only to positions
prediction i may see), so the exact equilibrium at T+i depends on nothing outside the mask. The solver must not
add a path: with batch_dims=1 one Anderson/Broyden system spans the whole sequence and its mixing coefficients
come from every position's residual, so iterates leak across the mask (3-iteration solves: scores move by ~4e-4
when masked inputs change), and where the map has several fixed points the one reached depends on masked inputs
(measured on a non-contracting random cell: scores moved by 0.4). The default solves one system per position
(batch_dims=2), where each position's solver state is its own and every iterate respects the mask. The only
shared quantity left is the iteration at which the solve stops (all systems stop together), which moves a score
by about the solver tolerance (~1e-5 at tol 1e-4) and carries no gradient: gradients across the mask are zero.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from solvers import SolverConfig

from .cells import TransformerCell, TransformerContext, TransformerHistory, rope_tables
from .deq import DEQLayer, SolverSettings
from .layout import concat_layout, layout_positions, next_token_mask

# The cell's state -> q/k/v weights start scaled by this factor. With PyTorch's default initialisation the random
# map does not contract (d_model=64, T=64: Anderson at tol 1e-4 reaches 0-90% of positions in 30 iterations; Picard
# diverges); scaled by 0.2 every position converges in 10-12 iterations (6 seeds, both solves).
STATE_INIT_GAIN = 0.2


def default_discriminator_settings() -> SolverSettings:
    """Anderson (tol 1e-4, 30 iterations) on per-position systems (batch_dims=2), implicit gradient."""
    cfg = SolverConfig(method="anderson", max_iter=30, tol=1e-4, stop="rel")
    return SolverSettings(forward=cfg, backward=cfg, grad="implicit", batch_dims=2)


def _mixes_positions(settings: SolverSettings) -> bool:
    """Whether a solve would combine residuals of different positions (one system per sequence, not Picard)."""
    return settings.batch_dims != 2 and any(c.method != "picard" for c in (settings.forward, settings.backward))


class _LayoutTransformerCell(TransformerCell):
    """A TransformerCell whose rotary tables follow layout_positions instead of 0..2T-1.

    Only the rotary tables change; the mask arrives through attn_mask like any custom mask.
    """

    def prepare(
        self, x: Tensor, history: TransformerHistory | None = None, attn_mask: Tensor | None = None,
        window: int | None = None,
    ) -> TransformerContext:
        """TransformerCell.prepare with rotary tables at the layout's positions (x holds the 2T positions)."""
        if history is not None and (history.offset or history.k.shape[2]):
            raise ValueError("the discriminator solves whole layouts: it takes no history")
        if x.shape[1] % 2:
            raise ValueError(f"a discriminator layout has an even number of positions, got {x.shape[1]}")
        ctx = super().prepare(x, history, attn_mask, window)
        T = x.shape[1] // 2
        cos, sin = rope_tables(0, T + 1, self.head_dim, self.rope_base, x.device, x.dtype)
        pos = layout_positions(T, x.device)
        ctx.cos, ctx.sin = cos[pos], sin[pos]
        return ctx


class NextTokenDiscriminator(nn.Module):
    """Scores each predicted next token as real or generated, given the ground truth before it.

    emb_dim is the width C of the token embeddings it reads; max_len the longest T. The body is a DEQ: a
    TransformerCell run to its fixed point by DEQLayer with next_token_mask as its attention mask.
    settings: solver settings of that DEQ (default_discriminator_settings() when None); settings that mix
    positions in one system (batch_dims=1 with Anderson/Broyden) leak across the mask and raise a warning.
    """

    def __init__(
        self,
        emb_dim: int,
        max_len: int,
        d_model: int = 64,
        n_heads: int = 4,
        d_ff: int = 128,
        settings: SolverSettings | None = None,
    ):
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        settings = settings if settings is not None else default_discriminator_settings()
        if _mixes_positions(settings):
            warnings.warn(
                f"discriminator settings with batch_dims={settings.batch_dims} and method "
                f"{settings.forward.method!r}/{settings.backward.method!r} mix positions in one system: "
                "scores leak information across the attention mask; use batch_dims=2",
                stacklevel=2,
            )
        self.emb_dim, self.max_len, self.d_model = emb_dim, max_len, d_model
        self.init = nn.Parameter(0.02 * torch.randn(emb_dim))
        self.proj = nn.Linear(emb_dim, d_model)
        self.in_norm = nn.LayerNorm(d_model)  # the injection's scale no longer depends on the embedding table's
        self.pos = nn.Embedding(max_len + 1, d_model)  # positions 0..T (see layout_positions)
        nn.init.normal_(self.pos.weight, std=0.02)
        cell = _LayoutTransformerCell(d_model=d_model, n_heads=n_heads, d_ff=d_ff, d_input=d_model)
        with torch.no_grad():
            cell.qkv.weight.mul_(STATE_INIT_GAIN)
        self.deq = DEQLayer(cell, settings)
        self.score = nn.Linear(d_model, 1)
        self.last_stats = None  # forward solver stats of the last call

    @property
    def settings(self) -> SolverSettings:
        """The DEQ's solver settings."""
        return self.deq.settings

    attention_mask = staticmethod(next_token_mask)

    def layout(self, prev: Tensor, curr: Tensor) -> Tensor:
        """[init, prev[:, :-1], curr] as (B, 2T, C) from prev and curr (B, T, C)."""
        if prev.dim() != 3 or prev.shape != curr.shape or prev.shape[-1] != self.emb_dim:
            raise ValueError(
                f"prev and curr must both have shape (B, T, {self.emb_dim}), "
                f"got {tuple(prev.shape)} and {tuple(curr.shape)}"
            )
        if not 1 <= prev.shape[1] <= self.max_len:
            raise ValueError(f"sequence length T={prev.shape[1]} must be in [1, max_len={self.max_len}]")
        return concat_layout(self.init, prev, curr)

    def states(self, prev: Tensor, curr: Tensor) -> Tensor:
        """The DEQ equilibrium (B, 2T, d_model) of the layout of prev and curr (B, T, C)."""
        dtype = self.proj.weight.dtype
        T = prev.shape[1]
        # The solve runs in the discriminator's own dtype: under autocast f would return another dtype than its
        # input, which the solvers' buffers (allocated from z0) do not accept.
        with torch.autocast(prev.device.type, enabled=False):
            x = self.layout(prev.to(dtype), curr.to(dtype))
            h = self.in_norm(self.proj(x)) + self.pos(layout_positions(T, x.device))
            out = self.deq(h, attn_mask=next_token_mask(T, x.device))
        self.last_stats = out.stats
        return out.z

    def forward(self, prev: Tensor, curr: Tensor) -> Tensor:
        """Real-vs-generated logits (B, T): score[:, i] judges curr[:, i] against prev[:, :i]."""
        z = self.states(prev, curr)
        with torch.autocast(z.device.type, enabled=False):
            return self.score(z[:, prev.shape[1]:]).squeeze(-1)
