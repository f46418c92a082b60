"""The Corpus record (three id streams and their tokenizer, a SequenceData) and the 90/5/5 split proportions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .batching import StreamBatcher
from .errors import DataError
from .tokenizers import Tokenizer

if TYPE_CHECKING:
    from ..inputs import Reads

SPLITS = ("train", "valid", "test")
TRAIN_PERCENT, VALID_PERCENT = 90, 5  # the test split gets the rest


def split_sizes(n: int) -> tuple[int, int, int]:
    """Sizes (train, valid, test) of a 90/5/5 split of n units: floor(90%), floor(5%) and the rest."""
    train, valid = n * TRAIN_PERCENT // 100, n * VALID_PERCENT // 100
    return train, valid, n - train - valid


def split_by_position(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The first 90%, the next 5% and the rest of a 1-D stream (see split_sizes)."""
    a, b, _ = split_sizes(len(ids))
    return ids[:a], ids[a : a + b], ids[a + b :]


@dataclass
class Corpus:
    """Train / valid / test id streams (1-D torch.long) with the tokenizer that made them.

    unit: what one id stands for ("byte", "char" or "token"), for bits-per-unit reporting.
    entropy_rate: the source's exact entropy rate in nats per token where it is known (synthetic sources).
    A SequenceData: each split is one stream of ids over the tokenizer's vocabulary, without conditioning.
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    tokenizer: Tokenizer
    unit: str
    entropy_rate: float | None = None
    spec: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        for name in SPLITS:
            ids = getattr(self, name)
            if ids.dim() != 1 or ids.dtype != torch.long:
                raise TypeError(f"Corpus.{name} must be a 1-D torch.long tensor, got {ids.dtype} {tuple(ids.shape)}")
            if len(ids) == 0:
                raise DataError(f"data spec {self.spec!r} gives an empty {name} split (sizes: {self.sizes()}); "
                                f"use more data")

    def split(self, name: str) -> Tensor:
        """The ids of split `name` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        """Number of ids in each split."""
        return {name: len(getattr(self, name)) for name in SPLITS}

    @property
    def elements(self) -> str:
        """What a position holds, for messages."""
        return "token ids"

    @property
    def reads(self) -> Reads:
        """A model of a corpus reads ids."""
        return "ids"

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size."""
        return self.tokenizer.vocab_size

    @property
    def in_dim(self) -> None:
        """Ids have no value width."""
        return None

    @property
    def cond_dim(self) -> int:
        """A corpus has no conditioning."""
        return 0

    @property
    def cond_kind(self) -> str:
        """A corpus has no conditioning."""
        return "none"

    @property
    def stream(self) -> bool:
        """Each split is one stream: consecutive segments continue each other."""
        return True

    def amount(self, split: str) -> str:
        """The number of ids of a split, in words."""
        return f"{len(self.split(split)):,} {self.unit}s"

    def batches(self, split: str, batch_size: int, seq_len: int, *, training: bool = False,
                seed: int = 0) -> StreamBatcher:
        """Consecutive segments of batch_size parallel rows of the split's stream (see StreamBatcher), for
        training and evaluation alike (the seed is not used)."""
        return StreamBatcher(self.split(split), batch_size, seq_len)

    def baselines(self) -> dict[str, float]:
        """The exact entropy rate (the best achievable NLL) where the source knows it."""
        return {} if self.entropy_rate is None else {"data_entropy_rate": self.entropy_rate}

    def notes(self) -> list[str]:
        """No start-of-run lines."""
        return []
