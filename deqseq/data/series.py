"""Real-valued sequence data: the SeriesData record, random Fourier series and the SeriesBatcher.

`fourier:series=2000,length=129,terms=3,periods=8-32,noise=0.05,seed=0,cond=none` (see sources.load_corpus)
gives N independent series x_t = sum_{k=1..terms} a_k sin(2 pi k t / P + phi_k) + eps_t, t = 0..length-1, with
a_k ~ N(0, 1) / k, phi_k ~ U[0, 2 pi), eps_t ~ N(0, noise^2) iid and a base period P per series.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .batching import ResumableBatches
from .corpus import SPLITS, split_sizes
from .errors import DataError

if TYPE_CHECKING:
    from ..inputs import Reads

COND_KINDS = ("none", "period", "class")
MAX_SERIES_VALUES = 1 << 26  # series * length of one fourier spec (two float32 copies: values and clean)
_SEED_STRIDE = 1_000_003  # the shuffle of pass e uses the torch.Generator seed seed * _SEED_STRIDE + e

_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"({_NUMBER})-({_NUMBER})")
_SET = re.compile(rf"{_NUMBER}(?:/{_NUMBER})*")


# ------------------------------------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Periods:
    """The base periods of a fourier spec: a range `A-B` (uniform in [A, B]) or a set `A/B/C` (uniform choice)."""

    values: tuple[float, ...]  # (A, B) for a range; the set, in the order given, otherwise
    is_range: bool

    @classmethod
    def parse(cls, text: str) -> Periods:
        """`A-B` with 0 < A <= B, or `A/B/C` of distinct numbers > 0 (one number is a set of one); ValueError if not."""
        text = text.strip()
        if match := _RANGE.fullmatch(text):
            low, high = float(match[1]), float(match[2])
            if not 0 < low <= high < math.inf:
                raise ValueError(text)
            return cls((low, high), True)
        if _SET.fullmatch(text):
            values = tuple(float(v) for v in text.split("/"))
            if not all(0 < v < math.inf for v in values) or len(set(values)) != len(values):
                raise ValueError(text)
            return cls(values, False)
        raise ValueError(text)

    @property
    def max(self) -> float:
        """The largest period that can be drawn."""
        return max(self.values)

    def __str__(self) -> str:
        return ("-" if self.is_range else "/").join(f"{v:g}" for v in self.values)

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """n periods (float64) and, for a set, the index of each in the set (None for a range)."""
        if self.is_range:
            return rng.uniform(self.values[0], self.values[1], size=n), None
        index = rng.integers(len(self.values), size=n)
        return np.asarray(self.values, dtype=np.float64)[index], index


def parse_periods(text: str) -> Periods:
    """Periods.parse, as a spec-option parser (raises ValueError on a bad value)."""
    return Periods.parse(text)


def parse_cond(text: str) -> str:
    """One of COND_KINDS; ValueError otherwise."""
    if text not in COND_KINDS:
        raise ValueError(text)
    return text


def gaussian_nll_bound(noise: float) -> float | None:
    """0.5 * log(2 pi e noise^2): the entropy of N(0, noise^2) in nats, None for noise 0 (no finite bound)."""
    return 0.5 * math.log(2 * math.pi * math.e * noise**2) if noise > 0 else None


# ---------------------------------------------------------------------------------------------------- SeriesData


@dataclass
class SeriesData:
    """Train / valid / test real-valued series: float32 tensors (N_split, length, in_dim), with optional conditioning.

    clean_*: the same series without noise (for plots and tests). cond_*: None (cond_kind "none"), a global
    (N, 1) float (cond_kind "period": P / max period) or an (N,) long class index (cond_kind "class", one-hot over
    cond_dim classes). periods_*: each series' base period (float64), where the source has one.

    nll_bound: 0.5 * log(2 pi e noise^2) nats per step (per dim, in_dim being 1), the differential entropy of the
    observation noise, and a lower bound on the expected NLL of any predictor of x_t given x_<t (and the
    conditioning): eps_t is independent of everything before it, so even a predictor that knows the clean value
    exactly is left with eps_t's entropy, and one that does not does worse. A model reaches the bound only once
    the history (and cond) pins down the clean signal, so the first steps of a series are necessarily above it.
    None when noise == 0 (the NLL of a noise-free series is unbounded below).

    A SequenceData of independent sequences of real values (reads "values" of width in_dim).
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    clean_train: Tensor
    clean_valid: Tensor
    clean_test: Tensor
    cond_train: Tensor | None = None
    cond_valid: Tensor | None = None
    cond_test: Tensor | None = None
    periods_train: Tensor | None = None
    periods_valid: Tensor | None = None
    periods_test: Tensor | None = None
    cond_kind: str = "none"
    cond_dim: int = 0
    noise: float = 0.0
    spec: str = ""
    description: str = ""
    in_dim: int = field(init=False)
    nll_bound: float | None = field(init=False)
    unit: str = field(default="dim", init=False)
    tokenizer: None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.cond_kind not in COND_KINDS:
            raise ValueError(f"cond_kind {self.cond_kind!r} is not one of {', '.join(COND_KINDS)}")
        shape = None
        for name in SPLITS:
            values, clean, cond = getattr(self, name), getattr(self, f"clean_{name}"), getattr(self, f"cond_{name}")
            if values.dim() != 3 or values.dtype != torch.float32:
                raise TypeError(f"SeriesData.{name} must be a float32 (N, length, in_dim) tensor, got "
                                f"{values.dtype} {tuple(values.shape)}")
            if len(values) == 0:
                raise DataError(f"data spec {self.spec!r} gives an empty {name} split (sizes: {self.sizes()}); "
                                f"use more series")
            if shape is not None and values.shape[1:] != shape:
                raise ValueError(f"SeriesData.{name} has steps x dims {tuple(values.shape[1:])}, train has "
                                 f"{tuple(shape)}")
            shape = values.shape[1:]
            if clean.shape != values.shape:
                raise ValueError(f"SeriesData.clean_{name} has shape {tuple(clean.shape)}, not {tuple(values.shape)}")
            self._check_cond(name, cond, len(values))
        self.in_dim = int(self.train.shape[2])
        self.nll_bound = gaussian_nll_bound(self.noise)

    def _check_cond(self, name: str, cond: Tensor | None, n: int) -> None:
        expected = {"none": None, "period": ((n, 1), torch.float32), "class": ((n,), torch.long)}[self.cond_kind]
        if expected is None:
            if cond is not None or self.cond_dim != 0:
                raise ValueError(f"cond_kind 'none' needs cond_{name}=None and cond_dim=0")
            return
        if cond is None or tuple(cond.shape) != expected[0] or cond.dtype != expected[1]:
            got = None if cond is None else (cond.dtype, tuple(cond.shape))
            raise ValueError(f"cond_kind {self.cond_kind!r} needs cond_{name} of {expected}, got {got}")
        if self.cond_kind == "class" and not bool(((cond >= 0) & (cond < self.cond_dim)).all()):
            raise ValueError(f"cond_{name} has a class index outside [0, {self.cond_dim})")

    @staticmethod
    def _check_split(name: str) -> None:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")

    def split(self, name: str) -> Tensor:
        """The (N, length, in_dim) values of split `name` ("train", "valid" or "test")."""
        self._check_split(name)
        return getattr(self, name)

    def cond(self, name: str) -> Tensor | None:
        """The conditioning of split `name`: None, (N, 1) float or (N,) long (see cond_kind)."""
        self._check_split(name)
        return getattr(self, f"cond_{name}")

    def clean(self, name: str) -> Tensor:
        """The noise-free values of split `name`."""
        self._check_split(name)
        return getattr(self, f"clean_{name}")

    def sizes(self) -> dict[str, int]:
        """Number of series in each split."""
        return {name: len(getattr(self, name)) for name in SPLITS}

    # -- SequenceData --------------------------------------------------------------------------------------
    @property
    def elements(self) -> str:
        """What a position holds, for messages."""
        return "real values"

    @property
    def reads(self) -> Reads:
        """A model of series reads values."""
        return "values"

    @property
    def vocab_size(self) -> None:
        """Values have no vocabulary."""
        return None

    @property
    def stream(self) -> bool:
        """The series are independent: no history is carried from one batch to the next."""
        return False

    def amount(self, split: str) -> str:
        """The number of series of a split, in words."""
        return f"{len(self.split(split))} series"

    def batches(self, split: str, batch_size: int, seq_len: int, *, training: bool = False,
                seed: int = 0) -> SeriesBatcher:
        """Batches of whole series of the split with their conditioning (see SeriesBatcher)."""
        return series_batches(self, split, batch_size, seq_len, training, seed)

    def baselines(self) -> dict[str, float]:
        """The noise's NLL bound, where the series are noisy."""
        return {} if self.nll_bound is None else {"data_nll_bound": self.nll_bound}

    def notes(self) -> list[str]:
        """No start-of-run lines."""
        return []


