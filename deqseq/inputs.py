"""Input transforms: what turns a batch of raw inputs into the (B, T, d_embed) tensor the DEQ layer injects.

Two kinds of input exist: integer ids (B, T) ("embedding", "onehot") and real values (B, T, in_dim) ("linear",
"mlp"). Every transform is a differentiable nn.Module with `takes_ids` and `in_dim` attributes, so the model can
check a batch before it reaches the solver; a user-supplied module needs only forward() (the checks are skipped
for attributes it lacks).
"""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn


class InputSpec(Protocol):
    """What build_input reads of a config (deqseq.config.ModelConfig has it; this module does not import it)."""

    input: str
    vocab_size: int
    in_dim: int | None

    @property
    def embed_dim(self) -> int: ...


class TokenEmbedding(nn.Module):
    """Token ids (B, T) -> embeddings (B, T, dim) from a learned table."""

    takes_ids = True

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.vocab, self.dim, self.in_dim = vocab, dim, vocab
        self.table = nn.Embedding(vocab, dim)

    @property
    def weight(self) -> nn.Parameter:
        """The (vocab, dim) table, which a head may share."""
        return self.table.weight

    def forward(self, ids: Tensor) -> Tensor:
        """Look up the embeddings of the ids (B, T)."""
        return self.table(ids)


class OneHotLinear(nn.Module):
    """Token ids (B, T) -> one-hot (B, T, vocab) -> a linear map with bias to (B, T, dim).

    The same function class as an embedding plus a bias, spelled as the one-hot encoding many autoregressive
    codebases use; it also accepts relaxed one-hot vectors (B, T, vocab), e.g. Gumbel-softmax samples.
    """

    takes_ids = True
    accepts_relaxed = True

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.vocab, self.dim, self.in_dim = vocab, dim, vocab
        self.proj = nn.Linear(vocab, dim)

    def forward(self, x: Tensor) -> Tensor:
        """ids (B, T), or already one-hot / relaxed (B, T, vocab) floats, to (B, T, dim)."""
        if not x.dtype.is_floating_point:
            x = F.one_hot(x, self.vocab).to(self.proj.weight.dtype)
        return self.proj(x)


class LinearInput(nn.Module):
    """Real values (B, T, in_dim) -> a linear map to (B, T, dim)."""

    takes_ids = False

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, in_dim) -> (B, T, dim)."""
        return self.proj(x.to(self.proj.weight.dtype))


class MLPInput(nn.Module):
    """Real values (B, T, in_dim) -> Linear -> GELU -> Linear to (B, T, dim): a learned per-step featurisation."""

    takes_ids = False

    def __init__(self, in_dim: int, dim: int, hidden: int | None = None):
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        hidden = hidden or 2 * dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, in_dim) -> (B, T, dim)."""
        return self.net(x.to(self.net[0].weight.dtype))


INPUTS: dict[str, type[nn.Module]] = {
    "embedding": TokenEmbedding,
    "onehot": OneHotLinear,
    "linear": LinearInput,
    "mlp": MLPInput,
}


def build_input(cfg: InputSpec) -> nn.Module:
    """The input transform named by cfg.input, producing cfg.embed_dim features per position."""
    if cfg.input not in INPUTS:
        raise ValueError(f"ModelConfig.input={cfg.input!r} is unknown; allowed: {', '.join(sorted(INPUTS))}")
    if cfg.input in ("embedding", "onehot"):
        return INPUTS[cfg.input](cfg.vocab_size, cfg.embed_dim)
    if cfg.in_dim is None:
        raise ValueError(f"ModelConfig.input={cfg.input!r} takes real values and needs in_dim (features per position)")
    return INPUTS[cfg.input](cfg.in_dim, cfg.embed_dim)


def check_input(transform: nn.Module, x: Tensor) -> None:
    """Raise ValueError with one line when x does not fit the transform (ids vs real values, feature width)."""
    takes_ids = getattr(transform, "takes_ids", None)
    if takes_ids is None:  # a user-supplied module: it knows best
        return
    if takes_ids:
        relaxed_ok = getattr(transform, "accepts_relaxed", False) and x.dim() == 3 and x.shape[-1] == transform.in_dim
        if x.dtype.is_floating_point and not relaxed_ok:
            raise ValueError(f"this model takes integer ids of shape (B, T), got {x.dtype} {tuple(x.shape)}")
        if not x.dtype.is_floating_point and x.dim() != 2:
            raise ValueError(f"ids must have shape (B, T), got {tuple(x.shape)}")
        return
    if not x.dtype.is_floating_point or x.dim() != 3 or x.shape[-1] != transform.in_dim:
        raise ValueError(f"this model takes real values of shape (B, T, {transform.in_dim}), "
                         f"got {x.dtype} {tuple(x.shape)}")
