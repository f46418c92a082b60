"""The experiment's config schema: one dataclass per section (run, data, model, solver, train, tracking).

The model and solver sections are defined beside what they configure (deqseq.model_config.ModelConfig,
deqseq.deq.SolverSettings); this module adds the run, data, train and tracking sections and the whole Config.
Each dataclass checks its own values; deqseq.config.loader fills them from YAML files and key=value overrides.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from solvers import GradMode

from ..adversarial import ADVERSARIAL_MODES
from ..checks import check_bool, check_choice, check_int, check_number, check_str
from ..data import TOKENIZERS, spec_with_options
from ..deq import SolverSettings
from ..model_config import ModelConfig


@cache
def field_types(cls: type) -> dict[str, Any]:
    """Init fields of a settings dataclass with their resolved types (the modules use postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DTYPES = ("float32", "float64")
AMP_MODES = ("auto", "bf16", "off")
TRACKING_MODES = ("online", "offline", "disabled")


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
        check_str(owner, "name", self.name)
        if self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"{owner}.name={self.name!r} must be a single directory name (no '/', not '.' or '..')")
        check_int(owner, "seed", self.seed, 0)
        if not isinstance(self.device, str) or not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"{owner}.device={self.device!r} is unknown; allowed: auto, cpu, cuda, cuda:N")
        check_str(owner, "out_dir", self.out_dir)
        check_choice(owner, "dtype", self.dtype, DTYPES)
        check_bool(owner, "compile", self.compile)
        check_choice(owner, "amp", self.amp, AMP_MODES)
        if self.threads is not None:
            check_int(owner, "threads", self.threads, 1)


@dataclass
class DataConfig:
    """Where training text comes from and how it is batched.

    source:          the data source: a registered name ("stdlib", "markov", "fourier", "digits", "text", ...),
                     optionally with its options inline as a spec ("markov:order=2,vocab=16", "text:PATH").
    options:         the source's options as keys, merged over the spec's (data.options.vocab=32,
                     data.options.path=corpus.txt); the same names as the spec's key=value part.
    tokenizer:       a deqseq.data.TOKENIZERS name ("byte", "char", "word"; "id" for synthetic ids), or None
                     for the source's default; the source says which of them it takes.
    batch_size, seq_len: training batches are (batch_size, seq_len) tokens.
    eval_batch_size: batch size of evaluation.
    mem_len:         segments of history carried across consecutive batches (Transformer-XL style; 0 = none).
    """

    source: str = "stdlib"
    options: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    batch_size: int = 16
    seq_len: int = 64
    eval_batch_size: int = 8
    mem_len: int = 0

    @property
    def spec(self) -> str:
        """The whole data spec: source with options merged in (what deqseq.data.load_corpus reads)."""
        return spec_with_options(self.source, self.options)

    def __post_init__(self) -> None:
        owner = "DataConfig"
        check_str(owner, "source", self.source)
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ValueError(f"{owner}.options={self.options!r} must be a mapping of option names to values")
        if self.tokenizer is not None:
            check_choice(owner, "tokenizer", self.tokenizer, TOKENIZERS)
        check_int(owner, "batch_size", self.batch_size, 1)
        check_int(owner, "seq_len", self.seq_len, 1)
        check_int(owner, "eval_batch_size", self.eval_batch_size, 1)
        check_int(owner, "mem_len", self.mem_len, 0)


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
        check_choice(owner, "adversarial", self.adversarial, ADVERSARIAL_MODES)
        check_number(owner, "adv_weight", self.adv_weight, low=0)
        check_number(owner, "adv_tau", self.adv_tau, low=0, low_open=True)
        check_number(owner, "adv_lr", self.adv_lr, low=0, low_open=True)
        check_int(owner, "adv_d_model", self.adv_d_model, 2)
        for name, minimum in (("max_steps", 1), ("warmup_steps", 0), ("pretrain_steps", 0), ("eval_every", 0),
                              ("eval_batches", 0), ("log_every", 1), ("save_every", 0), ("max_nonfinite", 1),
                              ("sample_every", 0), ("sample_tokens", 1)):
            check_int(owner, name, getattr(self, name), minimum)
        check_number(owner, "lr", self.lr, low=0, low_open=True)
        check_number(owner, "weight_decay", self.weight_decay, low=0)
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if not isinstance(self.betas, tuple) or len(self.betas) != 2 or not all(
                not isinstance(b, bool) and isinstance(b, int | float) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"{owner}.betas={self.betas!r} must be two numbers in [0, 1)")
        check_number(owner, "min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_number(owner, "grad_clip", self.grad_clip, low=0)
        try:
            GradMode.parse(self.pretrain_grad)
        except ValueError as err:  # GradMode's message starts with "grad=..."
            raise ValueError(f"{owner}.pretrain_{err}") from None
        check_bool(owner, "resume", self.resume)


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
        check_choice(owner, "mode", self.mode, TRACKING_MODES)
        check_str(owner, "project", self.project)
        if self.entity is not None:
            check_str(owner, "entity", self.entity)
        if self.run_name is not None:
            check_str(owner, "run_name", self.run_name)
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
            expected = field_types(Config)[f.name]
            if not isinstance(getattr(self, f.name), expected):
                raise ValueError(f"Config.{f.name} must be a {expected.__name__}, "
                                 f"got {type(getattr(self, f.name)).__name__}")

