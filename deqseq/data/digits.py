"""Small real images as sequences: scikit-learn's bundled 8x8 handwritten digits (1797 images, 17 gray levels,
labels 0-9), raster-scanned into 64 pixel ids behind a start token.

`digits:seed=0,cond=class` (see sources.load_corpus) shuffles the images with numpy's default_rng(seed) and splits
them 90/5/5. Each image is the id sequence [START, p_0, ..., p_63] with p_i in 0..16 (row by row, top left
first) and START = 17, so a model reads START, p_0 .. p_62 and predicts p_0 .. p_63: the NLL of an image is the sum
over its 64 pixels, reported per pixel (bits/dim). The data ships with scikit-learn (no download); it is the
`images` extra of this package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .corpus import SPLITS, split_sizes
from .errors import DataError
from .series import SeriesBatcher, series_batches

if TYPE_CHECKING:
    from ..inputs import Reads

LEVELS = 17  # gray levels 0..16
SIDE = 8
START = LEVELS  # the start token's id; the vocabulary is LEVELS + 1


@dataclass
class ImageData:
    """Train / valid / test images as id sequences (N, 1 + H W) int64, START first, with class labels (N,).

    cond_*: the labels as class conditioning when cond_kind is "class", else None. A SequenceData of independent
    sequences of pixel ids (reads "ids" over vocab_size), batched like series (split, cond, sizes as SeriesData).
    """

    train: Tensor
    valid: Tensor
    test: Tensor
    labels_train: Tensor
    labels_valid: Tensor
    labels_test: Tensor
    cond_kind: str = "class"
    height: int = SIDE
    width: int = SIDE
    levels: int = LEVELS
    classes: int = 10
    spec: str = ""
    description: str = ""
    unit: str = "dim"
    tokenizer: None = None

    @property
    def vocab_size(self) -> int:
        """Pixel levels plus the start token."""
        return self.levels + 1

    @property
    def cond_dim(self) -> int:
        """Width of the one-hot class conditioning (0 without conditioning)."""
        return self.classes if self.cond_kind == "class" else 0

    def split(self, name: str) -> Tensor:
        """The (N, 1 + H W) id sequences of split `name`."""
        _check_split(name)
        return getattr(self, name)

    def labels(self, name: str) -> Tensor:
        """The (N,) class labels of split `name` (whether or not the model is conditioned on them)."""
        _check_split(name)
        return getattr(self, f"labels_{name}")

    def cond(self, name: str) -> Tensor | None:
        """The class conditioning of split `name`: (N,) labels with cond_kind "class", else None."""
        return self.labels(name) if self.cond_kind == "class" else None

    def sizes(self) -> dict[str, int]:
        """Number of images in each split."""
        return {name: len(getattr(self, name)) for name in SPLITS}

    @property
    def elements(self) -> str:
        """What a position holds, for messages."""
        return "pixel ids"

    @property
    def reads(self) -> Reads:
        """A model of images reads pixel ids."""
        return "ids"

    @property
    def in_dim(self) -> None:
        """Ids have no value width."""
        return None

    @property
    def stream(self) -> bool:
        """The images are independent: no history is carried from one batch to the next."""
        return False

    def amount(self, split: str) -> str:
        """The number of images of a split, in words."""
        return f"{len(self.split(split))} images"

    def batches(self, split: str, batch_size: int, seq_len: int, *, training: bool = False,
                seed: int = 0) -> SeriesBatcher:
        """Batches of whole images of the split with their class conditioning (see SeriesBatcher)."""
        return series_batches(self, split, batch_size, seq_len, training, seed)

    def baselines(self) -> dict[str, float]:
        """Test bits/dim of the train split's independent per-pixel marginals, overall and per class: what a model
        of no pixel dependencies reaches."""
        return {"baseline_marginal_bits_per_dim": self.marginal_bits_per_dim("test"),
                "baseline_class_marginal_bits_per_dim": self.marginal_bits_per_dim("test", by_class=True)}

    def notes(self) -> list[str]:
        """The marginal baselines, in words."""
        marginal, by_class = self.baselines().values()
        return [f"baselines on test: independent per-pixel marginals {marginal:.3f} bits/dim, per class "
                f"{by_class:.3f}"]

    def pixels(self, name: str) -> Tensor:
        """The (N, H, W) pixel levels of split `name`."""
        return self.split(name)[:, 1:].reshape(-1, self.height, self.width)

    def marginal_bits_per_dim(self, split: str = "test", by_class: bool = False) -> float:
        """Bits per pixel on `split` of the independent per-pixel marginals of the train split (add-one
        smoothed counts of each level at each pixel; per class with by_class): the baseline any model of pixel
        dependencies must beat."""
        train, held = self.split("train")[:, 1:], self.split(split)[:, 1:]
        groups = self.labels("train") if by_class else torch.zeros(len(train), dtype=torch.long)
        targets = self.labels(split) if by_class else torch.zeros(len(held), dtype=torch.long)
        counts = torch.ones(int(groups.max()) + 1, train.shape[1], self.levels, dtype=torch.float64)
        pixel = torch.arange(train.shape[1])
        one = torch.ones((), dtype=torch.float64)
        counts.index_put_((groups[:, None], pixel[None, :], train), one, accumulate=True)
        logp = (counts / counts.sum(-1, keepdim=True)).log()
        nll = -logp[targets[:, None], pixel[None, :], held]
        return float(nll.mean()) / math.log(2)


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; allowed: {', '.join(SPLITS)}")


def load_digits_images(seed: int = 0, cond: str = "class", spec: str = "") -> ImageData:
    """The 8x8 digits, shuffled with default_rng(seed) and split 90/5/5; cond "class" or "none"."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits source needs scikit-learn, which bundles the images: "
                        "pip install 'deqseq[images]' (or scikit-learn)") from None
    digits = load_digits()
    pixels = torch.from_numpy(np.rint(digits.images).astype(np.int64)).reshape(len(digits.images), -1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(pixels)))
    pixels, labels = pixels[order], labels[order]
    seqs = torch.cat([torch.full((len(pixels), 1), START, dtype=torch.long), pixels], dim=1)
    bounds = np.cumsum((0, *split_sizes(len(seqs))))
    parts = {}
    for i, name in enumerate(SPLITS):
        part = slice(int(bounds[i]), int(bounds[i + 1]))
        parts[name], parts[f"labels_{name}"] = seqs[part].clone(), labels[part].clone()
    description = (f"scikit-learn 8x8 digits: {len(seqs)} images of {LEVELS} gray levels raster-scanned behind a "
                   f"start token, shuffled with seed {seed}, split 90/5/5 "
                   f"({'/'.join(str(len(parts[n])) for n in SPLITS)}), cond {cond}")
    return ImageData(**parts, cond_kind=cond, spec=spec, description=description)
