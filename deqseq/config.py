"""Experiment configuration: validated dataclass sections, YAML files and dotted key=value overrides.

A `Config` has the sections run, data, model (ModelConfig), solver (SolverSettings), train and tracking.
`load_config(path, overrides)` starts from the defaults, applies a YAML file, then overrides such as
`train.max_steps=200` or `solver.forward.tol=1e-5`. Every user error is a one-line `ConfigError` that names the
full dotted key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from solvers import GradMode, SolverConfig

from .cells import CELLS
from .heads import HEADS
from .inputs import INPUTS

NORMS = ("pre", "post")
ADVERSARIAL_MODES = ("off", "straight-through", "gumbel")  # train.adversarial; see deqseq.adversarial
REAL_INPUTS = ("linear", "mlp")  # input transforms of real-valued (B, T, in_dim) inputs; the others take ids


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
        _check_choice(owner, "cell", self.cell, CELLS)
        for name, minimum in (("vocab_size", 1), ("d_model", 1), ("n_heads", 1), ("d_ff", 1),
                              ("kernel_size", 1), ("dilation", 1), ("cond_dim", 0), ("mixtures", 1),
                              ("levels", 2)):
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
        if self.trained_len is not None:
            _check_int(owner, "trained_len", self.trained_len, 1)
        _check_choice(owner, "input", self.input, INPUTS)
        _check_choice(owner, "head", self.head, HEADS)
        for name in ("in_dim", "out_dim"):
            if getattr(self, name) is not None:
                _check_int(owner, name, getattr(self, name), 1)
        _check_number(owner, "min_std", self.min_std, low=0, high=1e3, low_open=True, high_open=True)
        if self.input not in REAL_INPUTS and self.in_dim is not None:
            raise ValueError(f"{owner}.in_dim={self.in_dim} is only for real-valued inputs "
                             f"(input: {_allowed(REAL_INPUTS)}), not input={self.input!r}")
        if self.head == "categorical" and self.out_dim is not None:
            raise ValueError(f"{owner}.out_dim={self.out_dim} is for real-valued heads (mog, dmol); the categorical "
                             "head's output size is vocab_size")
        if self.cell == "transformer" and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            raise ValueError(f"{owner}.d_model={self.d_model} must split into n_heads={self.n_heads} heads "
                             "of even size (rotary embeddings rotate pairs)")
        if self.tie_embeddings and (self.input != "embedding" or self.head != "categorical"):
            raise ValueError(f"{owner}.tie_embeddings=True needs input='embedding' and head='categorical', "
                             f"got input={self.input!r}, head={self.head!r}")
        if self.tie_embeddings and self.embed_dim != self.d_model:
            raise ValueError(f"{owner}.tie_embeddings=True needs d_embed == d_model (the readout width), "
                             f"got d_embed={self.embed_dim}, d_model={self.d_model}")

    @property
    def target_dim(self) -> int:
        """Q, the dimensions of one real-valued output (1 for the categorical head, one id per position)."""
        if self.head == "categorical":
            return 1
        return self.out_dim if self.out_dim is not None else (self.in_dim or 1)

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


# ---------------------------------------------------------------------------------------------------------------
# The other sections

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DTYPES = ("float32", "float64")
AMP_MODES = ("auto", "bf16", "off")
TOKENIZERS = ("byte", "char", "word")
TRACKING_MODES = ("online", "offline", "disabled")


def _check_number(owner: str, name: str, value, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError unless value is a finite real number (not a bool) in the given range."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        span = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        span = f"{'<' if high_open else '<='} {high:g}"
    else:
        span = "finite"
    raise ValueError(f"{owner}.{name}={value!r} must be a number {span}")


def _check_str(owner: str, name: str, value) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{owner}.{name}={value!r} must be a non-empty string")


@dataclass
class RunConfig:
    """Identity and placement of a run.

    name:    the run directory is out_dir/name (a single path component).
    seed:    seeds Python, NumPy and torch.
    device:  "auto" (CUDA when present, else CPU) | "cpu" | "cuda" | "cuda:N".
    dtype:   parameter and state dtype, "float32" | "float64".
    compile: wrap the model in torch.compile.
    amp:     "auto" (bf16 autocast of the training step on CUDA, off elsewhere) | "bf16" (on any device, CPU
             included; solver state stays float32) | "off". Evaluation and generation run in the model's dtype.
    threads: CPU threads for torch (None: the usable cores minus one, at least one). Measured on 2 cores with the
             default model: 2 threads alone 62 ms/step, 1 thread 78; next to one busy process 177 against 78, and
             two runs side by side 250 against 85 each: spinning threads that lose their core degrade badly.
    """

    name: str = "default"
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    dtype: str = "float32"
    compile: bool = False
    amp: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        owner = "RunConfig"
        _check_str(owner, "name", self.name)
        if self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"{owner}.name={self.name!r} must be a single directory name (no '/', not '.' or '..')")
        _check_int(owner, "seed", self.seed, 0)
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"{owner}.device={self.device!r} is unknown; allowed: auto, cpu, cuda, cuda:N")
        _check_str(owner, "out_dir", self.out_dir)
        _check_choice(owner, "dtype", self.dtype, DTYPES)
        _check_bool(owner, "compile", self.compile)
        _check_choice(owner, "amp", self.amp, AMP_MODES)
        if self.threads is not None:
            _check_int(owner, "threads", self.threads, 1)


@dataclass
class DataConfig:
    """Where training text comes from and how it is batched.

    source:          a spec string such as "stdlib", "text:PATH" or "markov:order=2,vocab=16"
                     (parsed by deqseq.data).
    tokenizer:       "byte" | "char" | "word", or None for the source's default.
    batch_size, seq_len: training batches are (batch_size, seq_len) tokens.
    eval_batch_size: batch size of evaluation.
    mem_len:         segments of history carried across consecutive batches (Transformer-XL style; 0 = none).
    """

    source: str = "stdlib"
    tokenizer: str | None = None
    batch_size: int = 16
    seq_len: int = 64
    eval_batch_size: int = 8
    mem_len: int = 0

    def __post_init__(self) -> None:
        owner = "DataConfig"
        _check_str(owner, "source", self.source)
        if self.tokenizer is not None:
            _check_choice(owner, "tokenizer", self.tokenizer, TOKENIZERS)
        _check_int(owner, "batch_size", self.batch_size, 1)
        _check_int(owner, "seq_len", self.seq_len, 1)
        _check_int(owner, "eval_batch_size", self.eval_batch_size, 1)
        _check_int(owner, "mem_len", self.mem_len, 0)


@dataclass
class TrainConfig:
    """Optimisation, evaluation, logging and checkpoint schedule.

    lr, weight_decay, betas: AdamW; the learning rate warms up linearly for warmup_steps, then decays by a
                     cosine to min_lr_ratio * lr at max_steps.
    grad_clip:       global gradient-norm clip (0 = off).
    pretrain_steps, pretrain_grad: the first pretrain_steps steps use this gradient mode instead of
                     solver.grad (by default "unrolled:4": four weight-tied layers, no solve).
    eval_every, eval_batches: evaluate every eval_every steps (0 = never) on eval_batches batches (0 = all).
    log_every, save_every: console/tracking log and checkpoint periods in steps (save_every 0 = only at the end).
    max_nonfinite:   stop after this many consecutive non-finite losses.
    resume:          continue from out_dir/name/last.pt when it exists.
    sample_every, sample_tokens: log a generated sample of sample_tokens tokens every sample_every steps (0 = off).
    adversarial:     "off" | "straight-through" | "gumbel": add a next-token discriminator's loss to the NLL
                     (deqseq.adversarial); the model's next-token distribution is relaxed as the mode says.
    adv_weight, adv_tau, adv_lr, adv_d_model: the generator loss weight, the Gumbel-softmax temperature, the
                     discriminator's learning rate and width.
    """

    max_steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    pretrain_steps: int = 0
    pretrain_grad: str = "unrolled:4"
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 200
    max_nonfinite: int = 5
    resume: bool = False
    sample_every: int = 0
    sample_tokens: int = 200
    adversarial: str = "off"
    adv_weight: float = 0.1
    adv_tau: float = 1.0
    adv_lr: float = 1e-4
    adv_d_model: int = 64

    def __post_init__(self) -> None:
        owner = "TrainConfig"
        _check_choice(owner, "adversarial", self.adversarial, ADVERSARIAL_MODES)
        _check_number(owner, "adv_weight", self.adv_weight, low=0)
        _check_number(owner, "adv_tau", self.adv_tau, low=0, low_open=True)
        _check_number(owner, "adv_lr", self.adv_lr, low=0, low_open=True)
        _check_int(owner, "adv_d_model", self.adv_d_model, 2)
        for name, minimum in (("max_steps", 1), ("warmup_steps", 0), ("pretrain_steps", 0), ("eval_every", 0),
                              ("eval_batches", 0), ("log_every", 1), ("save_every", 0), ("max_nonfinite", 1),
                              ("sample_every", 0), ("sample_tokens", 1)):
            _check_int(owner, name, getattr(self, name), minimum)
        _check_number(owner, "lr", self.lr, low=0, low_open=True)
        _check_number(owner, "weight_decay", self.weight_decay, low=0)
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2 or not all(
                not isinstance(b, bool) and isinstance(b, int | float) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"{owner}.betas={self.betas!r} must be two numbers in [0, 1)")
        _check_number(owner, "min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        _check_number(owner, "grad_clip", self.grad_clip, low=0)
        try:
            GradMode.parse(self.pretrain_grad)
        except ValueError as err:  # GradMode's message starts with "grad=..."
            raise ValueError(f"{owner}.pretrain_{err}") from None
        _check_bool(owner, "resume", self.resume)


@dataclass
class TrackingConfig:
    """Experiment tracking (wandb).

    mode:     "offline" (the default: no network needed) | "online" | "disabled".
    project, entity: the wandb project and entity (None = the user's default entity).
    run_name: the tracked run's name (None = run.name).
    tags:     wandb tags.
    """

    mode: str = "offline"
    project: str = "deqseq"
    entity: str | None = None
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = "TrackingConfig"
        _check_choice(owner, "mode", self.mode, TRACKING_MODES)
        _check_str(owner, "project", self.project)
        if self.entity is not None:
            _check_str(owner, "entity", self.entity)
        if self.run_name is not None:
            _check_str(owner, "run_name", self.run_name)
        if isinstance(self.tags, tuple):
            self.tags = list(self.tags)
        if not isinstance(self.tags, list) or not all(isinstance(t, str) for t in self.tags):
            raise ValueError(f"{owner}.tags={self.tags!r} must be a list of strings")


@dataclass
class Config:
    """A whole experiment: one dataclass per section."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverSettings = field(default_factory=SolverSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            expected = _field_types(Config)[f.name]
            if not isinstance(getattr(self, f.name), expected):
                raise ValueError(f"Config.{f.name} must be a {expected.__name__}, "
                                 f"got {type(getattr(self, f.name)).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Loading, overrides and serialisation


class ConfigError(ValueError):
    """A user error in a config file, dict or override: one line naming the dotted key and what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


@cache
def _field_types(cls: type) -> dict[str, Any]:
    """Init fields of a dataclass with their resolved types (the modules use postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


@cache
def _dotted_keys(cls: type) -> tuple[str, ...]:
    """Every dotted key below cls, relative to it, sections included (e.g. "forward", "forward.tol")."""
    keys: list[str] = []
    for name, tp in _field_types(cls).items():
        keys.append(name)
        if _is_section(tp):
            keys.extend(f"{name}.{sub}" for sub in _dotted_keys(tp))
    return tuple(keys)


def _unknown_key(key: str, cls: type, prefix: str) -> ConfigError:
    """The error for `key`, whose lookup failed below `prefix` (an instance of cls), with a suggestion."""
    relative = key[len(prefix) + 1:] if prefix else key
    match = [_join(prefix, m) for m in get_close_matches(relative, _dotted_keys(cls), n=1)]
    everything = _dotted_keys(Config)
    if not match:
        match = get_close_matches(key, everything, n=1)
    if not match:
        # A right name in the wrong section (train.seed for run.seed): compare last components only.
        leaves = {k.rsplit(".", 1)[-1]: k for k in reversed(everything)}
        match = [leaves[m] for m in get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1)]
    if match:
        return ConfigError(f"unknown key '{key}'; did you mean '{match[0]}'?")
    where = f"keys under '{prefix}'" if prefix else "sections"
    return ConfigError(f"unknown key '{key}'; allowed {where}: {', '.join(_field_types(cls))}")


def _show(value: Any) -> str:
    """A value as a user would have written it in YAML, on one line."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    except yaml.YAMLError:  # not YAML-able (an object handed to config_from_dict)
        return repr(value)
    return text[:-3].strip() if text.endswith("...") else text


def _describe(tp: Any, plural: bool = False) -> str:
    """What a field of type tp accepts, in words."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = " or ".join(_describe(a, plural) for a in rest)
        return f"{inner} or null" if type(None) in args else inner
    if tp is bool:
        return "true or false"
    if tp is int:
        return "integers" if plural else "an integer"
    if tp is float:
        return "numbers" if plural else "a number"
    if tp is str:
        return "strings" if plural else "a string"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0], plural=True)}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} {_describe(args[0], plural=True)}"
        return f"a list of {len(args)} values"
    if origin is list:
        return f"a list of {_describe(args[0], plural=True)}" if args else "a list"
    if origin is dict or tp is dict:
        return "mappings" if plural else "a mapping"
    return "values" if plural else "a value"


