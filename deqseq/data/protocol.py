"""SequenceData: what training, evaluation and checkpoints ask of a data set, whatever it holds.

Token corpora (Corpus), real-valued series (SeriesData) and images as pixel sequences (ImageData) all answer
these questions, so the trainer asks them instead of testing which class it has:

- what a model must read: `reads` ("ids" with `vocab_size`, or "values" with `in_dim`), `cond_dim` / `cond_kind`;
- how a split is cut into batches (`batches`) and whether consecutive batches continue one stream (`stream`:
  history may be carried across them) or hold independent fixed-length sequences;
- what bits are reported per (`unit`), what the elements are in words (`elements`) and how much a split holds
  (`amount`), for metrics and messages;
- the reference numbers worth logging (`baselines`: an exact entropy rate, a noise bound, a marginal baseline)
  and the lines worth printing about them (`notes`);
- `tokenizer` (None without one), `spec` and `description`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

from .batching import ResumableBatches

if TYPE_CHECKING:
    from ..inputs import Reads
    from .tokenizers import Tokenizer


@runtime_checkable
class SequenceData(Protocol):
    """A data set with train / valid / test splits, as training reads it (see the module docstring)."""

    @property
    def spec(self) -> str:
        """The data spec it was loaded from."""
        ...

    @property
    def description(self) -> str:
        """One line on what the data is and how it was split."""
        ...

    @property
    def unit(self) -> str:
        """What one NLL is reported per: "byte", "char" or "token" for text, "dim" for series and images."""
        ...

    @property
    def elements(self) -> str:
        """What one position holds, in words for messages: "token ids", "pixel ids", "real values"."""
        ...

    @property
    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer that made the ids (saved with checkpoints), None for data without one."""
        ...

    @property
    def reads(self) -> Reads:
        """What a model of this data reads: "ids" in [0, vocab_size) or "values" of width in_dim."""
        ...

    @property
    def vocab_size(self) -> int | None:
        """Number of distinct ids (reads "ids"), None for values."""
        ...

    @property
    def in_dim(self) -> int | None:
        """Values per position (reads "values"), None for ids."""
        ...

    @property
    def cond_dim(self) -> int:
        """Width of the conditioning each batch carries as "c" (0: none)."""
        ...

    @property
    def cond_kind(self) -> str:
        """What the conditioning is ("none", "period", "class")."""
        ...

    @property
    def stream(self) -> bool:
        """Whether a split is one stream whose consecutive batches continue each other (history may be carried
        from one to the next), rather than independent fixed-length sequences."""
        ...

    def split(self, name: str) -> Tensor:
        """The data of split `name` ("train", "valid" or "test")."""
        ...

    def sizes(self) -> dict[str, int]:
        """Number of elements (ids, series, images) in each split."""
        ...

    def amount(self, split: str) -> str:
        """How much split `split` holds, in words ("2,700 tokens", "90 series")."""
        ...

    def batches(self, split: str, batch_size: int, seq_len: int, *, training: bool = False,
                seed: int = 0) -> ResumableBatches:
        """Resumable batches {"x", "t"[, "c"]} of split `split`, seq_len positions long. training: the batching a
        run trains on (independent sequences: reshuffled every pass from seed, the incomplete last batch
        dropped); otherwise every element is scored once, in order."""
        ...

    def baselines(self) -> dict[str, float]:
        """Reference numbers a run logs once at its start (metric name -> value); empty when none is known."""
        ...

    def notes(self) -> list[str]:
        """Lines a run prints at its start about the data (its baselines), possibly none."""
        ...
