"""The training loop: build_run (a run's resolved config, data, model, optimiser and batches, built without
training), AdamW with warmup + cosine decay, DEQ pretraining schedule, evaluation on the shared segment-scoring
loop, checkpoints, exact resume, tracking, and data-parallel runs under torchrun."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from .cells import History
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import Config, ConfigError, ModelConfig, config_to_dict, dump_yaml
from .data import DataError, SeriesBatcher, StreamBatcher, load_corpus
from .data.batching import ResumableBatches
from .data.protocol import SequenceData
from .heads import HEADS, heads_emitting
from .inputs import INPUTS, inputs_reading
from .model import DEQSequenceModel
from .progress import Progress
from .resume import check_resumable
from .rundir import RunFolder
from .scoring import NLLTotal, perplexity, score_segments
from .tracking import Tracker

if TYPE_CHECKING:
    from .adversarial import AdversarialTraining


class TrainingStopped(RuntimeError):
    """The run stopped on purpose before max_steps (non-finite losses); the message says why."""


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    step: int
    best_valid: float
    valid: dict[str, float] | None
    test: dict[str, float] | None
    interrupted: bool = False


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_threads() -> int:
    """CPU threads when run.threads is not set: the cores this process may use minus one, at least one, so a
    second process on the machine slows a run down gracefully instead of several-fold (see RunConfig.threads)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def training_device(name: str) -> torch.device:
    """resolve_device for run.device, with a ConfigError when it names CUDA on a machine without it."""
    device = resolve_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device={name}: no CUDA device is available on this machine; use run.device=cpu "
                          "or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"run.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def lr_factor(step: int, warmup: int, max_steps: int, floor: float) -> float:
    """Linear warmup to 1, then cosine decay to `floor` at max_steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@contextmanager
def stop_requests() -> Iterator[dict[str, bool]]:
    """SIGINT/SIGTERM set a flag instead of killing the process, so the loop can save `last.pt` first."""
    flag = {"stop": False}

    def handler(signum, frame):  # noqa: ARG001
        flag["stop"] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _history_state(history: History | None) -> dict[str, Any] | None:
    if history is None:
        return None
    return {f.name: getattr(history, f.name) for f in dataclasses.fields(history)}


def _history_from_state(model: DEQSequenceModel, state: dict[str, Any] | None, device) -> History | None:
    if state is None:
        return None
    kind = type(model.deq.cell.empty_history(1, device, torch.float32))
    return kind(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()})


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def token_metrics(total: NLLTotal, unit: str) -> dict[str, float]:
    """Evaluation metrics of a token stream: mean NLL (nats per token), perplexity, bits per unit, tokens."""
    nll = total.mean
    return {"nll": nll, "ppl": perplexity(nll), f"bits_per_{unit}": nll / math.log(2), "tokens": total.count}


def step_metrics(total: NLLTotal, dims: int) -> dict[str, float]:
    """Evaluation metrics of independent sequences: mean NLL per predicted step (nats), per dimension of a step's
    `dims`, in bits per dimension, and the number of steps."""
    nll = total.mean
    return {"nll": nll, "nll_per_dim": nll / dims, "bits_per_dim": nll / dims / math.log(2), "steps": total.count}


def evaluate(model: DEQSequenceModel, ids: torch.Tensor, batch_size: int, seq_len: int, carry_history: bool,
             max_batches: int, device: torch.device, unit: str) -> dict[str, float]:
    """Mean NLL over the tokens of `ids` (history carried across segments when asked), with perplexity and
    bits per unit (byte, char or token)."""
    segments = StreamBatcher(ids, batch_size, seq_len)
    total = score_segments(model, segments, carry_history=carry_history, limit=max_batches, device=device)
    return token_metrics(total, unit)


def evaluate_series(model: DEQSequenceModel, values: torch.Tensor, cond: torch.Tensor | None, batch_size: int,
                    seq_len: int, max_batches: int, device: torch.device) -> dict[str, float]:
    """Mean NLL per predicted step (nats) over every series of a split, with nats and bits per dimension."""
    batches = SeriesBatcher(values, cond, batch_size, seq_len, shuffle=False, drop_last=False)
    total = score_segments(model, batches, limit=max_batches, device=device)
    return step_metrics(total, model.config.target_dim)


# ------------------------------------------------------------------------------------ the config, resolved


def _either(names: tuple[str, ...]) -> str:
    return " or ".join(names)


def _check_id_model(model: ModelConfig, data: SequenceData) -> None:
    """ConfigError when the model cannot read or predict the data's ids."""
    if INPUTS[model.input].reads == "values" or HEADS[model.head].emits == "values":
        raise ConfigError(f"model.input={model.input!r} / model.head={model.head!r} need real-valued data, but "
                          f"data.source={data.spec!r} gives {data.elements}; use input {_either(inputs_reading('ids'))}"
                          f" and head {_either(heads_emitting('ids'))} (or {_either(heads_emitting('levels'))} with "
                          f"levels = {data.vocab_size}, one per id)")
    if HEADS[model.head].emits == "levels" and model.levels != data.vocab_size:
        raise ConfigError(f"model.head={model.head!r} over {data.elements} needs model.levels={data.vocab_size} "
                          f"(one level per id), got {model.levels}")


