"""Output heads: from the readout of the equilibrium (B, T, in_dim) to a distribution over the next value."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import ModelConfig


class CategoricalHead(nn.Module):
    """Logits over a vocabulary: a linear map (B, T, in_dim) -> (B, T, vocab)."""

    def __init__(self, in_dim: int, vocab: int):
        super().__init__()
        self.in_dim, self.vocab = in_dim, vocab
        self.proj = nn.Linear(in_dim, vocab)

    def tie(self, weight: nn.Parameter) -> None:
        """Share a (vocab, in_dim) matrix, e.g. the input embedding table, as the output weight."""
        if weight.shape != self.proj.weight.shape:
            raise ValueError(f"cannot tie a weight of shape {tuple(weight.shape)} to a head of shape "
                             f"{tuple(self.proj.weight.shape)}")
        self.proj.weight = weight

    def forward(self, h: Tensor) -> Tensor:
        """Logits (B, T, vocab)."""
        return self.proj(h)

    def nll(self, logits: Tensor, target: Tensor) -> Tensor:
        """Negative log-likelihood in nats of the integer targets (B, T), per element (B, T)."""
        flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        return flat.view(target.shape)


HEADS: dict[str, type[nn.Module]] = {"categorical": CategoricalHead}


def build_head(cfg: ModelConfig, in_dim: int) -> nn.Module:
    """The head named by cfg.head, reading in_dim features per position."""
    if cfg.head == "categorical":
        return CategoricalHead(in_dim, cfg.vocab_size)
    raise ValueError(f"ModelConfig.head={cfg.head!r} is unknown; allowed: {', '.join(sorted(HEADS))}")
