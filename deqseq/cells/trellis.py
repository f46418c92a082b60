"""DEQ-TrellisNet cell (Bai et al.): a weight-tied causal dilated convolution with LSTM-style gates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from .base import Cell, Context, History, variational_mask


def _last(t: Tensor, n: int) -> Tensor:
    """The last n positions along dim 1 (correct for n == 0, unlike t[:, -n:])."""
    return t[:, t.shape[1] - n :]


@dataclass
class TrellisHistory(History):
    """Left context of a causal trellis: the last (k-1)*d frozen h and inputs x, and the last frozen c.

    Positions before the sequence start are zeros, so an empty history is all zeros.
    """

    h: Tensor  # (B, (k-1)*d, hidden)
    c: Tensor  # (B, hidden)
    x: Tensor  # (B, (k-1)*d, d_input)


@dataclass
class TrellisContext(Context):
    """Fixed inputs of one trellis solve: u = causal conv of x (B, T, 4*hidden), and the dropout mask on h."""

    h_drop: Tensor | None  # (B, 1, hidden), None when off
    x_next: Tensor  # (B, (k-1)*d, d_input): the input left context once these T positions are frozen


class TrellisSpec(Protocol):
    """What `TrellisCell.from_config` reads of a model config (deqseq's ModelConfig has it)."""

    d_model: int
    kernel_size: int
    dilation: int
    dropout: float
    weight_norm: bool

    @property
    def embed_dim(self) -> int: ...


class TrellisCell(Cell):
    """Weight-tied trellis cell on the state z = [h; c] (state_dim = 2*hidden).

    pre = u + CausalConv(h) gives gates i, f, o and candidate g; c_t = f_t*c_{t-1} + i_t*g_t and
    h_t = o_t*tanh(c_t), with c_{t-1} the current iterate's c at the previous position.
    """

    def __init__(
        self,
        hidden: int,
        d_input: int,
        kernel_size: int = 2,
        dilation: int = 1,
        dropout: float = 0.0,
        weight_norm: bool = False,
    ):
        super().__init__()
        if kernel_size < 1 or dilation < 1:
            raise ValueError(f"kernel_size and dilation must be >= 1, got {kernel_size}, {dilation}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.state_dim = 2 * hidden
        self.hidden, self.d_input, self.dropout = hidden, d_input, dropout
        self.pad = (kernel_size - 1) * dilation  # left context length
        self.conv_x = nn.Conv1d(d_input, 4 * hidden, kernel_size, dilation=dilation)
        self.conv_h = nn.Conv1d(hidden, 4 * hidden, kernel_size, dilation=dilation, bias=False)
        if weight_norm:
            self.conv_x = _weight_norm(self.conv_x)
            self.conv_h = _weight_norm(self.conv_h)

    @classmethod
    def from_config(cls, cfg: TrellisSpec) -> TrellisCell:
        """The cell a model config describes (hidden = cfg.d_model), injecting cfg.embed_dim input features (the
        "trellis" entry of deqseq.cells.CELLS)."""
        return cls(hidden=cfg.d_model, d_input=cfg.embed_dim, kernel_size=cfg.kernel_size, dilation=cfg.dilation,
                   dropout=cfg.dropout, weight_norm=cfg.weight_norm)

    @property
    def readout_dim(self) -> int:
        """Heads read h only."""
        return self.hidden

    def readout(self, z: Tensor) -> Tensor:
        """h, the first half of the state z = [h; c]."""
        return z[..., : self.hidden]

    @staticmethod
    def _conv(conv: nn.Conv1d, seq: Tensor) -> Tensor:
        """Valid conv over (B, pad+T, C) -> (B, T, 4*hidden)."""
        return conv(seq.transpose(1, 2)).transpose(1, 2)

    def empty_history(self, batch_size: int, device, dtype) -> TrellisHistory:
        """All-zero left context (the zero padding of a sequence start), offset 0."""
        return TrellisHistory(
            offset=0,
            h=torch.zeros(batch_size, self.pad, self.hidden, device=device, dtype=dtype),
            c=torch.zeros(batch_size, self.hidden, device=device, dtype=dtype),
            x=torch.zeros(batch_size, self.pad, self.d_input, device=device, dtype=dtype),
        )

    def prepare(
        self, x: Tensor, history: TrellisHistory | None = None, attn_mask: Tensor | None = None,
        window: int | None = None,
    ) -> TrellisContext:
        """Injection u = causal conv of x with the history inputs as left context, and the dropout mask.
        `window` is ignored: the trellis only ever keeps its receptive field as history."""
        if attn_mask is not None:
            raise ValueError("TrellisCell is causal by construction and does not accept attn_mask")
        history = self._history_or_empty(x, history)
        h_drop = None
        if self.training and self.dropout > 0:
            h_drop = variational_mask((x.shape[0], 1, self.hidden), self.dropout, x)
        x_seq = torch.cat([history.x, x], dim=1)
        u = self._conv(self.conv_x, x_seq)
        return TrellisContext(u=u, history=history, h_drop=h_drop, x_next=_last(x_seq, self.pad))

    def forward(self, z: Tensor, ctx: TrellisContext) -> Tensor:
        """One application to z = [h; c] (B, T, 2*hidden)."""
        h, c = z.split(self.hidden, dim=-1)
        h_seq = torch.cat([ctx.history.h, h], dim=1)
        if ctx.h_drop is not None:
            # history h gets the same mask, as it would if the whole sequence were solved at once
            h_seq = h_seq * ctx.h_drop
        pre = ctx.u + self._conv(self.conv_h, h_seq)
        i, f, o, g = pre.chunk(4, dim=-1)
        c_prev = torch.cat([ctx.history.c[:, None], c[:, :-1]], dim=1)
        c_new = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return torch.cat([h_new, c_new], dim=-1)

    def extend_history(self, ctx: TrellisContext, z_star: Tensor) -> TrellisHistory:
        """Shift the frozen positions z_star (and their inputs) into the left context."""
        T = z_star.shape[1]
        self._check_frozen(ctx, z_star)
        h, c = z_star.split(self.hidden, dim=-1)
        return TrellisHistory(
            offset=ctx.history.offset + T,
            h=_last(torch.cat([ctx.history.h, h], dim=1), self.pad),
            c=c[:, -1],
            x=ctx.x_next,
        )