class SplitSequences(Protocol):
    """Independent fixed-length sequences by split (SeriesData, digits' ImageData): what series_batches reads."""

    def split(self, name: str) -> Tensor: ...

    def cond(self, name: str) -> Tensor | None: ...


def series_batches(data: SplitSequences, split: str, batch_size: int, seq_len: int, training: bool,
                   seed: int) -> SeriesBatcher:
    """The SeriesBatcher of a split of independent sequences: shuffled per pass and without an incomplete last
    batch for training, every sequence once and in order otherwise."""
    values, cond = data.split(split), data.cond(split)
    if training:
        return SeriesBatcher(values, cond, batch_size, seq_len, seed=seed)
    return SeriesBatcher(values, cond, batch_size, seq_len, seed=seed, shuffle=False, drop_last=False)


def fourier_series(
    series: int = 2000,
    length: int = 129,
    terms: int = 3,
    periods: Periods | str = "8-32",
    noise: float = 0.05,
    seed: int = 0,
    cond: str = "none",
    spec: str = "",
) -> SeriesData:
    """Random Fourier series (see the module docstring), split 90/5/5 by count; bit-identical for the same args.

    Everything is drawn from numpy's default_rng(seed), in this order: all periods, all amplitudes (N, terms),
    all phases (N, terms), then all noise (N, length); the clean series therefore do not depend on `noise`.
    """
    periods = Periods.parse(periods) if isinstance(periods, str) else periods
    if cond not in COND_KINDS:
        raise DataError(f"cond={cond!r} must be one of {', '.join(COND_KINDS)}")
    if cond == "class" and periods.is_range:
        raise DataError(f"cond=class needs a discrete period set A/B/C, not the range {periods}")
    rng = np.random.default_rng(seed)
    period, index = periods.draw(rng, series)
    k = np.arange(1, terms + 1, dtype=np.float64)
    amplitude = rng.standard_normal((series, terms)) / k
    phase = rng.uniform(0.0, 2 * np.pi, size=(series, terms))
    t = np.arange(length, dtype=np.float64)
    clean = np.zeros((series, length))
    for j in range(terms):
        clean += amplitude[:, j, None] * np.sin(2 * np.pi * k[j] * t / period[:, None] + phase[:, j, None])
    values = clean + noise * rng.standard_normal((series, length))

    if cond == "period":
        cond_all: Tensor | None = torch.from_numpy(period / periods.max).float().unsqueeze(1)
    elif cond == "class":
        cond_all = torch.from_numpy(index).long()
    else:
        cond_all = None
    bounds = np.cumsum((0, *split_sizes(series)))
    parts: dict[str, Any] = {}
    for i, name in enumerate(SPLITS):
        part = slice(int(bounds[i]), int(bounds[i + 1]))
        parts[name] = torch.from_numpy(values[part]).float().unsqueeze(2)
        parts[f"clean_{name}"] = torch.from_numpy(clean[part]).float().unsqueeze(2)
        parts[f"cond_{name}"] = None if cond_all is None else cond_all[part].clone()
        parts[f"periods_{name}"] = torch.from_numpy(period[part].copy())
    cond_dim = {"none": 0, "period": 1, "class": len(periods.values)}[cond]
    description = (f"random Fourier series: {series} series of {length} steps, {terms} harmonics, periods {periods} "
                   f"({'uniform range' if periods.is_range else 'discrete set'}), noise std {noise:g}, seed {seed}, "
                   f"cond {cond}; split 90/5/5 by series")
    return SeriesData(**parts, cond_kind=cond, cond_dim=cond_dim, noise=float(noise), spec=spec,
                      description=description)


