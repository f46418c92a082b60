"""ModelIO: what a model reads, what its head emits, what a sample feeds back and what its default targets are.

Every question of the kind "does this model take ids or values, can its samples be fed back, what are its targets
when a batch has none" is answered here, from one frozen descriptor (`model.io`), instead of by inspecting the
input and head modules wherever the answer is needed. Where only a config is at hand (a checkpoint, the data
check before a model exists), the registries answer: `INPUTS[cfg.input].reads`, `HEADS[cfg.head].emits`.

How DEQSequenceModel derives `model.io` (`derive_io`):
- `io=` given: used as it is.
- An input or head built from the config: `reads` / `emits` from its registry entry (`INPUTS[config.input]`,
  `HEADS[config.head]`).
- A user's `input=` / `head=` module: its own `reads` / `emits` attribute when it declares one, else the entry of
  the name the config gives (the module stands in for that input or head).
- Sizes: the module's `vocab` / `in_dim` (input), `target_dim` / `vocab` / `levels` (head) when it has them, else
  the config's vocab_size / in_dim / target_dim / vocab_size / levels; `relaxed` is the input's
  `accepts_relaxed` (False when absent), `embeds_onehot` whether an id input has an `embed_onehot` method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import Tensor, nn

from .heads import HEADS, Emits
from .inputs import INPUTS, Reads

Feedback = Literal["ids", "levels", "values"]


@dataclass(frozen=True)
class ModelIO:
    """What a model reads and emits.

    reads:      "ids": integer ids (B, T) in [0, vocab); "values": reals (B, T, in_dim).
    emits:      what the head's samples are: "ids" (its params are logits over out_vocab ids), "values" (reals
                (B, T, target_dim)) or "levels" (values on a grid of `levels` points in [-1, 1]; the head's
                to_levels gives their level ids).
    target_dim: Q, the dimensions of one position's target (1 for ids).
    vocab:      ids the input takes (reads "ids"; None = not known).
    in_dim:     values per position the input takes (reads "values"; None = not known, any width).
    out_vocab:  ids a head that emits "ids" scores (None = not known).
    levels:     levels of a head that emits "levels".
    relaxed:    the input also takes relaxed one-hot vectors (B, T, vocab) (the "onehot" input).
    embeds_onehot: the input maps (relaxed) one-hot vectors (B, T, vocab) to its features with its own
                `embed_onehot` (both built-in id inputs: what adversarial training embeds its samples with).
    """

    reads: Reads
    emits: Emits
    target_dim: int = 1
    vocab: int | None = None
    in_dim: int | None = None
    out_vocab: int | None = None
    levels: int | None = None
    relaxed: bool = False
    embeds_onehot: bool = False

    def __post_init__(self) -> None:
        if self.reads not in get_args(Reads):
            raise ValueError(f"ModelIO.reads={self.reads!r} must be one of {', '.join(get_args(Reads))}")
        if self.emits not in get_args(Emits):
            raise ValueError(f"ModelIO.emits={self.emits!r} must be one of {', '.join(get_args(Emits))}")
        if self.emits == "levels" and self.levels is None:
            raise ValueError("ModelIO.emits='levels' needs levels (how many the head has)")

    @property
    def categorical(self) -> bool:
        """Whether the head's params are logits over ids (so top-k, top-p, repetition penalty and stop apply)."""
        return self.emits == "ids"

    @property
    def feedback(self) -> Feedback | None:
        """What a sample becomes as the next input, which is also what the default targets are:
        "ids" (a categorical head's ids, over the input's vocabulary), "levels" (a level head's sample as its level
        id, when it has as many levels as the input has ids and one dimension), "values" (a real-valued sample,
        whose width target_dim is the input's), or None when the output space is not the input's (then
        generation is impossible and batches need their targets)."""
        if self.reads == "ids":
            if self.emits == "ids":
                return "ids" if None in (self.vocab, self.out_vocab) or self.vocab == self.out_vocab else None
            if self.emits == "levels" and self.target_dim == 1 and self.levels == self.vocab:
                return "levels"
            return None
        if self.emits != "ids" and self.in_dim in (None, self.target_dim):
            return "values"
        return None

    @property
    def value_width(self) -> int:
        """Values per position of a real-valued input: in_dim, or target_dim (what a sample fed back has) when
        in_dim is not known."""
        return self.in_dim if self.in_dim is not None else self.target_dim

    def check_input(self, x: Tensor) -> None:
        """Raise ValueError with one line when x is not what the model reads (ids vs real values, feature width)."""
        floating = x.dtype.is_floating_point
        if self.reads == "ids":
            relaxed_ok = self.relaxed and x.dim() == 3 and x.shape[-1] == self.vocab
            if floating and not relaxed_ok:
                raise ValueError(f"this model takes integer ids of shape (B, T), got {x.dtype} {tuple(x.shape)}")
            if not floating and x.dim() != 2:
                raise ValueError(f"ids must have shape (B, T), got {tuple(x.shape)}")
            return
        if not floating or x.dim() != 3 or self.in_dim not in (None, x.shape[-1]):
            width = "in_dim" if self.in_dim is None else self.in_dim
            raise ValueError(f"this model takes real values of shape (B, T, {width}), got {x.dtype} {tuple(x.shape)}")

    def next_step_targets(self, x: Tensor) -> Tensor | None:
        """The default targets of positions 0..T-2 of the inputs x: the next inputs, as the head scores them
        (ids (B, T-1), level ids (B, T-1, 1), values (B, T-1, Q)); None when x is not in the output space."""
        kind = self.feedback
        if x.dtype.is_floating_point:
            fits = kind == "values" and x.dim() == 3 and x.shape[-1] == self.target_dim
            return x[:, 1:] if fits else None
        if kind == "ids":
            return x[:, 1:]
        if kind == "levels":
            return x[:, 1:, None]
        return None

    def as_input(self, sample: Tensor, head: nn.Module) -> Tensor | None:
        """A head's sample for one position ((N,) ids or (N, Q) values) as the next input ((N, 1) ids or
        (N, 1, I) values), by `feedback`; None when the sample cannot be fed back."""
        kind = self.feedback
        if kind == "ids" and sample.dim() == 1 and not sample.dtype.is_floating_point:
            return sample[:, None]
        if kind == "levels" and sample.dim() == 2 and sample.shape[-1] == 1:
            return head.to_levels(sample)
        if kind == "values" and sample.dim() == 2 and sample.shape[-1] == self.value_width:
            return sample[:, None, :]
        return None


def derive_io(config: Any, input: nn.Module, head: nn.Module, *, user_input: bool, user_head: bool) -> ModelIO:
    """The ModelIO of a model with these modules and config, by the rule in this module's docstring; user_input /
    user_head: whether the module was passed in by the user (else built from the config's registry entry)."""
    reads = INPUTS[config.input].reads
    emits = HEADS[config.head].emits
    if user_input:
        reads = getattr(input, "reads", reads)
    if user_head:
        emits = getattr(head, "emits", emits)
    return ModelIO(
        reads=reads,
        emits=emits,
        target_dim=getattr(head, "target_dim", config.target_dim),
        vocab=getattr(input, "vocab", config.vocab_size) if reads == "ids" else None,
        in_dim=getattr(input, "in_dim", config.in_dim) if reads == "values" else None,
        out_vocab=getattr(head, "vocab", config.vocab_size) if emits == "ids" else None,
        levels=getattr(head, "levels", config.levels) if emits == "levels" else None,
        relaxed=bool(getattr(input, "accepts_relaxed", False)),
        embeds_onehot=reads == "ids" and callable(getattr(input, "embed_onehot", None)),
    )
