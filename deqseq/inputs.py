"""Input transforms: what turns a batch of raw inputs into the (B, T, d_embed) tensor the DEQ layer injects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import ModelConfig


class TokenEmbedding(nn.Module):
    """Token ids (B, T) -> embeddings (B, T, dim) from a learned table."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.vocab, self.dim = vocab, dim
        self.table = nn.Embedding(vocab, dim)

    @property
    def weight(self) -> nn.Parameter:
        """The (vocab, dim) table, which a head may share."""
        return self.table.weight

    def forward(self, ids: Tensor) -> Tensor:
        """Look up the embeddings of the ids (B, T)."""
        return self.table(ids)


INPUTS: dict[str, type[nn.Module]] = {"embedding": TokenEmbedding}


def build_input(cfg: ModelConfig) -> nn.Module:
    """The input transform named by cfg.input, producing cfg.embed_dim features per position."""
    if cfg.input == "embedding":
        return TokenEmbedding(cfg.vocab_size, cfg.embed_dim)
    raise ValueError(f"ModelConfig.input={cfg.input!r} is unknown; allowed: {', '.join(sorted(INPUTS))}")
