"""Real-valued series end to end: train a tiny mixture-of-Gaussians model on the Fourier source from the command
line, then continue held-out series and typed-in values with generate.py (table, plot, equivalence check), and
check every user error exits 2 with one line."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from deqseq.checkpoint import load_checkpoint
from deqseq.cli import generate_main, train_main
from deqseq.data import load_corpus
from deqseq.forecast import continue_series

FOURIER = "fourier:series=60,length=17,terms=2,periods=4-8,noise=0.05,seed=0,cond=period"
TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.input=linear", "model.head=mog",
        "model.mixtures=2", "data.batch_size=4", "data.seq_len=16", "data.eval_batch_size=4", "train.eval_batches=1",
        "run.device=cpu", "tracking.mode=disabled", "train.max_steps=6", "train.warmup_steps=2",
        "train.pretrain_steps=2", "solver.forward.method=anderson", "solver.forward.tol=1e-4",
        "solver.forward.max_iter=60"]


def _train(out_dir: Path, name: str, *extra: str) -> Path:
    argv = ["--no-progress", *TINY, f"run.out_dir={out_dir}", f"run.name={name}", *extra]
    with contextlib.redirect_stdout(io.StringIO()):
        assert train_main(argv) == 0
    return out_dir / name


@pytest.fixture(scope="module")
def series_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("fourier"), "mog", f"data.source={FOURIER}")


@pytest.fixture(scope="module")
def class_run(tmp_path_factory) -> Path:
    spec = FOURIER.replace("periods=4-8", "periods=4/6/8").replace("cond=period", "cond=class")
    return _train(tmp_path_factory.mktemp("fourier-class"), "mog-class", f"data.source={spec}")


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = generate_main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table_rows(out: str) -> list[list[float]]:
    rows = [line.split() for line in out.splitlines()]
    return [[float(v) for v in r] for r in rows if r and r[0].isdigit()]


def test_training_saves_a_series_model_with_no_tokenizer(series_run):
    model, tokenizer, config = load_checkpoint(series_run / "last.pt")
    assert tokenizer is None
    assert (config.model.in_dim, config.model.cond_dim, config.model.head) == (1, 1, "mog")
    assert model.head.target_dim == 1


def test_series_continuation_matches_the_library(series_run, capsys):
    code, out, err = run(capsys, "--checkpoint", series_run, "--series", "valid:2", "--prefix", 6, "--seed", 3,
                         "--num-samples", 5)
    assert code == 0, err
    assert out.startswith("observed 6 steps; 11 steps continued, 5 samples")
    rows = table_rows(out)
    assert [int(r[0]) for r in rows] == list(range(6, 17))
    model, _, config = load_checkpoint(series_run / "last.pt")
    data = load_corpus(config.data.spec)
    series = data.split("valid")[2, :, 0]
    expected = continue_series(model, series[:6], 11, num_samples=5, seed=3, cond=data.cond("valid")[2],
                               truth=series[6:], mem_len=config.data.seq_len - 1)
    got = torch.tensor(rows)
    assert torch.allclose(got[:, 1], expected.mean[:, 0], atol=1e-4)  # printed with 4 decimals
    assert torch.allclose(got[:, 2], expected.std[:, 0], atol=1e-4)
    assert torch.allclose(got[:, 5], series[6:], atol=1e-4)  # the true continuation
    assert torch.allclose(got[:, 6], expected.samples[0, :, 0], atol=1e-4)


def test_fused_series_continuation_prints_the_same_table(series_run, capsys, monkeypatch):
    monkeypatch.setattr(sys.modules["solvers.fused"], "COMPILE", False)  # compiled fused solves: tested elsewhere
    args = ("--checkpoint", series_run, "--series", "valid:2", "--prefix", 6, "--seed", 3, "--num-samples", 5)
    plain, fused = run(capsys, *args), run(capsys, *args, "--fused")
    assert plain[0] == fused[0] == 0, fused[2]
    assert table_rows(fused[1]) == table_rows(plain[1])


def test_prompt_values_with_conditioning_and_equivalence_check(series_run, capsys):
    code, out, err = run(capsys, "--checkpoint", series_run, "--prompt", "0.1, 0.4, 0.2 0.5", "--cond", "0.5",
                         "--max-new-tokens", 4, "--num-samples", 3, "--seed", 0, "--check-equivalence")
    assert code == 0, err
    assert out.startswith("observed 4 steps; 4 steps continued, 3 samples")
    assert [int(r[0]) for r in table_rows(out)] == [4, 5, 6, 7]
    assert "equivalence check" in out and "\nok (slack 2, contraction 0." in out


def test_class_conditioned_series(class_run, capsys):
    model, _, config = load_checkpoint(class_run / "last.pt")
    assert config.model.cond_dim == 3
    code, out, err = run(capsys, "--checkpoint", class_run, "--prompt", "0,1,0,-1", "--cond", "class:2",
                         "--max-new-tokens", 3, "--seed", 1)
    assert code == 0, err
    code, other, _ = run(capsys, "--checkpoint", class_run, "--prompt", "0,1,0,-1", "--cond", "class:0",
                         "--max-new-tokens", 3, "--seed", 1)
    assert code == 0 and other != out  # the class changes the continuation
    code, _, err = run(capsys, "--checkpoint", class_run, "--prompt", "0,1", "--cond", "class:3")
    assert code == 2 and "class:3 is out of range" in err


def test_plot_writes_a_png(series_run, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "continuation.png"
    code, out, err = run(capsys, "--checkpoint", series_run, "--series", "test:0", "--prefix", 8, "--seed", 0,
                         "--plot", path)
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert f"plot written to {path}" in out


def test_plot_without_matplotlib_is_a_one_line_error(series_run, capsys, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err = run(capsys, "--checkpoint", series_run, "--series", "test:0", "--plot", tmp_path / "x.png")
    assert code == 2 and "pip install matplotlib" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,message", [
    (("--series", "valid:0", "--top-k", "3"), "--top-k applies to token models"),
    (("--series", "valid:0", "--stream"), "--stream applies to token models"),
    (("--series", "valid:0", "--stop", "x"), "--stop applies to token models"),
    (("--series", "valid:0", "--prompts", "f.txt"), "--prompts applies to token models"),
    (("--prompt", "1,2", "--prompt", "3,4", "--cond", "1"), "takes one --prompt"),
    (("--series", "train:0"), "valid:INDEX or test:INDEX"),
    (("--series", "valid:x"), "valid:INDEX or test:INDEX"),
    (("--series", "valid:99"), "the valid split has 3 series"),
    (("--series", "valid:0", "--prefix", "17"), "leaves nothing to continue"),
    (("--series", "valid:0", "--prompt", "1,2"), "one of them"),
    ((), "one of them"),
    (("--prompt", "1,2", "--prefix", "1"), "--prefix selects"),
    (("--prompt", "1,a"), "must be numbers"),
    (("--prompt", "1,nan,2", "--cond", "1"), "--prompt must be finite numbers"),
    (("--prompt", "1,2", "--cond", "inf"), "--cond must be finite numbers"),
    (("--prompt", "1,2"), "this model is conditioned"),
    (("--prompt", "1,2", "--cond", "1,2"), "--cond needs 1 values"),
    (("--prompt", "1 2\n3", "--cond", "1"), "1 values per step"),
    (("--prompt", "@/nonexistent/values.txt", "--cond", "1"), "prompt file not found"),
])
def test_series_user_errors_exit_2_with_one_line(series_run, capsys, argv, message):
    code, _, err = run(capsys, "--checkpoint", series_run, *argv)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1


def test_series_flags_on_a_token_checkpoint_are_errors(tmp_path, capsys):
    run_dir = _train(tmp_path, "markov", "data.source=markov:order=1,vocab=8,seed=0,length=3000",
                     "model.input=embedding", "model.head=categorical")
    code, _, err = run(capsys, "--checkpoint", run_dir, "--prompt", "1 2", "--plot", tmp_path / "x.png")
    assert code == 2 and "--plot is for models of real-valued series" in err


def test_training_refuses_mismatched_data_and_model(tmp_path, capsys):
    argv = ["--no-progress", *TINY, f"run.out_dir={tmp_path}"]
    cases = [
        (["data.source=markov:order=1,vocab=8,seed=0,length=3000"], "need real-valued data"),
        ([f"data.source={FOURIER}", "model.input=embedding", "model.head=categorical"], "gives real values"),
        ([f"data.source={FOURIER}", "model.in_dim=3"], "model.in_dim=3 does not match"),
        ([f"data.source={FOURIER}", "data.mem_len=4"], "use data.mem_len=0"),
        ([f"data.source={FOURIER}", "model.cond_dim=2"], "model.cond_dim=2 does not match"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert train_main(argv + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_evaluation_reports_nats_and_bits_per_dim(series_run):
    rows = [line for line in (series_run / "metrics.jsonl").read_text().splitlines() if "test_nll" in line]
    last = json.loads(rows[-1])
    assert math.isclose(last["test_bits_per_dim"], last["test_nll"] / math.log(2), rel_tol=1e-9)
    assert last["test_steps"] == 3 * 16  # every test series' 16 predicted steps
    assert math.isclose(json.loads(next(r for r in (series_run / "metrics.jsonl").read_text().splitlines()
                                        if "data_nll_bound" in r))["data_nll_bound"],
                        0.5 * math.log(2 * math.pi * math.e * 0.05 ** 2), rel_tol=1e-9)


def test_dmol_head_over_token_ids_trains_samples_and_generates(tmp_path, capsys):
    run_dir = _train(tmp_path, "dmol", "data.source=markov:order=1,vocab=8,seed=0,length=3000",
                     "model.input=embedding", "model.head=dmol", "model.levels=8", "train.sample_every=3",
                     "train.sample_tokens=5", "train.log_every=1")
    samples = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "sample" in line]
    assert len(samples) == 2 and all(len(s["sample"].split()) == 16 + 5 for s in samples)  # prompt + 5 ids
    argv = ("--checkpoint", run_dir, "--prompt", "1 2 3", "--max-new-tokens", 6, "--seed", 0)
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    ids = out.split()
    assert ids[:3] == ["1", "2", "3"] and len(ids) == 9 and all(0 <= int(i) < 8 for i in ids)
    code, streamed, err = run(capsys, *argv, "--stream", "--check-equivalence")
    assert code == 0, err
    assert streamed.splitlines()[0].split() == ids and "\nok (slack 2, contraction 0." in streamed
