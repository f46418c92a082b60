"""ModelConfig: the architecture of a DEQSequenceModel (cell, widths, input transform, head, conditioning).

Names are checked against the registries that build them (deqseq.cells.CELLS, deqseq.heads.HEADS,
deqseq.inputs.INPUTS), so a user-registered cell, head or input is a valid name here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cells import CELLS
from .checks import allowed, check_bool, check_choice, check_int, check_number
from .heads import HEADS
from .inputs import INPUTS, inputs_reading


@dataclass
class ModelConfig:
    """Architecture of a DEQSequenceModel.

    cell:           "transformer" | "trellis" (the trellis has hidden = d_model, so its state is 2*d_model wide).
    n_heads, d_ff, norm ("pre" | "post"), window (attention span over earlier positions, the memory length;
                    None = unlimited), state_skip (identity path from z, off by default: see TransformerCell):
                    transformer only.
    kernel_size, dilation: trellis only.
    d_embed:        width of the embedded input (None = d_model).
    input:          how inputs become the injection's input (deqseq.inputs.INPUTS): "embedding" (ids, a table),
                    "onehot" (ids, one-hot then linear), "linear" / "mlp" (real values (B, T, in_dim)).
    in_dim:         features per position of real-valued inputs ("linear" / "mlp"; None for ids). Training fills
                    it from the data when it is None, as it fills vocab_size from the tokenizer.
    head:           the output distribution (deqseq.heads.HEADS): "categorical" over vocab_size ids, "mog"
                    (mixture of `mixtures` diagonal Gaussians, std >= min_std) or "dmol" (discretized mixture of
                    logistics over `levels` values in [-1, 1], the PixelCNN++ likelihood).
    out_dim:        dimensions Q of one real-valued output ("mog" / "dmol"; None = in_dim, or 1 without it).
    tie_embeddings: share the embedding matrix with the head (needs d_embed == d_model, the readout width).
    cond_dim:       width of the conditioning vectors (0 = no conditioning); integer class ids given as
                    conditioning are one-hot encoded over cond_dim classes.
    trained_len:    the segment length the model was trained on (filled by training from data.seq_len). Without
                    a window, generation and scoring let each query attend to at most this many positions
                    (itself included) unless asked otherwise, as in training (see DEQSequenceModel.default_window).
    """

    cell: str = "transformer"
    vocab_size: int = 256
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    norm: str = "pre"
    dropout: float = 0.0
    weight_norm: bool = False
    window: int | None = None
    state_skip: bool = False
    kernel_size: int = 2
    dilation: int = 1
    d_embed: int | None = None
    input: str = "embedding"
    in_dim: int | None = None
    head: str = "categorical"
    out_dim: int | None = None
    mixtures: int = 5
    min_std: float = 1e-3
    levels: int = 256
    tie_embeddings: bool = False
    cond_dim: int = 0
    trained_len: int | None = None

    def __post_init__(self) -> None:
        owner = "ModelConfig"
        check_choice(owner, "cell", self.cell, CELLS)
        for name, minimum in (("vocab_size", 1), ("d_model", 1), ("n_heads", 1), ("d_ff", 1),
                              ("kernel_size", 1), ("dilation", 1), ("cond_dim", 0), ("mixtures", 1),
                              ("levels", 2)):
            check_int(owner, name, getattr(self, name), minimum)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"{owner}.dropout={self.dropout!r} must be a number in [0, 1)")
        check_bool(owner, "weight_norm", self.weight_norm)
        check_bool(owner, "state_skip", self.state_skip)
        check_bool(owner, "tie_embeddings", self.tie_embeddings)
        if self.window is not None:
            check_int(owner, "window", self.window, 0)
        if self.d_embed is not None:
            check_int(owner, "d_embed", self.d_embed, 1)
        if self.trained_len is not None:
            check_int(owner, "trained_len", self.trained_len, 1)
        check_choice(owner, "input", self.input, INPUTS)
        check_choice(owner, "head", self.head, HEADS)
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                check_int(owner, name, getattr(self, name), 1)
        check_number(owner, "min_std", self.min_std, low=0, high=1e3, low_open=True, high_open=True)
        if INPUTS[self.input].reads != "values" and self.in_dim is not None:
            raise ValueError(f"{owner}.in_dim={self.in_dim} is only for real-valued inputs "
                             f"(input: {allowed(inputs_reading('values'))}), not input={self.input!r}")
        if HEADS[self.head].emits == "ids" and self.out_dim is not None:
            raise ValueError(f"{owner}.out_dim={self.out_dim} is for real-valued heads (mog, dmol); the {self.head} "
                             "head's output size is vocab_size")
        cell_check = CELLS[self.cell].check
        if cell_check is not None:
            cell_check(self)
        if self.tie_embeddings and (self.input != "embedding" or self.head != "categorical"):
            raise ValueError(f"{owner}.tie_embeddings=True needs input='embedding' and head='categorical', "
                             f"got input={self.input!r}, head={self.head!r}")
        if self.tie_embeddings and self.embed_dim != self.d_model:
            raise ValueError(f"{owner}.tie_embeddings=True needs d_embed == d_model (the readout width), "
                             f"got d_embed={self.embed_dim}, d_model={self.d_model}")

    @property
    def target_dim(self) -> int:
        """Q, the dimensions of one real-valued output (1 for the categorical head, one id per position)."""
        if HEADS[self.head].emits == "ids":
            return 1
        return self.out_dim if self.out_dim is not None else (self.in_dim or 1)

    @property
    def embed_dim(self) -> int:
        """Width of the embedded input: d_embed, or d_model when d_embed is None."""
        return self.d_model if self.d_embed is None else self.d_embed

