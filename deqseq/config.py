"""Dataclass configs of the model and of its solver, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from solvers import GradMode, SolverConfig

from .cells import CELLS
from .heads import HEADS
from .inputs import INPUTS

NORMS = ("pre", "post")


def _allowed(values) -> str:
    return ", ".join(str(v) for v in sorted(values, key=str))


def _check_int(owner: str, name: str, value, minimum: int) -> None:
    """Raise ValueError unless value is an int >= minimum (bools are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name}={value!r} must be an integer >= {minimum}")


def _check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name}={value!r} must be true or false")


def _check_choice(owner: str, name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name}={value!r} is unknown; allowed: {_allowed(allowed)}")


@dataclass
class ModelConfig:
    """Architecture of a DEQSequenceModel.

    cell:           "transformer" | "trellis" (the trellis has hidden = d_model, so its state is 2*d_model wide).
    n_heads, d_ff, norm ("pre" | "post"), window (attention span over earlier positions, the memory length;
                    None = unlimited), state_skip (identity path from z, off by default: see TransformerCell):
                    transformer only.
    kernel_size, dilation: trellis only.
    d_embed:        width of the embedded input (None = d_model).
    input, head:    names in deqseq.inputs.INPUTS and deqseq.heads.HEADS.
    tie_embeddings: share the embedding matrix with the head (needs d_embed == d_model, the readout width).
    cond_dim:       width of the conditioning vectors (0 = no conditioning).
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
    head: str = "categorical"
    tie_embeddings: bool = False
    cond_dim: int = 0

    def __post_init__(self) -> None:
        owner = "ModelConfig"
        _check_choice(owner, "cell", self.cell, CELLS)
        for name, minimum in (("vocab_size", 1), ("d_model", 1), ("n_heads", 1), ("d_ff", 1),
                              ("kernel_size", 1), ("dilation", 1), ("cond_dim", 0)):
            _check_int(owner, name, getattr(self, name), minimum)
        _check_choice(owner, "norm", self.norm, NORMS)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ValueError(f"{owner}.dropout={self.dropout!r} must be a number in [0, 1)")
        _check_bool(owner, "weight_norm", self.weight_norm)
        _check_bool(owner, "state_skip", self.state_skip)
        _check_bool(owner, "tie_embeddings", self.tie_embeddings)
        if self.window is not None:
            _check_int(owner, "window", self.window, 0)
        if self.d_embed is not None:
            _check_int(owner, "d_embed", self.d_embed, 1)
        _check_choice(owner, "input", self.input, INPUTS)
        _check_choice(owner, "head", self.head, HEADS)
        if self.cell == "transformer" and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            raise ValueError(f"{owner}.d_model={self.d_model} must split into n_heads={self.n_heads} heads "
                             "of even size (rotary embeddings rotate pairs)")
        if self.tie_embeddings and self.embed_dim != self.d_model:
            raise ValueError(f"{owner}.tie_embeddings=True needs d_embed == d_model (the readout width), "
                             f"got d_embed={self.embed_dim}, d_model={self.d_model}")

    @property
    def embed_dim(self) -> int:
        """Width of the embedded input: d_embed, or d_model when d_embed is None."""
        return self.d_model if self.d_embed is None else self.d_embed


def default_forward_solver() -> SolverConfig:
    """Broyden, 30 iterations, relative residual 1e-4."""
    return SolverConfig(method="broyden", max_iter=30, tol=1e-4, stop="rel")


def default_backward_solver() -> SolverConfig:
    """Broyden, 30 iterations, relative residual 1e-5 (the adjoint solve of the implicit gradient)."""
    return SolverConfig(method="broyden", max_iter=30, tol=1e-5, stop="rel")


@dataclass
class SolverSettings:
    """How the DEQ layer finds its equilibrium and differentiates through it.

    forward, backward: solver configs of the equilibrium and of the adjoint (implicit gradient) solve.
    grad:        "implicit" | "phantom:K[:tau]" | "unrolled:K" (K weight-tied layers, no solve: pretraining).
    batch_dims:  1 = one system per sequence, 2 = one system per position (an exactly causal solve).
    jac_weight:  weight of the Jacobian penalty in the training loss (0 = off).
    jac_prob:    probability that a training step computes the penalty at all.
    warm_start:  start a solve from the previous call's equilibrium when it has the same shape (successive
                 single tokens in generation, successive frames of the same shape), instead of zeros.
    """

    forward: SolverConfig = field(default_factory=default_forward_solver)
    backward: SolverConfig = field(default_factory=default_backward_solver)
    grad: str = "implicit"
    batch_dims: int = 1
    jac_weight: float = 0.0
    jac_prob: float = 1.0
    warm_start: bool = False

    def __post_init__(self) -> None:
        owner = "SolverSettings"
        for name in ("forward", "backward"):
            if not isinstance(getattr(self, name), SolverConfig):
                raise ValueError(f"{owner}.{name} must be a solvers.SolverConfig, got {type(getattr(self, name))}")
        try:
            GradMode.parse(self.grad)
        except ValueError as err:
            raise ValueError(f"{owner}.{err}") from None
        _check_int(owner, "batch_dims", self.batch_dims, 1)
        _check_choice(owner, "batch_dims", self.batch_dims, (1, 2))
        if isinstance(self.jac_weight, bool) or not isinstance(self.jac_weight, int | float) or self.jac_weight < 0:
            raise ValueError(f"{owner}.jac_weight={self.jac_weight!r} must be a number >= 0")
        if isinstance(self.jac_prob, bool) or not isinstance(self.jac_prob, int | float) or not 0 <= self.jac_prob <= 1:
            raise ValueError(f"{owner}.jac_prob={self.jac_prob!r} must be a number in [0, 1]")
        _check_bool(owner, "warm_start", self.warm_start)
