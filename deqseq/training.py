"""The training loop: AdamW with warmup + cosine decay, DEQ pretraining schedule, evaluation, checkpoints,
exact resume, tracking, and data-parallel runs under torchrun."""

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
from typing import Any

import torch
import torch.distributed as dist

from .cells import History
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .config import Config, ConfigError, ModelConfig, config_to_dict, dump_yaml
from .data import Corpus, DataError, ImageData, SeriesBatcher, SeriesData, StreamBatcher, load_corpus
from .heads import HEADS, heads_emitting
from .inputs import INPUTS, inputs_reading
from .model import DEQSequenceModel, eval_mode
from .progress import Progress
from .resume import check_resumable
from .rundir import RunFolder
from .tracking import Tracker


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


@torch.no_grad()
def evaluate(model: DEQSequenceModel, ids: torch.Tensor, batch_size: int, seq_len: int, carry_history: bool,
             max_batches: int, device: torch.device, unit: str) -> dict[str, float]:
    """Mean NLL over the tokens of `ids` (history carried across segments when asked), with perplexity and
    bits per unit (byte, char or token)."""
    batcher = StreamBatcher(ids, batch_size, seq_len)
    total, count, history = 0.0, 0, None
    with eval_mode(model):
        for i, batch in enumerate(batcher):
            if max_batches and i >= max_batches:
                break
            x, t = batch["x"].to(device), batch["t"].to(device)
            out = model(x, history=history)
            total += float(model.head.nll(out.logits, t).sum())
            count += t.numel()
            history = out.history if carry_history else None
    nll = total / max(count, 1)
    return {"nll": nll, "ppl": math.exp(min(nll, 50.0)), f"bits_per_{unit}": nll / math.log(2), "tokens": count}


@torch.no_grad()
def evaluate_series(model: DEQSequenceModel, values: torch.Tensor, cond: torch.Tensor | None, batch_size: int,
                    seq_len: int, max_batches: int, device: torch.device) -> dict[str, float]:
    """Mean NLL per predicted step (nats) over every series of a split, with nats and bits per dimension."""
    batcher = SeriesBatcher(values, cond, batch_size, seq_len, shuffle=False, drop_last=False)
    total, count = 0.0, 0
    with eval_mode(model):
        for i, batch in enumerate(batcher):
            if max_batches and i >= max_batches:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["x"], cond=batch.get("c"))
            nll = model.nll(out, batch)
            total += float(nll.double().sum())
            count += nll.numel()
    nll = total / max(count, 1)
    dims = model.config.target_dim
    return {"nll": nll, "nll_per_dim": nll / dims, "bits_per_dim": nll / dims / math.log(2), "steps": count}


def _either(names: tuple[str, ...]) -> str:
    return " or ".join(names)