# ------------------------------------------------------------------------------------------------- SeriesBatcher


class SeriesBatcher(ResumableBatches):
    """Batches {"x": (B, L, I), "t": (B, L, I)[, "c": cond rows]} of whole series (or (B, L) ids of fixed-length
    id sequences such as images), t being x shifted by one step.

    Each pass visits every series once, in a fresh permutation per pass with shuffle (drawn from a torch.Generator
    seeded with seed * 1_000_003 + epoch, so it depends only on the seed and the pass), in order without. A batch
    uses the first seq_len + 1 steps of its series. drop_last drops the incomplete final batch of a pass (for
    training); eval batchers use shuffle=False, drop_last=False so every series counts.

    Same interface as StreamBatcher: `position` is the index of the next batch of the pass and `epoch` the number
    of completed passes; state_dict() saves them, so a resumed run sees the same batches.
    """

    shape_keys = ("batch_size", "seq_len", "num_series")

    def __init__(
        self,
        values: Tensor,
        cond: Tensor | None,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if not (values.dim() == 3 or (values.dim() == 2 and not values.dtype.is_floating_point)):
            raise ValueError(f"SeriesBatcher needs (N, length, in_dim) values or (N, length) ids, got shape "
                             f"{tuple(values.shape)}")
        if cond is not None and (cond.dim() not in (1, 2) or len(cond) != len(values)):
            raise ValueError(f"cond of shape {tuple(cond.shape)} does not match {len(values)} series: need (N,) "
                             f"or (N, C)")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size={batch_size} and seq_len={seq_len} must be >= 1")
        num_series, length = values.shape[:2]
        if seq_len + 1 > length:
            raise DataError(f"seq_len={seq_len} needs series of at least {seq_len + 1} steps (inputs and targets); "
                            f"these have {length}")
        if num_series < (batch_size if drop_last else 1):
            raise DataError(f"{num_series} series are too few for batch_size={batch_size}"
                            + (" with drop_last" if drop_last else ""))
        self.values, self.cond = values, cond
        self.batch_size, self.seq_len, self.num_series = batch_size, seq_len, num_series
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        self.position = 0
        self._order_epoch: int | None = None
        self._order = torch.arange(num_series)

    def __len__(self) -> int:
        """Number of batches in one pass."""
        full, rest = divmod(self.num_series, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def tokens_per_pass(self) -> int:
        """Number of predicted steps (rows of all the t's, each in_dim values) in one pass."""
        series = len(self) * self.batch_size if self.drop_last else self.num_series
        return series * self.seq_len

    def order(self, epoch: int) -> Tensor:
        """The order in which pass `epoch` visits the series (a permutation of range(num_series))."""
        if not self.shuffle:
            return torch.arange(self.num_series)
        if self._order_epoch != epoch:
            gen = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + epoch)
            self._order, self._order_epoch = torch.randperm(self.num_series, generator=gen), epoch
        return self._order

    def batch(self, index: int, epoch: int | None = None) -> dict[str, Tensor]:
        """Batch `index` of pass `epoch` (default: the current one); the last one of a pass may be smaller."""
        self._check_position(index)
        first = index * self.batch_size
        rows = self.order(self.epoch if epoch is None else epoch)[first : first + self.batch_size]
        series = self.values[rows, : self.seq_len + 1]
        out = {"x": series[:, :-1].contiguous(), "t": series[:, 1:].contiguous()}
        if self.cond is not None:
            out["c"] = self.cond[rows]
        return out

    def _batch(self, index: int) -> dict[str, Tensor]:
        return self.batch(index)

    def state_dict(self) -> dict[str, Any]:
        """Position, epoch, seed and the shape of the batching, as plain python ints."""
        return {**super().state_dict(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at a saved position and epoch with the saved seed; the batch shape must match this one."""
        super().load_state_dict(state)
        self.seed = int(state.get("seed", self.seed))
        self._order_epoch = None
