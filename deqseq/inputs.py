"""Input transforms: what turns a batch of raw inputs into the (B, T, d_embed) tensor the DEQ layer injects.

Two kinds of input exist (`reads`): integer ids (B, T) ("embedding", "onehot") and real values (B, T, in_dim)
("linear" and "mlp"). Every transform is a differentiable nn.Module that declares `reads` (and `vocab` or
`in_dim`), so the model can check a batch before it reaches the solver (see deqseq.model_io.ModelIO).
`INPUTS` maps a ModelConfig.input name to its builder and `reads`; `register_input` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

Reads = Literal["ids", "values"]  # what an input transform takes; see ModelIO.reads


class InputSpec(Protocol):
    """What build_input reads of a config (deqseq.config.ModelConfig has it; this module does not import it)."""

    input: str
    vocab_size: int
    in_dim: int | None

    @property
    def embed_dim(self) -> int: ...


def _in_dim(cfg: InputSpec) -> int:
    """cfg.in_dim, which an input of real values cannot be built without."""
    if cfg.in_dim is None:
        raise ValueError(f"ModelConfig.input={cfg.input!r} takes real values and needs in_dim (features per position)")
    return cfg.in_dim


class TokenEmbedding(nn.Module):
    """Token ids (B, T) -> embeddings (B, T, dim) from a learned table."""

    reads = "ids"

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.vocab, self.dim, self.in_dim = vocab, dim, vocab
        self.table = nn.Embedding(vocab, dim)

    @classmethod
    def from_config(cls, cfg: InputSpec) -> TokenEmbedding:
        """A table of cfg.vocab_size rows of cfg.embed_dim features."""
        return cls(cfg.vocab_size, cfg.embed_dim)

    @property
    def weight(self) -> nn.Parameter:
        """The (vocab, dim) table, which a head may share."""
        return self.table.weight

    def forward(self, ids: Tensor) -> Tensor:
        """Look up the embeddings of the ids (B, T)."""
        return self.table(ids)

    def embed_onehot(self, onehot: Tensor) -> Tensor:
        """(Relaxed) one-hot vectors (B, T, vocab) times the table: the lookup, for hard one-hots."""
        return onehot.to(self.weight.dtype) @ self.weight


class OneHotLinear(nn.Module):
    """Token ids (B, T) -> one-hot (B, T, vocab) -> a linear map with bias to (B, T, dim).

    The same function class as an embedding plus a bias, spelled as the one-hot encoding many autoregressive
    codebases use; it also accepts relaxed one-hot vectors (B, T, vocab), e.g. Gumbel-softmax samples.
    """

    reads = "ids"
    accepts_relaxed = True

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.vocab, self.dim, self.in_dim = vocab, dim, vocab
        self.proj = nn.Linear(vocab, dim)

    @classmethod
    def from_config(cls, cfg: InputSpec) -> OneHotLinear:
        """A linear map of one-hot vectors over cfg.vocab_size ids to cfg.embed_dim features."""
        return cls(cfg.vocab_size, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """ids (B, T), or already one-hot / relaxed (B, T, vocab) floats, to (B, T, dim)."""
        if not x.dtype.is_floating_point:
            x = F.one_hot(x, self.vocab).to(self.proj.weight.dtype)
        return self.proj(x)

    def embed_onehot(self, onehot: Tensor) -> Tensor:
        """(Relaxed) one-hot vectors (B, T, vocab) to (B, T, dim): the module itself."""
        return self.proj(onehot.to(self.proj.weight.dtype))


class LinearInput(nn.Module):
    """Real values (B, T, in_dim) -> a linear map to (B, T, dim)."""

    reads = "values"

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        self.proj = nn.Linear(in_dim, dim)

    @classmethod
    def from_config(cls, cfg: InputSpec) -> LinearInput:
        """A linear map of cfg.in_dim values to cfg.embed_dim features."""
        return cls(_in_dim(cfg), cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, in_dim) -> (B, T, dim)."""
        return self.proj(x.to(self.proj.weight.dtype))


class MLPInput(nn.Module):
    """Real values (B, T, in_dim) -> Linear -> GELU -> Linear to (B, T, dim): a learned per-step featurisation."""

    reads = "values"

    def __init__(self, in_dim: int, dim: int, hidden: int | None = None):
        super().__init__()
        self.in_dim, self.dim = in_dim, dim
        hidden = hidden or 2 * dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    @classmethod
    def from_config(cls, cfg: InputSpec) -> MLPInput:
        """An MLP from cfg.in_dim values to cfg.embed_dim features."""
        return cls(_in_dim(cfg), cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, in_dim) -> (B, T, dim)."""
        return self.net(x.to(self.net[0].weight.dtype))


@dataclass(frozen=True)
class InputEntry:
    """A registered input transform: build(cfg) makes the module a model config (ModelConfig.input = its name)
    describes, producing cfg.embed_dim features per position; `reads` says what it takes."""

    build: Callable[[Any], nn.Module]
    reads: Reads


INPUTS: Registry[InputEntry] = Registry("input")


def register_input(name: str, build: Callable[[Any], nn.Module], *, reads: Reads,
                   replace: bool = False) -> InputEntry:
    """Make `name` a valid ModelConfig.input whose transform is build(cfg), mapping ids (B, T) (reads="ids") or
    values (B, T, cfg.in_dim) (reads="values") to (B, T, cfg.embed_dim); ValueError for a name already registered
    (unless replace=True) or an unknown `reads`."""
    if reads not in get_args(Reads):
        raise ValueError(f"input {name!r}: reads={reads!r} must be one of {', '.join(get_args(Reads))}")
    return INPUTS.register(name, InputEntry(build, reads), replace=replace)


def inputs_reading(*kinds: Reads) -> tuple[str, ...]:
    """The registered input names whose `reads` is one of kinds, in registration order."""
    return tuple(name for name, entry in INPUTS.items() if entry.reads in kinds)


def build_input(cfg: InputSpec) -> nn.Module:
    """The input transform named by cfg.input, producing cfg.embed_dim features per position."""
    return INPUTS.entry(cfg.input).build(cfg)


register_input("embedding", TokenEmbedding.from_config, reads=TokenEmbedding.reads)
register_input("onehot", OneHotLinear.from_config, reads=OneHotLinear.reads)
register_input("linear", LinearInput.from_config, reads=LinearInput.reads)
register_input("mlp", MLPInput.from_config, reads=MLPInput.reads)
