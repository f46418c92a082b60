"""Transformer-XL-style batching: B parallel contiguous streams cut into consecutive, resumable segments."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from .errors import DataError


class ResumableBatches:
    """A pass over numbered batches 0..len-1 with a saved cursor: `position` is the index of the next batch to
    hand out and `epoch` the number of completed passes. Subclasses define __len__ and _batch(index)."""

    position: int
    epoch: int
    shape_keys: tuple[str, ...] = ()  # attributes a saved state must match to be resumed here

    def __len__(self) -> int:
        raise NotImplementedError

    def _batch(self, index: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def _check_position(self, position: int) -> None:
        if not 0 <= position < len(self):
            raise ValueError(f"batch position {position} is out of range [0, {len(self)})")

    def _advance(self) -> dict[str, Tensor]:
        """The batch at `position`, moving position on (to 0 and epoch + 1 after the last one)."""
        batch = self._batch(self.position)
        self.position += 1
        if self.position == len(self):
            self.position, self.epoch = 0, self.epoch + 1
        return batch

    def iterate(self, start: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Batches from `start` (default: the current position) to the end of the pass."""
        if start is not None:
            self._check_position(start)
            self.position = start
        while True:
            last = self.position == len(self) - 1
            yield self._advance()
            if last:
                return

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        """Batches from the current position to the end of the pass (from 0 again after a full pass)."""
        return self.iterate()

    def cycle(self) -> Iterator[dict[str, Tensor]]:
        """Batches forever, wrapping around at the end of each pass and counting epochs (for training)."""
        while True:
            yield self._advance()

    def state_dict(self) -> dict[str, Any]:
        """Position, epoch and the shape of the batching, as plain python ints."""
        return {"position": self.position, "epoch": self.epoch, **{k: getattr(self, k) for k in self.shape_keys}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position and epoch; the batching it was saved with must match this one."""
        for key in self.shape_keys:
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume batching saved with {key}={state[key]} into one with "
                                 f"{key}={getattr(self, key)}")
        self._check_position(int(state["position"]))
        self.position, self.epoch = int(state["position"]), int(state["epoch"])


class StreamBatcher(ResumableBatches):
    """Segments {"x": (B, L), "t": (B, L)} of a token stream, where t is x shifted by one (the next token).

    The stream is cut into `batch_size` equal contiguous rows (the remainder is dropped); segment i holds
    positions [i*L, (i+1)*L) of every row, so segment i+1 continues exactly where segment i stopped, and the
    frozen equilibria of one segment can serve as the history of the next. The last segment may be shorter.

    `position` is the index of the next segment to produce and `epoch` the number of completed passes; both are
    updated as segments are handed out and are saved by state_dict(), so a run resumes with the same batches.
    """

    shape_keys = ("batch_size", "seq_len", "num_tokens")

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, start: int = 0):
        if ids.dim() != 1:
            raise ValueError(f"StreamBatcher needs a 1-D id stream, got shape {tuple(ids.shape)}")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
        per_row = len(ids) // batch_size
        if per_row < 2:
            raise DataError(f"a stream of {len(ids)} tokens is too short for batch_size={batch_size}: each of the "
                            f"{batch_size} rows needs at least 2 tokens (an input and its target)")
        self.batch_size, self.seq_len, self.num_tokens = batch_size, seq_len, len(ids)
        self.rows = ids[: per_row * batch_size].view(batch_size, per_row)
        self.epoch = 0
        self.position = 0
        self._check_position(start)
        self.position = start

    def __len__(self) -> int:
        """Number of segments in one pass."""
        return -(-(self.rows.shape[1] - 1) // self.seq_len)

    @property
    def tokens_per_pass(self) -> int:
        """Number of predicted tokens (elements of all the t's) in one pass."""
        return self.batch_size * (self.rows.shape[1] - 1)

    def segment(self, index: int) -> dict[str, Tensor]:
        """Segment `index` (0 <= index < len(self)) as {"x": (B, L'), "t": (B, L')}, L' <= seq_len."""
        self._check_position(index)
        a = index * self.seq_len
        b = min(a + self.seq_len, self.rows.shape[1] - 1)
        return {"x": self.rows[:, a:b].clone(), "t": self.rows[:, a + 1 : b + 1].clone()}

    def _batch(self, index: int) -> dict[str, Tensor]:
        return self.segment(index)