def _check_value_model(model: ModelConfig, data: SequenceData) -> None:
    """ConfigError when the model cannot read or predict the data's values."""
    if INPUTS[model.input].reads == "ids" or HEADS[model.head].emits == "ids":
        raise ConfigError(f"data.source={data.spec!r} gives {data.elements} (B, T, {data.in_dim}); use model.input "
                          f"{_either(inputs_reading('values'))} and model.head "
                          f"{_either(heads_emitting('values', 'levels'))}, not input={model.input!r}, "
                          f"head={model.head!r}")
    for key in ("in_dim", "out_dim"):
        if getattr(model, key) not in (None, data.in_dim):
            raise ConfigError(f"model.{key}={getattr(model, key)} does not match the data's {data.in_dim} values "
                              "per step")


def fit_model_to_data(model: ModelConfig, data: SequenceData, seq_len: int) -> ModelConfig:
    """The model config with the data's sizes filled in (vocab_size or in_dim, cond_dim, and trained_len =
    seq_len); ConfigError when the model cannot read or predict this data."""
    if data.reads == "ids":
        _check_id_model(model, data)
        sizes = {"vocab_size": data.vocab_size}
    else:
        _check_value_model(model, data)
        sizes = {"in_dim": data.in_dim}
    if model.cond_dim not in (0, data.cond_dim):
        raise ConfigError(f"model.cond_dim={model.cond_dim} does not match the data's conditioning width "
                          f"{data.cond_dim} (cond={data.cond_kind})")
    return replace(model, **sizes, cond_dim=data.cond_dim, trained_len=seq_len)


def _check_batching(cfg: Config, data: SequenceData) -> None:
    """Refuse, before step 1, a history carried across independent sequences, or an evaluation batching that
    cannot cut the valid or test split."""
    d = cfg.data
    if d.mem_len and not data.stream:
        raise ConfigError("data.mem_len carries history across segments of one stream; series data is "
                          "independent sequences, so use data.mem_len=0")
    for split in ("valid", "test"):
        try:
            data.batches(split, d.eval_batch_size, d.seq_len)
        except DataError as err:
            raise ConfigError(f"data.eval_batch_size={d.eval_batch_size} does not fit the {split} split: {err}"
                              ) from None


def resolve_config(cfg: Config, data: SequenceData) -> Config:
    """cfg as a run on `data` uses it: the model's sizes from the data (fit_model_to_data), and a transformer's
    attention window = data.mem_len when the model sets none (the history a run carries is what each query
    sees). ConfigError when the model or the batching does not fit the data."""
    model = fit_model_to_data(cfg.model, data, cfg.data.seq_len)
    if cfg.data.mem_len and model.cell == "transformer" and model.window is None:
        model = replace(model, window=cfg.data.mem_len)
    cfg = replace(cfg, model=model)
    _check_batching(cfg, data)
    return cfg


# ----------------------------------------------------------------------------------------- building a run


