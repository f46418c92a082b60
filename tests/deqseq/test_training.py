"""Training: the CLI end to end, exact resume across a real SIGINT, building a run's pieces without training,
non-finite losses, one-line user errors, data parallelism under torchrun, and every shipped config on a tiny
fixture."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from deqseq.cli import train_main
from deqseq.config import ConfigError, config_from_dict, load_config
from deqseq.data import load_corpus, tokenizer_from_state
from deqseq.model import DEQSequenceModel
from deqseq.tracking import Tracker
from deqseq.training import Trainer, TrainingStopped, build_run, evaluate, lr_factor, train

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MARKOV = "markov:order=1,vocab=8,seed=0,length=3000"  # splits of 2700 / 150 / 150 tokens
CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "step", "data", "rng", "config", "tokenizer"}


def tiny(out_dir: Path, name: str, *extra: str) -> list[str]:
    """Overrides of a tiny CPU run on the Markov source, without tracking, saved in out_dir/name."""
    return ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "data.batch_size=2", "data.seq_len=8",
            "data.eval_batch_size=2", "train.eval_batches=1", "run.device=cpu", "tracking.mode=disabled",
            f"data.source={MARKOV}", f"run.out_dir={out_dir}", f"run.name={name}", *extra]


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of run_dir/metrics.jsonl."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_rows(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The training-step rows by step; a step logged twice is an error."""
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"duplicated steps in {steps}"
    return {r["step"]: r for r in rows if "loss" in r}


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, loaded the safe way."""
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------------- end to end


def test_cli_trains_end_to_end_with_offline_tracking(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "e2e"
    argv = ["--no-progress", *tiny(tmp_path, "e2e"), "tracking.mode=offline", "train.max_steps=4",
            "train.warmup_steps=2", "train.pretrain_steps=2", "train.eval_every=2", "train.log_every=1",
            "train.save_every=2", "train.sample_every=2", "train.sample_tokens=5"]
    assert train_main(argv) == 0
    out = capsys.readouterr().out
    assert "valid: nll" in out and "test: nll" in out and f"run saved in {run_dir}" in out
    assert {"config.yaml", "last.pt", "best.pt", "metrics.jsonl"} <= {p.name for p in run_dir.iterdir()}

    rows = read_metrics(run_dir)
    corpus = load_corpus(MARKOV)
    assert rows[0] == {"step": 0, "data_entropy_rate": corpus.entropy_rate} and 0 < corpus.entropy_rate < math.log(8)
    steps = train_rows(rows)
    assert sorted(steps) == [1, 2, 3, 4]
    for step, row in steps.items():
        assert {"loss", "nll", "lr", "grad_norm", "tokens_per_s", "fwd_nfe", "fwd_rel_max",
                "fwd_not_converged"} <= row.keys()
        assert math.isfinite(row["loss"]) and row["loss"] == row["nll"] > 0  # no Jacobian penalty here
        assert row["grad_norm"] > 0 and row["tokens_per_s"] > 0 and row["fwd_nfe"] >= 1
        assert 0 <= row["fwd_not_converged"] <= 2 and row["fwd_rel_max"] >= 0
        # warmup over 2 steps, then cosine decay to 0.1 * lr at step 4 (scheduler value after the step)
        assert row["lr"] == pytest.approx(1e-3 * lr_factor(step, 2, 4, 0.1), rel=1e-12)
        # the first 2 steps are unrolled (no adjoint solve); afterwards the implicit backward reports its stats
        assert row["pretraining"] == float(step <= 2)
        assert ("bwd_nfe" in row) == (step > 2)
        if step > 2:
            assert row["bwd_nfe"] >= 1 and "bwd_rel_max" in row
    assert [steps[s]["lr"] for s in (1, 2, 3, 4)] == pytest.approx([1e-3, 1e-3, 5.5e-4, 1e-4], rel=1e-12)

    evals = [r for r in rows if "valid_nll" in r]
    assert [r["step"] for r in evals] == [2, 4, 4]  # every eval_every steps, then the final evaluation
    for r in evals:
        assert r["valid_ppl"] == pytest.approx(math.exp(r["valid_nll"]), rel=1e-12) and r["valid_tokens"] == 16
        assert r["valid_bits_per_token"] == pytest.approx(r["valid_nll"] / math.log(2), rel=1e-12)
    final = rows[-1]
    assert final["step"] == 4 and final["test_tokens"] == 2 * (150 // 2 - 1)  # the whole test split, 2 streams
    samples = [r for r in rows if "sample" in r]  # generated text every sample_every steps: 16 prompt + 5 new ids
    assert [r["step"] for r in samples] == [2, 4]
    assert all(len(r["sample"].split()) == 21 and set(r["sample"].split()) <= set("01234567") for r in samples)
    assert math.isfinite(final["test_nll"]) and final["test_ppl"] == pytest.approx(math.exp(final["test_nll"]))
    assert final["valid_nll"] == evals[1]["valid_nll"]  # the same weights evaluated twice

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))

    state = load(run_dir / "last.pt")
    assert CHECKPOINT_KEYS <= state.keys()
    assert state["step"] == 4 and state["scheduler"]["last_epoch"] == 4
    assert state["data"]["position"] == 4 and state["data"]["batch_size"] == 2 and state["data"]["seq_len"] == 8
    assert all(int(s["step"]) == 4 for s in state["optimizer"]["state"].values())
    assert set(state["rng"]) >= {"torch", "python"} and state["tokenizer"]["vocab_size"] == 8
    assert state["wandb_id"] and runs[0].name.endswith(state["wandb_id"])
    cfg = config_from_dict(state["config"])
    assert cfg == load_config(run_dir / "config.yaml") and cfg.model.vocab_size == 8 and cfg.train.max_steps == 4
    assert state["best_valid"] == min(r["valid_nll"] for r in evals)
    best = load(run_dir / "best.pt")
    assert best["best_valid"] == state["best_valid"] and best["step"] in (2, 4)

    # The saved weights alone reproduce the logged test NLL.
    model = DEQSequenceModel(cfg.model, cfg.solver)
    model.load_state_dict(state["model"])
    again = evaluate(model, corpus.test, 2, 8, False, 0, torch.device("cpu"), corpus.unit)
    assert again["tokens"] == final["test_tokens"] and abs(again["nll"] - final["test_nll"]) < 1e-6


# ------------------------------------------------------------------------------------------------------- resuming


def test_resume_after_sigint_reproduces_the_uninterrupted_run_exactly(tmp_path, monkeypatch, capsys):
    # float64 on the CPU is deterministic; the Jacobian penalty drawn with probability 0.5 makes every step's
    # loss depend on the RNG state, and pretraining for 2 steps puts the gradient-mode switch before the cut.
    args = ["model.cell=trellis", "run.dtype=float64", "train.log_every=1", "train.pretrain_steps=2",
            "solver.jac_weight=0.5", "solver.jac_prob=0.5", "train.max_steps=8", "train.eval_every=3",
            "train.save_every=0"]
    result_a = train(load_config(None, tiny(tmp_path, "a", *args)), progress=False)
    assert result_a.step == 8 and not result_a.interrupted

    original_log, sent = Tracker.log, []

    def log_then_interrupt(self: Tracker, metrics: dict[str, float], step: int) -> None:
        original_log(self, metrics, step)
        if step == 4 and "loss" in metrics and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, caught by the trainer's handler

    handler_before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(Tracker, "log", log_then_interrupt)
    run_b = tmp_path / "b"
    assert train_main(["--no-progress", *tiny(tmp_path, "b", *args)]) == 130
    assert signal.getsignal(signal.SIGINT) is handler_before  # the trainer put the old handler back
    assert f"interrupted at step 4; resume with: python train.py --resume {run_b}" in capsys.readouterr().out
    cut = load(run_b / "last.pt")
    assert cut["step"] == 4 and cut["data"]["position"] == 4 and sent == [4]

    # Resume exactly as the hint says: the run's own saved config is used.
    assert train_main(["--no-progress", "--resume", str(run_b)]) == 0
    rows_a, rows_b = train_rows(read_metrics(tmp_path / "a")), train_rows(read_metrics(run_b))
    assert sorted(rows_a) == sorted(rows_b) == list(range(1, 9))
    for step in range(1, 9):
        assert rows_b[step]["loss"] == rows_a[step]["loss"], f"step {step}"
        assert rows_b[step]["grad_norm"] == rows_a[step]["grad_norm"] and rows_b[step]["lr"] == rows_a[step]["lr"]
        assert ("jac" in rows_b[step]) == ("jac" in rows_a[step]) and ("bwd_nfe" in rows_a[step]) == (step > 2)
    assert {"jac" in rows_a[s] for s in range(5, 9)} == {True, False}  # the draws after the cut really vary

    end_a, end_b = load(tmp_path / "a" / "last.pt"), load(run_b / "last.pt")
    assert end_a["step"] == end_b["step"] == 8 and end_a["data"] == end_b["data"]
    assert end_a["model"].keys() == end_b["model"].keys()
    assert all(torch.equal(end_a["model"][k], end_b["model"][k]) for k in end_a["model"])
    for pa, pb in zip(end_a["optimizer"]["state"].values(), end_b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert end_a["best_valid"] == end_b["best_valid"] and torch.equal(end_a["rng"]["torch"], end_b["rng"]["torch"])
    test_a, test_b = read_metrics(tmp_path / "a")[-1], read_metrics(run_b)[-1]
    assert test_b["test_nll"] == test_a["test_nll"] == result_a.test["nll"]


def test_train_resume_flag_starts_fresh_then_continues(tmp_path):
    args = ["train.resume=true", "train.log_every=1"]
    first = train(load_config(None, tiny(tmp_path, "r", *args, "train.max_steps=2")), progress=False)
    assert first.step == 2  # no checkpoint yet: a fresh run, not an error
    second = train(load_config(None, tiny(tmp_path, "r", *args, "train.max_steps=3")), progress=False)
    assert second.step == 3
    assert sorted(train_rows(read_metrics(tmp_path / "r"))) == [1, 2, 3]  # step 3 only was trained the 2nd time


# ------------------------------------------------------------------------------------------------- building a run


def test_build_run_builds_a_trainers_pieces_without_training_or_writing(tmp_path):
    cfg = load_config(None, tiny(tmp_path, "built", "data.mem_len=8", "train.max_steps=5"))
    run = build_run(cfg)
    assert not (tmp_path / "built").exists()  # nothing written
    assert cfg.model.window is None and cfg.model.vocab_size != 8  # the given config is left as it was
    m = run.cfg.model  # resolved: the data's vocabulary, the trained length and the carried history's window
    assert (m.vocab_size, m.trained_len, m.window) == (8, 8, 8) and run.cfg.data == cfg.data
    assert run.model.config == m and run.model.deq.cell.window == 8 and run.model.default_window == 8
    assert (run.device, run.dtype, run.autocast, run.adversarial) == (torch.device("cpu"), torch.float32, False, None)
    assert run.corpus.reads == "ids" and run.corpus.sizes()["train"] == 2700
    assert run.optimizer.state == {} and run.scheduler.last_epoch == 0 and run.batcher.state_dict()["position"] == 0
    assert run.scheduler.get_last_lr()[0] == pytest.approx(cfg.train.lr / cfg.train.warmup_steps)

    trainer = Trainer(cfg, progress=False)
    trainer.folder.close()  # the trainer is compared, never run
    assert trainer.cfg == run.cfg and trainer.batcher.state_dict() == run.batcher.state_dict()
    built, trained = run.model.state_dict(), trainer.model.state_dict()
    assert built.keys() == trained.keys() and all(torch.equal(built[k], trained[k]) for k in built)
    first = next(run.batcher.cycle())
    assert all(torch.equal(first[k], v) for k, v in next(trainer.batcher.cycle()).items())

    wide = build_run(cfg, world=2)  # every rank's rows, as a data-parallel Trainer cuts them
    assert wide.batcher.batch_size == 4 and torch.equal(wide.model.head.proj.weight, run.model.head.proj.weight)


def test_build_run_resolves_series_and_refuses_what_does_not_fit(tmp_path):
    fourier = "data.source=fourier:series=40,length=9,terms=1,periods=4/6,noise=0.05,seed=0,cond=class"
    run = build_run(load_config(None, tiny(tmp_path, "s", fourier, "model.input=linear", "model.head=mog")))
    assert (run.cfg.model.in_dim, run.cfg.model.cond_dim, run.cfg.model.trained_len) == (1, 2, 8)
    assert run.corpus.stream is False and len(run.batcher) == 36 // 2
    with pytest.raises(ConfigError, match="model.cond_dim=3 does not match the data's conditioning width 0"):
        build_run(load_config(None, tiny(tmp_path, "t", "model.cond_dim=3")))  # text has no conditioning
    with pytest.raises(ConfigError, match="use data.mem_len=0"):
        build_run(load_config(None, tiny(tmp_path, "u", fourier, "model.input=linear", "model.head=mog",
                                         "data.mem_len=4")))
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ non-finite loss


def nan_loss_on(calls: list[int], bad: Callable[[int], bool]) -> Callable:
    """A DEQSequenceModel.loss that counts its calls in `calls` and returns a NaN loss on the calls `bad` picks."""
    original = DEQSequenceModel.loss

    def loss(self: DEQSequenceModel, batch: dict, with_output: bool = False) -> tuple:
        calls.append(len(calls) + 1)
        value, metrics, out = original(self, batch, with_output=True)
        value = value * math.nan if bad(len(calls)) else value
        return (value, metrics, out) if with_output else (value, metrics)

    return loss


def test_nonfinite_losses_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    calls: list[int] = []
    monkeypatch.setattr(DEQSequenceModel, "loss", nan_loss_on(calls, lambda n: n > 3))
    args = ["train.max_nonfinite=3", "train.save_every=1", "train.max_steps=10", "train.log_every=1",
            "train.eval_every=0"]
    run_dir = tmp_path / "nan"
    assert train_main(["--no-progress", *tiny(tmp_path, "nan", *args)]) == 1
    err = capsys.readouterr().err
    assert err == (f"train.py: stopped at step 3: 3 consecutive non-finite losses or gradients; the last good "
                   f"checkpoint is {run_dir / 'last.pt'} (step 3)\n")
    assert len(calls) == 6  # 3 good steps, then 3 skipped ones
    state = load(run_dir / "last.pt")
    assert state["step"] == 3 and state["scheduler"]["last_epoch"] == 3 and state["nonfinite"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    rows = read_metrics(run_dir)
    assert sorted(train_rows(rows)) == [1, 2, 3]
    assert [(r["step"], r["nonfinite_skips"]) for r in rows if "nonfinite_skips" in r] == [(3, 1.0), (3, 2.0), (3, 3.0)]

    calls.clear()
    with pytest.raises(TrainingStopped, match="3 consecutive non-finite losses"):
        train(load_config(None, tiny(tmp_path, "nan2", *args)), progress=False)


def test_a_single_nonfinite_loss_is_skipped(tmp_path, monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(DEQSequenceModel, "loss", nan_loss_on(calls, lambda n: n == 2))
    result = train(load_config(None, tiny(tmp_path, "skip", "train.max_steps=3", "train.log_every=1",
                                          "train.eval_every=0")), progress=False)
    assert result.step == 3 and len(calls) == 4 and math.isfinite(result.test["nll"])
    rows = read_metrics(tmp_path / "skip")
    assert [(r["step"], r["nonfinite_skips"]) for r in rows if "nonfinite_skips" in r] == [(1, 1.0)]
    steps = train_rows(rows)
    assert sorted(steps) == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in steps.values())
    state = load(tmp_path / "skip" / "last.pt")
    assert state["scheduler"]["last_epoch"] == 3 and state["data"]["position"] == 4  # the bad batch is consumed


# ---------------------------------------------------------------------------------------------------- user errors


USER_ERRORS = [
    ("unknown-key", ["train.max_step=3"], "unknown key 'train.max_step'; did you mean 'train.max_steps'?"),
    ("bad-value", ["model.cell=lstm"], "model.cell='lstm' is unknown; allowed: transformer, trellis"),
    ("bad-number", ["train.lr=-1"], "train.lr=-1.0 must be a number > 0"),
    ("missing-config", ["--config", "{tmp}/missing.yaml"], "config file not found: {tmp}/missing.yaml"),
    ("unknown-scheme", ["data.source=ftp:x"], "unknown data spec 'ftp:x'; allowed specs: stdlib"),
    ("missing-text", ["data.source=text:{tmp}/missing.txt"], "no such file or folder: {tmp}/missing.txt"),
    ("corrupt-checkpoint", ["--resume", "{tmp}/old"], "cannot read checkpoint {tmp}/old/last.pt"),
]


@pytest.mark.parametrize(("argv", "expected"), [case[1:] for case in USER_ERRORS], ids=[c[0] for c in USER_ERRORS])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, expected):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "last.pt").write_bytes(b"not a checkpoint\x00\xff" * 8)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert train_main(["--no-progress", "tracking.mode=disabled", f"run.out_dir={tmp_path}/runs", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("train.py: error: ") and expected.replace("{tmp}", str(tmp_path)) in captured.err
    assert not (tmp_path / "runs").exists()  # nothing was written


def test_resuming_into_another_model_is_a_user_error(tmp_path, capsys):
    assert train_main(["--no-progress", *tiny(tmp_path, "m", "train.max_steps=1")]) == 0
    capsys.readouterr()
    assert train_main(["--no-progress", "--resume", str(tmp_path / "m"), "model.d_model=32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume with a changed model.d_model (saved 16, now 32)" in err


def test_unknown_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        train_main(["--bogus"])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("train.py: error: unrecognized arguments")


# ---------------------------------------------------------------------------------------------------- torchrun


def test_torchrun_two_ranks_match_one_process_with_the_whole_batch(tmp_path):
    overrides = tiny(tmp_path, "ddp", "run.dtype=float64", "train.max_steps=4", "train.pretrain_steps=2",
                     "train.eval_every=2", "train.log_every=1")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(tmp_path), *overrides]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"], r["step"], r["max_diff"]) for r in reports] == [(0, 2, 4, 0.0), (1, 2, 4, 0.0)]
    assert reports[0]["losses"] != reports[1]["losses"]  # each rank trains on its own streams
    assert reports[0]["valid_nll"] == reports[1]["valid_nll"]

    # Only rank 0 wrote the run: one set of checkpoints and each step logged once.
    run_dir = tmp_path / "ddp"
    assert [p.relative_to(tmp_path) for p in sorted(tmp_path.rglob("*.pt"))] == [
        Path("ddp/best.pt"), Path("ddp/last.pt"), Path("params.pt")]
    rows = read_metrics(run_dir)
    assert sorted(train_rows(rows)) == [1, 2, 3, 4] and sum("data_entropy_rate" in r for r in rows) == 1
    assert [train_rows(rows)[s]["loss"] for s in (1, 2, 3, 4)] == reports[0]["losses"]  # rank 0's own shard
    assert load(run_dir / "last.pt")["data"]["batch_size"] == 4  # 2 streams per rank

    # Averaged gradients make it one run over both ranks' streams: the same as one process with batch 4.
    single_cfg = load_config(None, [*overrides, "run.name=single", "data.batch_size=4"])
    single = train(single_cfg, progress=False)
    single_rows = train_rows(read_metrics(tmp_path / "single"))
    for step in (1, 2, 3, 4):
        mean = (reports[0]["losses"][step - 1] + reports[1]["losses"][step - 1]) / 2
        assert abs(single_rows[step]["loss"] - mean) < 1e-12
    gathered = torch.load(tmp_path / "params.pt", weights_only=True)
    assert torch.equal(gathered, flat_parameters(run_dir / "last.pt"))  # rank 0 saved the all-gathered weights
    assert (flat_parameters(tmp_path / "single" / "last.pt") - gathered).abs().max() < 1e-10
    assert single.valid["nll"] == pytest.approx(reports[0]["valid_nll"], abs=1e-10)


def flat_parameters(path: Path) -> torch.Tensor:
    """The parameters of the model saved in a checkpoint, flattened in model.parameters() order."""
    state = load(path)
    cfg = config_from_dict(state["config"])
    model = DEQSequenceModel(cfg.model, cfg.solver).to(getattr(torch, cfg.run.dtype))
    model.load_state_dict(state["model"])
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------------------------------------ shipped configs


def word_text(n_words: int, seed: int) -> str:
    """Lines of words from a 30-word vocabulary."""
    rng = random.Random(seed)
    lines, left = [], n_words
    while left > 0:
        k = rng.randint(3, 12)
        lines.append(" ".join(f"w{rng.randrange(30)}" for _ in range(k)))
        left -= k
    return "\n".join(lines) + "\n"


SPLIT_FILES = {"wikitext103": ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
               "ptb": ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")}

def tiny_source(spec: str, folder: Path) -> str:
    """A small stand-in for a config's data source, in the same format."""
    scheme = spec.partition(":")[0]
    if scheme == "stdlib":
        return "stdlib:max_bytes=20000"
    if scheme == "markov":
        return re.sub(r"length=\d+", "length=3000", spec)
    if scheme == "digits":
        return spec  # 1797 bundled images: small enough as it is
    if scheme == "fourier":
        return re.sub(r"length=\d+", "length=9", re.sub(r"series=\d+", "series=40", spec))
    assert scheme in SPLIT_FILES, f"no fixture for {spec}"
    folder.mkdir()
    for name, n_words, seed in zip(SPLIT_FILES[scheme], (2000, 300, 300), (0, 1, 2), strict=True):
        (folder / name).write_text(word_text(n_words, seed), encoding="utf-8")
    return f"{scheme}:{folder}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_config_trains_two_steps_on_a_tiny_fixture(tmp_path, path):
    cfg = load_config(path)
    overrides = ["model.d_model=16", "model.d_ff=32", "data.batch_size=2", "data.seq_len=8", "data.eval_batch_size=2",
                 "train.eval_batches=1", "train.pretrain_steps=1", "train.max_steps=2", "tracking.mode=disabled",
                 f"run.out_dir={tmp_path}", f"data.source={tiny_source(cfg.data.source, tmp_path / 'data')}"]
    if cfg.model.cell == "transformer":
        overrides.append("model.n_heads=2")
    if cfg.model.d_embed is not None:
        overrides.append("model.d_embed=null")
    result = train(load_config(path, overrides), progress=False)
    assert result.step == 2 and not result.interrupted
    checkpoint = load(result.run_dir / "last.pt")
    saved_tokenizer = checkpoint["tokenizer"]
    if saved_tokenizer is None and cfg.model.input in ("linear", "mlp"):  # a density: the NLL has no chance level
        assert all(math.isfinite(split["nll"]) and split["steps"] > 0 for split in (result.valid, result.test))
    else:  # token ids: from a tokenizer, or pixel levels (digits)
        vocab = (tokenizer_from_state(saved_tokenizer).vocab_size if saved_tokenizer is not None
                 else checkpoint["config"]["model"]["vocab_size"])
        for split in (result.valid, result.test):
            assert math.isfinite(split["nll"]) and 0 < split["nll"] < math.log(vocab) + 1  # about chance
    rows = train_rows(read_metrics(result.run_dir))
    assert rows[2]["pretraining"] == 0.0 and "bwd_nfe" in rows[2]  # the implicit gradient ran after pretraining
