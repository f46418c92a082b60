"""Nothing silently wrong, nothing lost: diverging runs, run folders and resume, user errors that used to be
tracebacks, checkpoint integrity, Ctrl-C at every phase, and one attention-window default for API and CLI."""

from __future__ import annotations

import errno
import io
import math
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import deqseq.checkpoint
import deqseq.model
import deqseq.training
from deqseq import load_checkpoint, score
from deqseq.checkpoint import save_checkpoint
from deqseq.cli import generate_main, train_main
from deqseq.config import load_config
from deqseq.generation import generate
from deqseq.rundir import RunFolder
from deqseq.training import Trainer

MARKOV = "markov:order=1,vocab=8,seed=0,length=3000"


def tiny(out_dir: Path, name: str, *extra: str) -> list[str]:
    """Overrides of a tiny CPU run on the Markov source, without tracking, saved in out_dir/name."""
    return ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "data.batch_size=2", "data.seq_len=8",
            "data.eval_batch_size=2", "train.eval_batches=1", "run.device=cpu", "tracking.mode=disabled",
            "train.eval_every=0", f"data.source={MARKOV}", f"run.out_dir={out_dir}", f"run.name={name}", *extra]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def one_line_error(capsys, prog: str = "train.py") -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.err.startswith(f"{prog}: ")
    return captured.err


# ---------------------------------------------------------------------------------------------- diverging runs


def test_a_nonfinite_gradient_with_a_finite_loss_is_never_applied(tmp_path, monkeypatch):
    # At train.lr=300 a step had a finite loss but a non-finite gradient norm, and the update was applied.
    seen: list[int] = []
    real_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        real_backward(self, *args, **kwargs)
        seen.append(1)
        if len(seen) == 2:  # the second step's gradients overflow
            weight = trainer.model.head.proj.weight
            weight.grad = torch.full_like(weight, math.inf)

    trainer = Trainer(load_config(None, tiny(tmp_path, "g", "train.max_steps=3", "train.log_every=1")),
                      progress=False)
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    batches = trainer.batcher.cycle()
    assert trainer.train_step(next(batches)) is not None
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    adam_steps = trainer.optimizer.state[trainer.model.head.proj.weight]["step"].item()
    assert trainer.train_step(next(batches)) is None and trainer.nonfinite == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.optimizer.state[trainer.model.head.proj.weight]["step"].item() == adam_steps
    assert trainer.train_step(next(batches)) is not None and trainer.nonfinite == 0
    trainer.folder.close()


def test_nonfinite_weights_are_never_saved_and_the_message_names_a_real_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "w"
    calls: list[int] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 4:  # the 4th update overflows the weights
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.inf)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    assert train_main(["--no-progress", *tiny(tmp_path, "w", "train.max_steps=10", "train.save_every=2")]) == 1
    err = one_line_error(capsys)
    assert f"the last good checkpoint is {run_dir / 'last.pt'} (step 2)" in err
    state = load(run_dir / "last.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())

    calls.clear()  # with save_every beyond the failure no checkpoint exists, and the message must say so
    assert train_main(["--no-progress", *tiny(tmp_path, "w5", "train.max_steps=10", "train.save_every=5")]) == 1
    assert "no checkpoint of this run was saved yet" in one_line_error(capsys)
    assert not (tmp_path / "w5" / "last.pt").exists()


def test_a_nonfinite_streak_before_the_first_save_still_leaves_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                          capsys):
    real = deqseq.model.DEQSequenceModel.loss
    calls: list[int] = []

    def loss(self, batch, with_output=False):
        calls.append(1)
        value, metrics, out = real(self, batch, with_output=True)
        value = value * math.nan if len(calls) > 3 else value
        return (value, metrics, out) if with_output else (value, metrics)

    monkeypatch.setattr(deqseq.model.DEQSequenceModel, "loss", loss)
    run_dir = tmp_path / "s"
    args = tiny(tmp_path, "s", "train.max_steps=10", "train.save_every=5", "train.max_nonfinite=2")
    assert train_main(["--no-progress", *args]) == 1
    assert f"the last good checkpoint is {run_dir / 'last.pt'} (step 3)" in one_line_error(capsys)
    assert load(run_dir / "last.pt")["step"] == 3


def test_signals_stop_a_run_during_a_nonfinite_streak(tmp_path, monkeypatch, capsys):
    real = deqseq.model.DEQSequenceModel.loss
    calls: list[int] = []

    def loss(self, batch, with_output=False):
        calls.append(1)
        value, metrics, out = real(self, batch, with_output=True)
        if len(calls) > 2:
            value = value * math.nan
            if len(calls) == 4:
                os.kill(os.getpid(), signal.SIGTERM)
        return (value, metrics, out) if with_output else (value, metrics)

    monkeypatch.setattr(deqseq.model.DEQSequenceModel, "loss", loss)
    args = tiny(tmp_path, "sig", "train.max_steps=10", "train.max_nonfinite=1000")
    assert train_main(["--no-progress", *args]) == 130
    assert len(calls) == 4  # stopped right after the signal, not after 1000 skipped steps
    assert load(tmp_path / "sig" / "last.pt")["step"] == 2