@dataclass
class Run:
    """The pieces of a training run, built by build_run: nothing trained, nothing written.

    cfg:         the resolved config (see resolve_config); what checkpoints and tracking save.
    corpus:      the data (train/valid/test splits, a SequenceData).
    batcher:     the training batches of all ranks (data.batch_size * world rows each).
    adversarial: the discriminator, its optimizer and losses of train.adversarial, None when it is off.
    autocast:    whether the training step runs under bf16 autocast.
    """

    cfg: Config
    device: torch.device
    dtype: torch.dtype
    corpus: SequenceData
    model: DEQSequenceModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batcher: ResumableBatches
    adversarial: AdversarialTraining | None
    autocast: bool


def build_model(cfg: Config, device: torch.device, dtype: torch.dtype) -> DEQSequenceModel:
    """The model of a resolved config on device in dtype, its cell compiled with run.compile."""
    model = DEQSequenceModel(cfg.model, cfg.solver).to(device, dtype)
    if cfg.run.compile:  # the cell is what the solver calls every iteration
        # The adjoint solve backpropagates through f(z*) many times (retain_graph), which compiled
        # graphs only allow without donated buffers.
        torch._functorch.config.donated_buffer = False
        model.deq.cell.forward = torch.compile(model.deq.cell.forward, dynamic=True)
    return model


def build_adversarial(cfg: Config, model: DEQSequenceModel) -> AdversarialTraining | None:
    """The discriminator, its optimizer and losses for train.adversarial, None when it is off (ConfigError when
    the model cannot be a token generator)."""
    from .adversarial import AdversarialTraining

    t = cfg.train
    if t.adversarial == "off":
        return None
    try:
        return AdversarialTraining(model, t.adversarial, t.adv_weight, t.adv_tau, t.adv_lr, max_len=cfg.data.seq_len,
                                   seed=cfg.run.seed, d_model=t.adv_d_model, d_ff=2 * t.adv_d_model)
    except ValueError as err:
        raise ConfigError(f"train.adversarial={t.adversarial!r}: {err}") from None


def build_run(cfg: Config, *, world: int = 1, device: torch.device | None = None) -> Run:
    """Load the data, resolve cfg against it and build the model, AdamW with warmup + cosine decay, and the
    training batches, without training or writing anything.

    torch and random are seeded with run.seed first, so a config builds the same weights as Trainer(cfg).
    world: the data-parallel ranks the batches are cut for; device: default run.device (ConfigError when it
    names a CUDA device this machine lacks). ConfigError when the model or the batching does not fit the data.
    """
    device = device if device is not None else training_device(cfg.run.device)
    dtype = torch.float64 if cfg.run.dtype == "float64" else torch.float32
    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    corpus = load_corpus(cfg.data.spec, cfg.data.tokenizer)
    cfg = resolve_config(cfg, corpus)
    model = build_model(cfg, device, dtype)
    t = cfg.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    adversarial = build_adversarial(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, t.warmup_steps, t.max_steps, t.min_lr_ratio))
    batcher = corpus.batches("train", cfg.data.batch_size * world, cfg.data.seq_len, training=True,
                             seed=cfg.run.seed)
    # bf16 autocast of the training step: asked for (any device, CPU included), or by default on CUDA.
    autocast = cfg.run.amp == "bf16" or (cfg.run.amp == "auto" and device.type == "cuda")
    return Run(cfg, device, dtype, corpus, model, optimizer, scheduler, batcher, adversarial, autocast)


# ------------------------------------------------------------------------------------------------ Trainer


def _join_process_group() -> tuple[bool, int, int]:
    """(distributed, rank, world size) of this process, joining torchrun's process group when WORLD_SIZE > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False, 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True, dist.get_rank(), dist.get_world_size()


def _rank_device(name: str, distributed: bool) -> torch.device:
    """run.device for this rank: a distributed CUDA run puts each rank on its LOCAL_RANK device."""
    device = training_device(name)
    if device.type == "cuda" and distributed:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _checkpoint_path(path: Path) -> Path:
    """The checkpoint a resume path names: a folder's (or a name without suffix's) last.pt, or the .pt file."""
    return path / "last.pt" if path.is_dir() or not path.suffix else path


def _writing_to(cfg: Config, resume_dir: str | Path | None) -> Config:
    """cfg with run.out_dir / run.name of resume_dir's run folder: a resumed run writes where it was read from."""
    if resume_dir is None:
        return cfg
    folder = _checkpoint_path(Path(resume_dir)).parent
    return replace(cfg, run=replace(cfg.run, out_dir=str(folder.parent), name=folder.name))


