"""The interface every weight-tied causal cell f_θ(z, ctx) implements, and its history/context containers."""

from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from solvers import PureF


def _map_tensors(obj, fn):
    """Copy of dataclass `obj` with `fn` applied to every tensor field (other fields kept as they are)."""
    changes = {
        f.name: fn(getattr(obj, f.name))
        for f in dataclasses.fields(obj)
        if isinstance(getattr(obj, f.name), Tensor)
    }
    return dataclasses.replace(obj, **changes)


@dataclass
class History:
    """What frozen positions leave behind for later ones. Tensors have the batch dim first.

    `offset` is the number of positions already consumed, i.e. the absolute position of the next token.
    """

    offset: int

    @property
    def batch_size(self) -> int:
        """Batch size, read off the first tensor field."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                return value.shape[0]
        raise TypeError(f"{type(self).__name__} has no tensor field")

    def detach(self) -> History:
        """A copy whose tensors are detached from the autograd graph."""
        return _map_tensors(self, Tensor.detach)

    def select(self, index: Tensor) -> History:
        """A copy keeping the batch entries `index` in that order (to reorder beams, fan out samples)."""
        return _map_tensors(self, lambda t: t.index_select(0, index.to(t.device)))

    def reserve(self, positions: int) -> History:
        """This history with room for `positions` frozen positions in all, where its storage grows (a
        transformer's key/value store, sized exactly instead of doubling); itself for histories of fixed size."""
        return self


@dataclass
class Context:
    """Everything that stays fixed during one solve: the input injection `u` and the history it builds on."""

    u: Tensor
    history: History
    # What the solve's PureF (Cell.pure_f) returned besides f(z) at the equilibrium (stats.aux), for
    # extend_history; None when the solve did not compute it.
    solved: tuple[Tensor, ...] | None = dataclasses.field(default=None, kw_only=True)


class Cell(nn.Module, metaclass=ABCMeta):
    """A weight-tied causal cell: z (B,T,state_dim) -> f(z) of the same shape, once per solver step.

    The DEQ layer calls prepare() once per forward, then forward() at every solver iteration, then
    extend_history() once on the equilibrium of the positions it freezes.
    """

    state_dim: int
    # Whether the cell's history can grow without bound, so that a `window` (how many earlier positions a
    # query sees) is a choice; a trellis only ever keeps its receptive field.
    has_window: bool = False
    window: int | None = None

    @abstractmethod
    def prepare(self, x: Tensor, history: History | None = None, attn_mask: Tensor | None = None,
                window: int | None = None) -> Context:
        """Everything fixed during one solve, computed once per forward (outside the solver loop).

        The input injection u from x (B,T,E) (x is the already-embedded input), the history (an empty one if
        None), position tables / masks for absolute positions history.offset .. history.offset+T-1, and the
        variational dropout masks (drawn here in training mode, so f is a deterministic map during a solve).
        window: for cells with has_window, the attention window of this solve (None = the cell's own).
        """

    @abstractmethod
    def forward(self, z: Tensor, ctx: Context) -> Tensor:
        """One application f(z) -> same shape (B,T,state_dim). Does no work that prepare() could do."""

    @abstractmethod
    def extend_history(self, ctx: Context, z_star: Tensor) -> History:
        """History after freezing the T positions solved with `ctx` at their equilibrium `z_star`.

        Computed once per frozen position (never again per iteration), with the cell's window applied.
        """

    @abstractmethod
    def empty_history(
        self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype
    ) -> History:
        """The history of a sequence start (offset 0, nothing frozen yet)."""

    def pure_f(self, ctx: Context) -> PureF | None:
        """f(., ctx) as a `solvers.PureF` (a pure function of z and explicit tensors), which a fused solve
        compiles together with its iterations; None where the cell has none for this context (the default)."""
        return None

    @property
    def readout_dim(self) -> int:
        """Width of readout(z), what a head sees of the state."""
        return self.state_dim

    def readout(self, z: Tensor) -> Tensor:
        """The part of the equilibrium state (B,T,state_dim) a head reads (B,T,readout_dim): all of it by default."""
        return z

    def _history_or_empty(self, x: Tensor, history: History | None) -> History:
        """`history`, or an empty one matching x's batch, device and dtype; checks the batch size."""
        if history is None:
            return self.empty_history(x.shape[0], x.device, x.dtype)
        if history.batch_size != x.shape[0]:
            raise ValueError(f"history has batch size {history.batch_size} but x has {x.shape[0]}")
        return history

    @staticmethod
    def _check_frozen(ctx: Context, z_star: Tensor) -> None:
        """Raise if z_star does not cover exactly the positions ctx was prepared for."""
        if z_star.shape[:2] != ctx.u.shape[:2]:
            raise ValueError(
                f"z_star has shape {tuple(z_star.shape)} but ctx was prepared for {tuple(ctx.u.shape[:2])}"
            )


def variational_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout mask of `shape` (values 0 or 1/(1-p)), meant to be broadcast over time."""
    keep = torch.full(shape, 1.0 - p, device=like.device, dtype=like.dtype)
    return torch.bernoulli(keep) / (1.0 - p)