def _fit_model_to_data(model: ModelConfig, corpus: Corpus | SeriesData | ImageData, seq_len: int) -> ModelConfig:
    """The model config with the data's sizes filled in (vocab_size, in_dim, cond_dim, and trained_len =
    seq_len); ConfigError when the model cannot read or predict this data."""
    reads, emits = INPUTS[model.input].reads, HEADS[model.head].emits
    id_input, id_heads = _either(inputs_reading("ids")), _either(heads_emitting("ids", "levels"))
    if isinstance(corpus, ImageData):
        if reads == "values" or emits == "values":
            raise ConfigError(f"data.source={corpus.spec!r} gives pixel ids; use model.input {id_input} "
                              f"and model.head {id_heads}, not input={model.input!r}, head={model.head!r}")
        if emits == "levels" and model.levels != corpus.vocab_size:
            raise ConfigError(f"model.head={model.head!r} over pixel ids needs model.levels={corpus.vocab_size} (the "
                              f"{corpus.levels} levels and the start token), got {model.levels}")
        if model.cond_dim not in (0, corpus.cond_dim):
            raise ConfigError(f"model.cond_dim={model.cond_dim} does not match the data's {corpus.cond_dim} classes "
                              f"(cond={corpus.cond_kind})")
        return replace(model, vocab_size=corpus.vocab_size, cond_dim=corpus.cond_dim, trained_len=seq_len)
    if isinstance(corpus, Corpus):
        if reads == "values" or emits == "values":
            raise ConfigError(f"model.input={model.input!r} / model.head={model.head!r} need real-valued data, but "
                              f"data.source={corpus.spec!r} gives token ids; use input {id_input} and head "
                              f"{_either(heads_emitting('ids'))} (or {_either(heads_emitting('levels'))} with levels = "
                              "vocabulary size)")
        if emits == "levels" and model.levels != corpus.tokenizer.vocab_size:
            raise ConfigError(f"model.head={model.head!r} over token ids needs model.levels="
                              f"{corpus.tokenizer.vocab_size} (the vocabulary size), got {model.levels}")
        return replace(model, vocab_size=corpus.tokenizer.vocab_size, trained_len=seq_len)
    if reads == "ids" or emits == "ids":
        value_inputs, value_heads = _either(inputs_reading("values")), _either(heads_emitting("values", "levels"))
        raise ConfigError(f"data.source={corpus.spec!r} gives real values (B, T, {corpus.in_dim}); use model.input "
                          f"{value_inputs} and model.head {value_heads}, not input={model.input!r}, "
                          f"head={model.head!r}")
    for key, have in (("in_dim", corpus.in_dim), ("out_dim", corpus.in_dim)):
        if getattr(model, key) not in (None, have):
            raise ConfigError(f"model.{key}={getattr(model, key)} does not match the data's {have} values per step")
    if model.cond_dim not in (0, corpus.cond_dim):
        raise ConfigError(f"model.cond_dim={model.cond_dim} does not match the data's conditioning width "
                          f"{corpus.cond_dim} (cond={corpus.cond_kind})")
    return replace(model, in_dim=corpus.in_dim, cond_dim=corpus.cond_dim, trained_len=seq_len)