class Trainer:
    """One training run: builds everything from a Config (build_run), then `run()`."""

    def __init__(self, cfg: Config, resume_dir: str | Path | None = None, progress: bool | str = True,
                 force: bool = False) -> None:
        """Build data, model, optimiser and batching from cfg; resume from resume_dir (a run folder or a .pt file,
        whose folder the run then keeps writing to) or, with train.resume, from out_dir/name. A fresh run into a
        folder that already holds one is refused unless force (which starts it over)."""
        self.distributed, self.rank, self.world = _join_process_group()
        device = _rank_device(cfg.run.device, self.distributed)
        torch.set_num_threads(cfg.run.threads or default_threads())
        run = build_run(_writing_to(cfg, resume_dir), world=self.world, device=device)
        self.cfg, self.device, self.dtype, self.corpus = run.cfg, run.device, run.dtype, run.corpus
        self.model, self.optimizer, self.scheduler, self.batcher = run.model, run.optimizer, run.scheduler, run.batcher
        self.adversarial, self.autocast = run.adversarial, run.autocast
        self.run_dir = Path(self.cfg.run.out_dir) / self.cfg.run.name
        self.step, self.best_valid, self.nonfinite, self.history = 0, math.inf, 0, None
        self.wandb_id: str | None = None
        self.saved: dict[str, int] = {}  # checkpoint name -> the step it holds, for files this run wrote
        self.progress: bool | str = progress if self.rank == 0 else False
        self.tracker = Tracker.disabled()
        self.folder = self._start(resume_dir, force)

    def _start(self, resume_dir: str | Path | None, force: bool) -> RunFolder:
        """Open the run folder (fresh, or for resuming) and resume from resume_dir or, with train.resume, from the
        run folder's last.pt when there is one."""
        resume_path = Path(resume_dir) if resume_dir is not None else None
        if resume_path is None and self.cfg.train.resume and (self.run_dir / "last.pt").is_file():
            resume_path = self.run_dir
        resumed = self._read_resumable(resume_path) if resume_path is not None else None  # before writing anything
        folder = RunFolder(self.run_dir)
        if self.rank == 0:
            folder.open(fresh=resumed is None, force=force)
        try:
            if resumed is not None:
                self._resume(*resumed)
        except BaseException:
            folder.close()
            raise
        return folder

    # -- checkpoints -------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "adversarial": self.adversarial.state_dict() if self.adversarial is not None else None,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "data": self.batcher.state_dict(),
            "rng": _rng_state(), "config": config_to_dict(self.cfg),
            "tokenizer": self.corpus.tokenizer.state_dict() if self.corpus.tokenizer is not None else None,
            "best_valid": self.best_valid,
            "nonfinite": self.nonfinite, "history": _history_state(self.history), "wandb_id": self.wandb_id,
        }

    def weights_finite(self) -> bool:
        """Whether every parameter is finite (one host sync)."""
        return bool(torch.stack([p.isfinite().all() for p in self.model.parameters()]).all())

    def save(self, name: str) -> None:
        """Write run_dir/name atomically (rank 0 only); never weights that are not finite (TrainingStopped)."""
        if self.rank != 0:
            return
        if not self.weights_finite():
            raise TrainingStopped(f"stopped at step {self.step}: the weights are not finite, so {name} was not "
                                  f"overwritten; {self._last_good()}")
        save_checkpoint(self.run_dir / name, self._state())
        self.saved[name] = self.step

    def _last_good(self) -> str:
        """Which checkpoint holds the last good state, for messages (only files that exist and this run wrote,
        or that it resumed from)."""
        if "last.pt" in self.saved and (self.run_dir / "last.pt").is_file():
            return f"the last good checkpoint is {self.run_dir / 'last.pt'} (step {self.saved['last.pt']})"
        return "no checkpoint of this run was saved yet"

    def _read_resumable(self, run_dir: Path) -> tuple[Path, dict[str, Any]]:
        """The checkpoint to resume from (a folder's last.pt, or a .pt file) and its state, checked to fit the
        config (CheckpointError / ConfigError with one line)."""
        path = _checkpoint_path(run_dir)
        state = read_checkpoint(path, map_location=self.device)
        check_resumable(state["config"], config_to_dict(self.cfg))
        return path, state

    def _resume(self, path: Path, state: dict[str, Any]) -> None:
        try:  # a checkpoint of another model or batching is a user error, not a bug
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.batcher.load_state_dict(state["data"])
        except (RuntimeError, ValueError) as err:
            reason = " ".join(" ".join(str(err).splitlines()[:2]).split())
            raise CheckpointError(f"checkpoint {path} does not fit this config: {reason}") from None
        if self.adversarial is not None and state.get("adversarial") is not None:
            self.adversarial.load_state_dict(state["adversarial"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best_valid, self.nonfinite = state["step"], state["best_valid"], state["nonfinite"]
        self.history = _history_from_state(self.model, state.get("history"), self.device)
        self.wandb_id = state.get("wandb_id")
        _set_rng_state(state["rng"])
        if path == self.run_dir / "last.pt":
            self.saved["last.pt"] = self.step

    # -- one step ----------------------------------------------------------------------------------------
    def _local(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = self.cfg.data.batch_size
        return {k: v[self.rank * b:(self.rank + 1) * b].to(self.device) for k, v in batch.items()}

    def _average_gradients(self) -> None:
        # Gradients are averaged by hand rather than by DistributedDataParallel: the loss comes from
        # model.loss, not the wrapped forward DDP instruments, and the implicit backward runs a re-entrant
        # autograd pass (the adjoint solve); one explicit all-reduce per step is simple and verifiable.
        for p in self.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """One optimisation step; returns its metrics, or None when the loss or the gradient norm was not finite
        (the step is skipped: no update is applied). TrainingStopped if an update made the weights non-finite."""
        t = self.cfg.train
        pretraining = self.step < t.pretrain_steps
        grad = t.pretrain_grad if pretraining else self.cfg.solver.grad
        if self.model.settings.grad != grad:
            self.model.settings = replace(self.model.settings, grad=grad)
        batch = self._local(batch)
        if self.cfg.data.mem_len:
            batch["history"] = self.history
        self.optimizer.zero_grad(set_to_none=True)
        adversarial = self.adversarial is not None and not pretraining
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, metrics, out = self.model.loss(batch, with_output=True)
            if adversarial:  # the discriminator scores the model's relaxed next-token predictions
                adv_loss, adv_metrics = self.adversarial.generator_loss(out.params, batch["t"])
                loss = loss + adv_loss
                metrics.update(adv_metrics, loss=loss.item())
        finite = torch.isfinite(loss)
        if self.distributed:  # every rank must agree to skip, or the all-reduce below would hang
            flag = finite.float().to(self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag > 0
        if not bool(finite):
            self.nonfinite += 1
            return None
        loss.backward()
        if self.distributed:
            self._average_gradients()  # every rank then sees the same gradient norm, so all skip together
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip or math.inf)
        if not math.isfinite(float(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite += 1
            return None
        self.nonfinite = 0
        self.optimizer.step()
        self.scheduler.step()
        if not self.weights_finite():
            raise TrainingStopped(f"stopped at step {self.step + 1}: the update made the weights non-finite "
                                  f"(lower train.lr?); {self._last_good()}")
        if adversarial:
            metrics.update(self.adversarial.discriminator_step(out.params.detach(), batch["t"]))
        if self.cfg.data.mem_len:
            self.history = out.history
        if out.stats is not None and out.stats.backward is not None:  # filled in by loss.backward()
            metrics.update(out.stats.backward.summary("bwd_"))
        metrics.update(lr=self.scheduler.get_last_lr()[0], grad_norm=float(grad_norm), pretraining=float(pretraining))
        return metrics

    # -- the loop ----------------------------------------------------------------------------------------
    def _evaluate(self, split: str) -> dict[str, float]:
        d = self.cfg.data
        limit = self.cfg.train.eval_batches if split == "valid" else 0
        total = score_segments(self.model, self.corpus.batches(split, d.eval_batch_size, d.seq_len),
                               carry_history=self.corpus.stream and bool(d.mem_len), limit=limit, device=self.device)
        if self.corpus.stream:
            return token_metrics(total, self.corpus.unit)
        return step_metrics(total, self.model.config.target_dim)

    def sample(self, prompt_len: int = 16) -> str:
        """Text generated from the start of the valid split (train.sample_tokens tokens, temperature 0.8,
        fixed seed), decoded; the model's train/eval mode is left as it was."""
        from .generation import generate

        prompt = self.corpus.valid[:prompt_len].to(self.device)
        top_k = 50 if self.model.io.categorical else None  # other heads sample with temperature only
        ids = generate(self.model, prompt, self.cfg.train.sample_tokens, temperature=0.8, top_k=top_k, seed=self.step)
        return self.corpus.tokenizer.decode(ids[0].tolist())


    def _open_tracking(self) -> None:
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))
        tr = self.cfg.tracking
        self.tracker = Tracker(self.run_dir, tr.mode, tr.project, tr.run_name or self.cfg.run.name,
                               config_to_dict(self.cfg), tr.entity, list(tr.tags), resume_id=self.wandb_id)
        self.wandb_id = self.tracker.run_id
        baselines = self.corpus.baselines()  # the best achievable NLL, or what a model of no dependencies reaches
        if baselines:
            self.tracker.log(baselines, self.step)

    def _describe(self) -> str:
        """The start line: data, model size, device and where the run goes."""
        c, d = self.cfg, self.cfg.data
        params = sum(p.numel() for p in self.model.parameters())
        solver = c.solver
        mode = f"{solver.grad} gradients, {solver.forward.method} tol {solver.forward.tol:g}"
        start = f"resuming at step {self.step}" if self.step else "starting"
        line = (f"{start}: {c.model.cell} DEQ, {params:,} parameters, {mode}; training on "
                f"{self.corpus.amount('train')} ({d.source}), batches of {d.batch_size * self.world} x {d.seq_len}; "
                f"device {self.device}; run folder {self.run_dir}")
        return "\n".join([line, *self.corpus.notes()])

    def _evaluation_line(self, split: str, values: dict[str, float], batches: int) -> str:
        d = self.cfg.data
        unit = next((k for k in values if k.startswith("bits_per_")), None)
        covers = "the whole split" if not batches else (
            f"its first {batches} batches of {d.eval_batch_size} x {d.seq_len}")
        shown = f"nll {values['nll']:.4f}" + (f"  {unit.replace('_', ' ')} {values[unit]:.4f}" if unit else "")
        return f"step {self.step}: {split} {shown} (over {covers})"

    def _announce(self, show: Progress) -> None:
        """The start line and, with pretraining, what the first steps train."""
        t = self.cfg.train
        show.event(self._describe())
        if t.pretrain_steps >= t.max_steps:
            show.event(f"warning: train.pretrain_steps={t.pretrain_steps} >= train.max_steps={t.max_steps}: the whole "
                       f"run trains the explicit {t.pretrain_grad} network and never uses the DEQ's solver")
        elif self.step < t.pretrain_steps:
            show.event(f"steps 1-{t.pretrain_steps}: pretraining the explicit weight-tied network "
                       f"({t.pretrain_grad}), then the DEQ ({self.cfg.solver.grad})")

    def _skipped(self) -> None:
        """After a skipped non-finite step: log the streak; at train.max_nonfinite, save and stop."""
        self.tracker.log({"nonfinite_skips": float(self.nonfinite)}, self.step)
        if self.nonfinite >= self.cfg.train.max_nonfinite:
            streak, self.nonfinite = self.nonfinite, 0  # a resumed run counts a streak afresh
            self.save("last.pt")  # skipped steps changed nothing: these weights are the last good
            raise TrainingStopped(f"stopped at step {self.step}: {streak} consecutive non-finite losses or "
                                  f"gradients; {self._last_good()}")

    def _validate(self, show: Progress) -> dict[str, float]:
        """Evaluate the valid split, log it (and show it) and keep best.pt."""
        valid = self._evaluate("valid")
        self.tracker.log({f"valid_{k}": v for k, v in valid.items()}, self.step)
        show.event(self._evaluation_line("valid", valid, self.cfg.train.eval_batches))
        if valid["nll"] < self.best_valid:
            self.best_valid = valid["nll"]
            self.save("best.pt")
        return valid

    def _after_step(self, metrics: dict[str, float], show: Progress) -> dict[str, float] | None:
        """Log a finished step and do what is due at it (evaluate, sample, save); the valid metrics when it
        evaluated."""
        t = self.cfg.train
        if self.step % t.log_every == 0 or self.step == t.max_steps:
            self.tracker.log(metrics, self.step)
        show.step(self.step, "pretrain" if metrics.get("pretraining") else "deq", metrics)
        if self.step == t.pretrain_steps and t.pretrain_steps < t.max_steps:
            show.event(f"step {self.step}: pretraining done; training the DEQ ({self.cfg.solver.grad})")
        valid = self._validate(show) if t.eval_every and self.step % t.eval_every == 0 else None
        if t.sample_every and self.step % t.sample_every == 0 and self.rank == 0 and self.corpus.stream:
            self.tracker.log_text("sample", self.sample(), self.step)
        if t.save_every and self.step % t.save_every == 0:
            self.save("last.pt")
        return valid

    def _final_evaluation(self) -> tuple[dict[str, float], dict[str, float]]:
        """The valid and test metrics of the finished run, logged together; best.pt kept."""
        try:
            valid, test = self._evaluate("valid"), self._evaluate("test")
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"interrupted during the final evaluation; {self._last_good()}") from None
        self.tracker.log({**{f"valid_{k}": v for k, v in valid.items()},
                          **{f"test_{k}": v for k, v in test.items()}}, self.step)
        if valid["nll"] < self.best_valid:
            self.best_valid = valid["nll"]
            self.save("best.pt")
        return valid, test

    def run(self) -> TrainResult:
        """Train to max_steps (or until stopped), evaluating and checkpointing on the way.

        SIGINT / SIGTERM stop the loop after the current step (also during a streak of skipped non-finite
        steps) and save last.pt; signals during that save are held until it is written. A Ctrl-C during the final
        evaluation raises KeyboardInterrupt after last.pt is saved.
        """
        try:
            return self._run()
        finally:
            self.tracker.finish()
            self.folder.close()

    def _run(self) -> TrainResult:
        t = self.cfg.train
        self._open_tracking()
        batches = self.batcher.cycle()
        show = Progress(self.progress if isinstance(self.progress, str) else ("auto" if self.progress else "off"),
                        t.max_steps, self.step, t.log_every) if self.rank == 0 else Progress("off", 0, 0, 1)
        valid, test = None, None
        tokens = self.cfg.data.batch_size * self.cfg.data.seq_len * self.world
        self._announce(show)
        try:
            with stop_requests() as requests:
                while self.step < t.max_steps and not requests["stop"]:
                    start = time.perf_counter()
                    metrics = self.train_step(next(batches))
                    if metrics is None:
                        self._skipped()
                        continue
                    self.step += 1
                    metrics["tokens_per_s"] = tokens / (time.perf_counter() - start)
                    evaluated = self._after_step(metrics, show)
                    valid = evaluated if evaluated is not None else valid
                interrupted = self.step < t.max_steps
                self.save("last.pt")  # still inside stop_requests: a second Ctrl-C cannot cut this save short
            show.close()
            if not interrupted:
                valid, test = self._final_evaluation()
            return TrainResult(self.run_dir, self.step, self.best_valid, valid, test, interrupted)
        finally:
            show.close()


def train(cfg: Config, resume_dir: str | Path | None = None, progress: bool | str = True,
          force: bool = False) -> TrainResult:
    """Build a Trainer from `cfg` (resuming from `resume_dir` or, with train.resume, from runs/<name>) and run it.
    progress: True / "auto" (a bar on a terminal, plain lines otherwise), "bar", "lines", or False / "off"."""
    return Trainer(cfg, resume_dir=resume_dir, progress=progress, force=force).run()