def _coerce(key: str, value: Any, tp: Any, raw: str | None = None) -> Any:
    """Check value against the field type tp and convert what is unambiguous (ints to floats, lists to tuples,
    integral numbers to ints). raw is the override's text: string fields take it verbatim when YAML read it as
    something else (run.name=2024)."""

    def bad() -> ConfigError:
        return ConfigError(f"{key}={raw if raw is not None else _show(value)}: expected {_describe(tp)}")

    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        for option in rest:
            try:
                return _coerce(key, value, option, raw)
            except ConfigError:
                pass
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int or tp is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value.strip())  # YAML 1.1 reads 1e-5 (no dot) as a string
            except ValueError:
                raise bad() from None
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
            raise bad()
        if tp is float:
            return float(number)
        if isinstance(number, float):
            if not number.is_integer():
                raise bad()
            return int(number)
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if value is not None and raw is not None:
            return raw.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad()
    if origin is tuple or origin is list:
        if not isinstance(value, list | tuple):
            raise bad()
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise bad()
            items = [_coerce(key, v, a) for v, a in zip(value, args, strict=True)]
        else:
            element = args[0] if args else Any
            items = [_coerce(key, v, element) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise bad()
        return dict(value)
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")


def _section_error(key: str, value: Any, cls: type, raw: str | None = None) -> ConfigError:
    shown = raw if raw is not None else _show(value)
    return ConfigError(f"{key}={shown}: expected a mapping of {cls.__name__} keys ({', '.join(_field_types(cls))})")


def _apply_mapping(changes: dict, cls: type, mapping: Any, prefix: str) -> None:
    """Record the values of a nested mapping (a YAML file or a config dict) below prefix into changes."""
    if not isinstance(mapping, Mapping):
        if not prefix:
            raise ConfigError(f"expected a mapping of sections ({', '.join(_field_types(cls))}), "
                              f"got {type(mapping).__name__}")
        raise _section_error(prefix, mapping, cls)
    fields = _field_types(cls)
    for name, value in mapping.items():
        key = _join(prefix, str(name))
        if name not in fields:
            raise _unknown_key(key, cls, prefix)
        tp = fields[name]
        if _is_section(tp):
            if value is None:  # an empty section heading in a file
                continue
            if not isinstance(value, Mapping):
                raise _section_error(key, value, tp)
            _apply_mapping(changes.setdefault(name, {}), tp, value, key)
        else:
            changes[name] = _coerce(key, value, tp)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one short phrase with its position."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def _accepts_str(tp: Any) -> bool:
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return tp is str or (union and str in typing.get_args(tp))


def _apply_override(changes: dict, text: str) -> None:
    """Record one dotted key=value override into changes."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. train.max_steps=200)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key before '=' (e.g. train.max_steps=200)")
    cls, node, prefix = Config, changes, ""
    parts = key.split(".")
    for i, name in enumerate(parts):
        fields = _field_types(cls)
        if name not in fields:
            raise _unknown_key(key, cls, prefix)
        tp, here, last = fields[name], _join(prefix, name), i == len(parts) - 1
        if _is_section(tp) and not last:
            cls, node, prefix = tp, node.setdefault(name, {}), here
            continue
        if not last:
            if typing.get_origin(tp) is dict:
                raise ConfigError(f"unknown key '{key}'; '{here}' takes a whole mapping, e.g. {here}={{key: value}}")
            raise ConfigError(f"unknown key '{key}'; '{here}' is a single value, not a section")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            if not _accepts_str(tp):
                raise ConfigError(f"{key}={raw}: cannot parse the value ({_yaml_problem(err)})") from None
            value = raw.strip()
        if _is_section(tp):  # a whole section as a flow mapping: solver.forward={method: anderson, tol: 1e-5}
            if not isinstance(value, Mapping):
                raise _section_error(key, value, tp, raw)
            _apply_mapping(node.setdefault(name, {}), tp, value, here)
        else:
            node[name] = _coerce(key, value, tp, raw)


def _rekey(message: str, cls: type, path: str) -> str:
    """Turn a validation message "ClassName.field=..." into "dotted.path.field=..."."""
    owner = cls.__name__ + "."
    if path and message.startswith(owner):
        return path + "." + message[len(owner):]
    return f"{path}: {message}" if path else message


def _build(base: Any, changes: dict, path: str = "") -> Any:
    """base with changes applied, innermost sections first; frozen sections are rebuilt, never mutated."""
    if not changes:
        return base
    fields = _field_types(type(base))
    updates = {}
    for name, value in changes.items():
        if _is_section(fields[name]):
            updates[name] = _build(getattr(base, name), value, _join(path, name))
        else:
            updates[name] = value
    try:
        return dataclasses.replace(base, **updates)
    except ValueError as err:
        raise ConfigError(_rekey(str(err), type(base), path)) from None


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """A copy of cfg with dotted key=value overrides applied (values parsed as YAML, then checked by type)."""
    changes: dict = {}
    for text in overrides:
        _apply_override(changes, text)
    return _build(copy.deepcopy(cfg), changes)


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """The Config of a nested dict by section (as config_to_dict writes it); missing keys keep their defaults."""
    changes: dict = {}
    _apply_mapping(changes, Config, d, "")
    return _build(Config(), changes)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults, then the YAML file at path (if any), then the dotted key=value overrides, in that order."""
    changes: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read config file {path}: {reason}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML {_yaml_problem(err)}") from None
        try:
            _apply_mapping(changes, Config, {} if data is None else data, "")
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for text in overrides:
        _apply_override(changes, text)
    return _build(Config(), changes)


def _plain(value: Any) -> Any:
    """value with dataclasses turned into dicts and tuples into lists, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """cfg as a nested dict of plain YAML-able values (tuples become lists); config_from_dict inverts it."""
    return _plain(cfg)


class _Dumper(yaml.SafeDumper):
    """Block-style mappings with lists on one line (betas: [0.9, 0.99])."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=True))


def dump_yaml(cfg: Config) -> str:
    """cfg as a YAML document, sections in order; load_config reads it back to an equal Config."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