# ------------------------------------------------------------------------------------------ run folders, resume


def test_resume_writes_into_the_folder_it_read(tmp_path, capsys):
    assert train_main(["--no-progress", *tiny(tmp_path, "orig", "train.max_steps=2")]) == 0
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "orig", copy)
    before = (tmp_path / "orig" / "last.pt").read_bytes()
    assert train_main(["--no-progress", "--resume", str(copy), "train.max_steps=4"]) == 0
    assert (tmp_path / "orig" / "last.pt").read_bytes() == before  # the original is untouched
    state = load(copy / "last.pt")
    assert state["step"] == 4 and state["config"]["run"]["out_dir"] == str(copy.parent)
    assert state["config"]["run"]["name"] == "copy"
    assert f"run saved in {copy}" in capsys.readouterr().out


def test_a_fresh_run_into_an_existing_run_folder_is_refused_unless_forced(tmp_path, capsys):
    args = tiny(tmp_path, "r", "train.max_steps=2")
    assert train_main(["--no-progress", *args]) == 0
    capsys.readouterr()
    before = (tmp_path / "r" / "last.pt").read_bytes()
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert train_main(["--no-progress", *args]) == 2
    err = one_line_error(capsys)
    assert "already holds a run" in err and "--resume" in err and "--force" in err
    assert (tmp_path / "r" / "last.pt").read_bytes() == before
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics
    assert train_main(["--no-progress", "--force", *args, "train.max_steps=1"]) == 0
    assert load(tmp_path / "r" / "last.pt")["step"] == 1
    rows = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert all('"step": 2' not in row for row in rows)  # the old run's metrics are gone, not appended to


def test_a_second_live_writer_is_refused(tmp_path, capsys):
    holder = RunFolder(tmp_path / "busy")
    holder.open(fresh=True)
    try:
        assert train_main(["--no-progress", *tiny(tmp_path, "busy", "train.max_steps=1")]) == 2
        assert "in use by another training process" in one_line_error(capsys)
    finally:
        holder.close()
    assert train_main(["--no-progress", *tiny(tmp_path, "busy", "train.max_steps=1")]) == 0


def test_orphaned_temporary_checkpoints_are_removed_at_the_next_start(tmp_path):
    assert train_main(["--no-progress", *tiny(tmp_path, "o", "train.max_steps=1")]) == 0
    orphan = tmp_path / "o" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    assert train_main(["--no-progress", "--resume", str(tmp_path / "o"), "train.max_steps=2"]) == 0
    assert not orphan.exists()


@pytest.mark.parametrize("override", ["model.n_heads=4", "model.window=3", "data.mem_len=4", "data.seq_len=4",
                                      "train.lr=0.5"])
def test_resume_refuses_keys_that_shape_the_saved_state(tmp_path, capsys, override):
    assert train_main(["--no-progress", *tiny(tmp_path, "k", "train.max_steps=1")]) == 0
    capsys.readouterr()
    assert train_main(["--no-progress", "--resume", str(tmp_path / "k"), override]) == 2
    assert f"cannot resume with a changed {override.split('=')[0]}" in one_line_error(capsys)


def test_resume_accepts_keys_that_only_say_how_long_or_how_to_solve(tmp_path):
    assert train_main(["--no-progress", *tiny(tmp_path, "ok", "train.max_steps=1")]) == 0
    assert train_main(["--no-progress", "--resume", str(tmp_path / "ok"), "train.max_steps=2",
                       "solver.forward.tol=1e-5", "train.log_every=1", "data.eval_batch_size=1"]) == 0
    assert load(tmp_path / "ok" / "last.pt")["step"] == 2


# ------------------------------------------------------------------------------------- errors that were tracebacks