class Trainer:
    """One training run: builds everything from a Config, then `run()`."""

    def __init__(self, cfg: Config, resume_dir: str | Path | None = None, progress: bool = True,
                 force: bool = False) -> None:
        """Build data, model, optimiser and batching from cfg; resume from resume_dir (a run folder or a .pt file,
        whose folder the run then keeps writing to) or, with train.resume, from out_dir/name. A fresh run into a
        folder that already holds one is refused unless force (which starts it over)."""
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.device = training_device(cfg.run.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        self.dtype = torch.float64 if cfg.run.dtype == "float64" else torch.float32
        torch.set_num_threads(cfg.run.threads or default_threads())
        if resume_dir is not None:  # a resumed run writes where it was read from
            folder = Path(resume_dir) if Path(resume_dir).is_dir() or not Path(resume_dir).suffix else Path(
                resume_dir).parent
            cfg = replace(cfg, run=replace(cfg.run, out_dir=str(folder.parent), name=folder.name))
        self.run_dir = Path(cfg.run.out_dir) / cfg.run.name
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)

        self.corpus: Corpus | SeriesData | ImageData = load_corpus(cfg.data.spec, cfg.data.tokenizer)
        self.series = not isinstance(self.corpus, Corpus)  # independent fixed-length sequences (series, images)
        model_cfg = _fit_model_to_data(cfg.model, self.corpus, cfg.data.seq_len)
        if cfg.data.mem_len and model_cfg.cell == "transformer" and model_cfg.window is None:
            model_cfg = replace(model_cfg, window=cfg.data.mem_len)
        self.cfg = replace(cfg, model=model_cfg)
        self._check_eval_batches()
        self.model = DEQSequenceModel(model_cfg, cfg.solver).to(self.device, self.dtype)
        if cfg.run.compile:  # the cell is what the solver calls every iteration
            # The adjoint solve backpropagates through f(z*) many times (retain_graph), which compiled
            # graphs only allow without donated buffers.
            torch._functorch.config.donated_buffer = False
            self.model.deq.cell.forward = torch.compile(self.model.deq.cell.forward, dynamic=True)
        # bf16 autocast of the training step: asked for (any device, CPU included), or by default on CUDA.
        self.autocast = cfg.run.amp == "bf16" or (cfg.run.amp == "auto" and self.device.type == "cuda")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, betas=tuple(cfg.train.betas),
                                           weight_decay=cfg.train.weight_decay)
        t = cfg.train
        self.adversarial = self._adversarial(cfg) if t.adversarial != "off" else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, t.warmup_steps, t.max_steps, t.min_lr_ratio))
        # Each rank reads its own batch_size streams (or series) out of batch_size * world.
        if self.series:
            if cfg.data.mem_len:
                raise ConfigError("data.mem_len carries history across segments of one stream; series data is "
                                  "independent sequences, so use data.mem_len=0")
            self.batcher = SeriesBatcher(self.corpus.train, self.corpus.cond("train"), cfg.data.batch_size * self.world,
                                         cfg.data.seq_len, seed=cfg.run.seed)
        else:
            self.batcher = StreamBatcher(self.corpus.train, cfg.data.batch_size * self.world, cfg.data.seq_len)
        self.step, self.best_valid, self.nonfinite, self.history = 0, math.inf, 0, None
        self.wandb_id: str | None = None
        self.saved: dict[str, int] = {}  # checkpoint name -> the step it holds, for files this run wrote
        resume_path = Path(resume_dir) if resume_dir is not None else None
        if resume_path is None and cfg.train.resume and (self.run_dir / "last.pt").is_file():
            resume_path = self.run_dir  # train.resume: continue when a checkpoint exists
        resumed = self._read_resumable(resume_path) if resume_path is not None else None  # before writing anything
        self.folder = RunFolder(self.run_dir)
        if self.rank == 0:
            self.folder.open(fresh=resumed is None, force=force)
        try:
            if resumed is not None:
                self._resume(*resumed)
        except BaseException:
            self.folder.close()
            raise
        self.progress: bool | str = progress if self.rank == 0 else False
        self.tracker = Tracker.disabled()

    def _check_eval_batches(self) -> None:
        """Refuse, before step 1, an evaluation batching that cannot cut the valid or test split."""
        d = self.cfg.data
        for split in ("valid", "test"):
            try:
                if self.series:
                    SeriesBatcher(self.corpus.split(split), self.corpus.cond(split), d.eval_batch_size, d.seq_len,
                                  shuffle=False, drop_last=False)
                else:
                    StreamBatcher(self.corpus.split(split), d.eval_batch_size, d.seq_len)
            except DataError as err:
                raise ConfigError(f"data.eval_batch_size={d.eval_batch_size} does not fit the {split} split: {err}"
                                  ) from None

    def _adversarial(self, cfg: Config):
        """The discriminator, its optimizer and losses for train.adversarial (ConfigError when the model cannot be
        a token generator)."""
        from .adversarial import AdversarialTraining

        t = cfg.train
        try:
            return AdversarialTraining(self.model, t.adversarial, t.adv_weight, t.adv_tau, t.adv_lr,
                                       max_len=cfg.data.seq_len, seed=cfg.run.seed, d_model=t.adv_d_model,
                                       d_ff=2 * t.adv_d_model)
        except ValueError as err:
            raise ConfigError(f"train.adversarial={t.adversarial!r}: {err}") from None

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
        path = run_dir / "last.pt" if run_dir.is_dir() or not run_dir.suffix else run_dir
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
            self.history = self.model.last_history
        stats = self.model.last_stats
        if stats is not None and stats.backward is not None:
            metrics.update(stats.backward.summary("bwd_"))
        metrics.update(lr=self.scheduler.get_last_lr()[0], grad_norm=float(grad_norm), pretraining=float(pretraining))
        return metrics

    # -- the loop ----------------------------------------------------------------------------------------
    def _evaluate(self, split: str) -> dict[str, float]:
        d, t = self.cfg.data, self.cfg.train
        max_batches = t.eval_batches if split == "valid" else 0
        if self.series:
            return evaluate_series(self.model, self.corpus.split(split), self.corpus.cond(split), d.eval_batch_size,
                                   d.seq_len, max_batches, self.device)
        ids = self.corpus.valid if split == "valid" else self.corpus.test
        return evaluate(self.model, ids, d.eval_batch_size, d.seq_len, bool(d.mem_len), max_batches, self.device,
                        self.corpus.unit)

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
        if getattr(self.corpus, "entropy_rate", None) is not None:  # synthetic sources: the best achievable NLL
            self.tracker.log({"data_entropy_rate": self.corpus.entropy_rate}, self.step)
        if getattr(self.corpus, "nll_bound", None) is not None:  # noisy series: no model beats the noise
            self.tracker.log({"data_nll_bound": self.corpus.nll_bound}, self.step)
        if isinstance(self.corpus, ImageData):  # what a model of no pixel dependencies reaches
            self.tracker.log(self._image_baselines(), self.step)

    def _image_baselines(self) -> dict[str, float]:
        """Test bits/dim of the train split's independent per-pixel marginals, overall and per class."""
        return {"baseline_marginal_bits_per_dim": self.corpus.marginal_bits_per_dim("test"),
                "baseline_class_marginal_bits_per_dim": self.corpus.marginal_bits_per_dim("test", by_class=True)}

    def _describe(self) -> str:
        """The start line: data, model size, device and where the run goes."""
        c, d = self.cfg, self.cfg.data
        params = sum(p.numel() for p in self.model.parameters())
        if self.series:
            data = f"{len(self.corpus.train)} training {'images' if isinstance(self.corpus, ImageData) else 'series'}"
        else:
            data = f"{len(self.corpus.train):,} training {self.corpus.unit}s"
        solver = c.solver
        mode = f"{solver.grad} gradients, {solver.forward.method} tol {solver.forward.tol:g}"
        start = f"resuming at step {self.step}" if self.step else "starting"
        line = (f"{start}: {c.model.cell} DEQ, {params:,} parameters, {mode}; {data} ({d.source}), batches of "
                f"{d.batch_size * self.world} x {d.seq_len}; device {self.device}; run folder {self.run_dir}")
        if isinstance(self.corpus, ImageData):
            marginal, by_class = self._image_baselines().values()
            line += (f"\nbaselines on test: independent per-pixel marginals {marginal:.3f} bits/dim, per class "
                     f"{by_class:.3f}")
        return line

    def _evaluation_line(self, split: str, values: dict[str, float], batches: int) -> str:
        d = self.cfg.data
        unit = next((k for k in values if k.startswith("bits_per_")), None)
        covers = "the whole split" if not batches else (
            f"its first {batches} batches of {d.eval_batch_size} x {d.seq_len}")
        shown = f"nll {values['nll']:.4f}" + (f"  {unit.replace('_', ' ')} {values[unit]:.4f}" if unit else "")
        return f"step {self.step}: {split} {shown} (over {covers})"

    def run(self) -> TrainResult:
        """Train to max_steps (or until stopped), evaluating and checkpointing on the way.

        SIGINT / SIGTERM stop the loop after the current step (also during a streak of skipped non-finite
        steps) and save last.pt; signals during that save are held until it is written. A Ctrl-C during the final
        evaluation raises KeyboardInterrupt after last.pt is saved.
        """
        t = self.cfg.train
        try:
            return self._run(t)
        finally:
            self.tracker.finish()
            self.folder.close()

    def _run(self, t) -> TrainResult:
        self._open_tracking()
        batches = self.batcher.cycle()
        show = Progress(self.progress if isinstance(self.progress, str) else ("auto" if self.progress else "off"),
                        t.max_steps, self.step, t.log_every) if self.rank == 0 else Progress("off", 0, 0, 1)
        valid, interrupted = None, False
        tokens = self.cfg.data.batch_size * self.cfg.data.seq_len * self.world
        show.event(self._describe())
        if t.pretrain_steps >= t.max_steps:
            show.event(f"warning: train.pretrain_steps={t.pretrain_steps} >= train.max_steps={t.max_steps}: the whole "
                       f"run trains the explicit {t.pretrain_grad} network and never uses the DEQ's solver")
        elif self.step < t.pretrain_steps:
            show.event(f"steps 1-{t.pretrain_steps}: pretraining the explicit weight-tied network "
                       f"({t.pretrain_grad}), then the DEQ ({self.cfg.solver.grad})")
        try:
            with stop_requests() as requests:
                while self.step < t.max_steps and not requests["stop"]:
                    start = time.perf_counter()
                    metrics = self.train_step(next(batches))
                    if metrics is None:
                        self.tracker.log({"nonfinite_skips": float(self.nonfinite)}, self.step)
                        if self.nonfinite >= t.max_nonfinite:
                            streak, self.nonfinite = self.nonfinite, 0  # a resumed run counts a streak afresh
                            self.save("last.pt")  # skipped steps changed nothing: these weights are the last good
                            raise TrainingStopped(
                                f"stopped at step {self.step}: {streak} consecutive non-finite losses or "
                                f"gradients; {self._last_good()}")
                        continue
                    self.step += 1
                    metrics["tokens_per_s"] = tokens / (time.perf_counter() - start)
                    if self.step % t.log_every == 0 or self.step == t.max_steps:
                        self.tracker.log(metrics, self.step)
                    phase = "pretrain" if metrics.get("pretraining") else "deq"
                    show.step(self.step, phase, metrics)
                    if self.step == t.pretrain_steps and t.pretrain_steps < t.max_steps:
                        show.event(f"step {self.step}: pretraining done; training the DEQ ({self.cfg.solver.grad})")
                    if t.eval_every and self.step % t.eval_every == 0:
                        valid = self._evaluate("valid")
                        self.tracker.log({f"valid_{k}": v for k, v in valid.items()}, self.step)
                        show.event(self._evaluation_line("valid", valid, t.eval_batches))
                        if valid["nll"] < self.best_valid:
                            self.best_valid = valid["nll"]
                            self.save("best.pt")
                    if t.sample_every and self.step % t.sample_every == 0 and self.rank == 0 and not self.series:
                        self.tracker.log_text("sample", self.sample(), self.step)
                    if t.save_every and self.step % t.save_every == 0:
                        self.save("last.pt")
                interrupted = self.step < t.max_steps
                self.save("last.pt")  # still inside stop_requests: a second Ctrl-C cannot cut this save short
            show.close()
            test = None
            if not interrupted:
                try:
                    valid = self._evaluate("valid")
                    test = self._evaluate("test")
                except KeyboardInterrupt:
                    raise KeyboardInterrupt(f"interrupted during the final evaluation; {self._last_good()}") from None
                self.tracker.log({**{f"valid_{k}": v for k, v in valid.items()},
                                  **{f"test_{k}": v for k, v in test.items()}}, self.step)
                if valid["nll"] < self.best_valid:
                    self.best_valid = valid["nll"]
                    self.save("best.pt")
            return TrainResult(self.run_dir, self.step, self.best_valid, valid, test, interrupted)
        finally:
            show.close()


def train(cfg: Config, resume_dir: str | Path | None = None, progress: bool | str = True,
          force: bool = False) -> TrainResult:
    """Build a Trainer from `cfg` (resuming from `resume_dir` or, with train.resume, from runs/<name>) and run it.
    progress: True / "auto" (a bar on a terminal, plain lines otherwise), "bar", "lines", or False / "off"."""
    return Trainer(cfg, resume_dir=resume_dir, progress=progress, force=force).run()