def test_user_errors_before_step_one(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [([f"run.out_dir={a_file}"], "a parent of it is a file"),
             (["data.eval_batch_size=200"], "data.eval_batch_size=200 does not fit the valid split")]
    if not torch.cuda.is_available():
        cases.append((["run.device=cuda"], "run.device=cuda: no CUDA device is available"))
    for extra, expected in cases:
        assert train_main(["--no-progress", *tiny(tmp_path, "e", "train.max_steps=1"), *extra]) == 2
        assert expected in one_line_error(capsys), extra
        assert not (tmp_path / "e" / "last.pt").exists()


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    saves: list[int] = []
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(deqseq.checkpoint.torch, "save", full_disk)
    assert train_main(["--no-progress", *tiny(tmp_path, "d", "train.max_steps=4", "train.save_every=1")]) == 2
    err = one_line_error(capsys)
    assert "no space left on device" in err and "previous last.pt is kept" in err
    assert load(tmp_path / "d" / "last.pt")["step"] == 1
    assert not list((tmp_path / "d").glob(".*.tmp"))


def test_ctrl_c_at_startup_and_in_the_final_evaluation_exit_130_with_one_line(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(deqseq.training, "load_corpus", interrupt)
        assert train_main(["--no-progress", *tiny(tmp_path, "c0", "train.max_steps=2")]) == 130
        assert "interrupted before training started" in one_line_error(capsys)

    real = deqseq.training.Trainer._evaluate

    def evaluate(self, split):
        if self.step == 2:
            raise KeyboardInterrupt
        return real(self, split)

    monkeypatch.setattr(deqseq.training.Trainer, "_evaluate", evaluate)
    assert train_main(["--no-progress", *tiny(tmp_path, "c1", "train.max_steps=2")]) == 130
    err = one_line_error(capsys)
    assert "interrupted during the final evaluation" in err and "(step 2)" in err
    assert load(tmp_path / "c1" / "last.pt")["step"] == 2


def test_a_second_ctrl_c_during_the_final_save_loses_nothing(tmp_path, monkeypatch, capsys):
    real = deqseq.training.save_checkpoint
    sent: list[int] = []

    def save(path, state):
        if state["step"] == 3 and not sent:  # the final save: Ctrl-C twice while it writes
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        real(path, state)

    monkeypatch.setattr(deqseq.training, "save_checkpoint", save)
    code = train_main(["--no-progress", *tiny(tmp_path, "f", "train.max_steps=3")])
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.err and sent == [1]
    assert load(tmp_path / "f" / "last.pt")["step"] == 3


# ------------------------------------------------------------------------------------------ checkpoint integrity


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    with io.StringIO() as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            assert train_main(["--no-progress", *tiny(root, "c", "train.max_steps=2")]) == 0
        finally:
            sys.stdout = stdout
    return root / "c" / "last.pt"


def generate_error(capsys, path: Path) -> str:
    assert generate_main(["--checkpoint", str(path), "--prompt", "1 2", "--max-new-tokens", "2"]) == 2
    return one_line_error(capsys, "generate.py")


def test_a_flipped_byte_in_the_weights_is_detected(checkpoint, tmp_path, capsys):
    state = load(checkpoint)
    weight = state["model"]["head.proj.weight"]
    data = bytearray(checkpoint.read_bytes())
    needle = weight.contiguous().view(torch.uint8).numpy().tobytes()[:32]
    at = data.find(needle)
    assert at > 0
    data[at + 5] ^= 0x10
    bad = tmp_path / "flipped.pt"
    bad.write_bytes(bytes(data))
    assert "is corrupt: its weights do not match the checksum" in generate_error(capsys, bad)


@pytest.mark.parametrize("damage", ["model-not-a-state-dict", "tokenizer-too-large", "absurd-size"])
def test_inconsistent_checkpoints_are_refused_before_building_the_model(checkpoint, tmp_path, capsys, damage):
    state = load(checkpoint)
    state.pop("checksum")
    if damage == "model-not-a-state-dict":
        state["model"] = [1, 2, 3]
        expected = "its 'model' entry is not a state dict"
    elif damage == "tokenizer-too-large":
        state["tokenizer"]["vocab_size"] = 1000
        expected = "its tokenizer has 1000 symbols but the model only 8"
    else:
        state["config"]["model"]["d_model"] = 2**20  # ~10^12 parameters: must be refused without allocating
        state["config"]["model"]["d_ff"] = 2**20
        expected = "does not match its own config"
    bad = tmp_path / f"{damage}.pt"
    save_checkpoint(bad, state)
    assert expected in generate_error(capsys, bad)


# ------------------------------------------------------------------------------------------------ generate.py input


def test_generate_input_errors_are_one_line(checkpoint, capsys, monkeypatch):
    base = ["--checkpoint", str(checkpoint), "--max-new-tokens", "2"]
    monkeypatch.setattr(sys, "stdin", None)
    assert generate_main([*base, "--prompt", "-"]) == 2
    assert "standard input, but it is closed" in one_line_error(capsys, "generate.py")
    with pytest.raises(SystemExit) as info:
        generate_main([*base, "--prompt", "1", "--seed", str(2**64)])
    assert info.value.code == 2 and "[0, 2^64)" in one_line_error(capsys, "generate.py")


# ------------------------------------------------------------------------------- one window default everywhere


@pytest.fixture(scope="module")
def long_text_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("window")
    text = root / "corpus.txt"
    text.write_text("".join(f"line {i % 13}: value {i % 7}\n" for i in range(300)), encoding="utf-8")
    with io.StringIO() as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            assert train_main(["--no-progress", *tiny(root, "t", "train.max_steps=20", f"data.source=text:{text}",
                                                       "data.tokenizer=char")]) == 0
        finally:
            sys.stdout = stdout
    return root / "t" / "last.pt"


def test_api_and_cli_score_agree_beyond_the_training_length(long_text_run, tmp_path, capsys):
    model, tokenizer, config = load_checkpoint(long_text_run)
    assert model.config.trained_len == 8 and model.default_window == 7
    text = "".join(f"line {i % 13}: value {i % 7}\n" for i in range(4))  # ~80 characters, 10x the training length
    path = tmp_path / "score.txt"
    path.write_text(text, encoding="utf-8")
    ids = torch.tensor(tokenizer.encode(text))
    api = score(model, ids, segment_len=8)  # the README's snippet: no window argument
    assert generate_main(["--checkpoint", str(long_text_run), "--score", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: {api}\n"
    unlimited = score(model, ids, segment_len=8, mem_len="all")
    assert abs(unlimited.nll - api.nll) > 1e-3  # an explicit choice, and a different number


def test_api_generation_uses_the_same_window_as_the_cli(long_text_run, capsys):
    model, tokenizer, _ = load_checkpoint(long_text_run)
    prompt = tokenizer.encode("line 1")
    api = generate(model, prompt, 30, temperature=0)
    assert torch.equal(api, generate(model, prompt, 30, temperature=0, mem_len=7))
    assert generate_main(["--checkpoint", str(long_text_run), "--prompt", "line 1", "--max-new-tokens", "30",
                          "--temperature", "0"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(api[0].tolist()) + "\n"



# ----------------------------------------------------------------------------------------------- the first hour


def test_the_console_says_what_runs_and_what_each_number_covers(tmp_path, capsys):
    args = tiny(tmp_path, "log", "train.max_steps=4", "train.pretrain_steps=2", "train.eval_every=2",
                "train.log_every=2")
    assert train_main(["--no-progress", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("starting: transformer DEQ, ") and "parameters" in lines[0]
    assert "markov" in lines[0] and "device cpu" in lines[0] and str(tmp_path / "log") in lines[0]
    assert lines[1] == "steps 1-2: pretraining the explicit weight-tied network (unrolled:4), then the DEQ (implicit)"
    plain = [line for line in lines if line.startswith("step ") and "/4" in line]
    assert [line.split()[1] for line in plain] == ["2/4", "4/4"]  # every log_every steps, no progress bar
    assert "phase pretrain" in plain[0] and "phase deq" in plain[1]
    assert "step 2: pretraining done; training the DEQ (implicit)" in lines
    evals = [line for line in lines if ": valid nll" in line]
    assert len(evals) == 2 and evals[0].startswith("step 2: valid nll ")
    assert "bits per token" in evals[0] and evals[0].endswith("(over its first 1 batches of 2 x 8)")


def test_a_run_that_never_reaches_the_deq_is_warned_about(tmp_path, capsys):
    assert train_main(["--no-progress", *tiny(tmp_path, "pw", "train.max_steps=2", "train.pretrain_steps=5")]) == 0
    out = capsys.readouterr().out
    assert "warning: train.pretrain_steps=5 >= train.max_steps=2" in out and "never uses the DEQ" in out


def test_the_thread_default_leaves_a_core_free_and_run_threads_overrides_it(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert deqseq.training.default_threads() == 1  # 2 usable cores: one thread, the other core for the machine
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert deqseq.training.default_threads() == 1  # never zero
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert deqseq.training.default_threads() == 15
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    Trainer(load_config(None, tiny(tmp_path, "threads", "run.threads=3")))
    Trainer(load_config(None, tiny(tmp_path, "threads2")))
    assert chosen == [3, 15]


def test_offline_tracking_looks_up_no_host(tmp_path, monkeypatch):
    """wandb in offline mode with crash reports off: nothing in this process resolves a network name (the service
    process wandb starts talks to it over a local socket)."""
    import socket

    from deqseq.tracking import Tracker

    monkeypatch.delenv("WANDB_ERROR_REPORTING", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    tracker = Tracker(tmp_path / "run", mode="offline", name="offline", config={"a": 1})
    tracker.log({"loss": 1.0}, step=1)
    tracker.finish()
    assert os.environ["WANDB_ERROR_REPORTING"] == "false"
    assert all(host in {"localhost", "127.0.0.1", "::1", "None"} for host in looked_up), looked_up
    assert list((tmp_path / "run").glob("wandb/offline-run-*")), "the run is stored locally"
