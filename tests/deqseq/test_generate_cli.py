"""generate.py end to end: sampling output, seeding, streaming, several samples, the equivalence check, solver
statistics, scoring, prompts from files and stdin, agreement with the library, and one-line user errors."""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import deqseq.equivalence
import deqseq.generation
import deqseq.scoring
from deqseq.checkpoint import load_checkpoint
from deqseq.cli import generate_main, train_main
from deqseq.generation import generate
from deqseq.scoring import score

MARKOV = "markov:order=1,vocab=8,seed=0,length=3000"
SEQ_LEN = 8
TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "data.batch_size=2", f"data.seq_len={SEQ_LEN}",
        "data.eval_batch_size=2", "train.eval_batches=1", "run.device=cpu", "tracking.mode=disabled",
        "train.max_steps=30", "train.warmup_steps=2", "train.pretrain_steps=5"]
PROMPT = "def "  # 4 characters, all in the char model's alphabet


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(out_dir: Path, name: str, *extra: str) -> Path:
    argv = ["--no-progress", *TINY, f"run.out_dir={out_dir}", f"run.name={name}", *extra]
    with single_thread(), contextlib.redirect_stdout(io.StringIO()):
        assert train_main(argv) == 0
    return out_dir / name


def corpus_text() -> str:
    """A few KB of Python-like lines over a small alphabet: no capitals, no '-', no non-ASCII symbols."""
    return "".join(f"def f{i % 7}(x):\n    return x + {i % 10}\n" for i in range(120))


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    """A tiny transformer run on a char-level text corpus, with a forward solver that converges."""
    root = tmp_path_factory.mktemp("char")
    text_file = root / "corpus.py"
    text_file.write_text(corpus_text(), encoding="utf-8")
    return _train(root, "char", f"data.source=text:{text_file}", "data.tokenizer=char",
                  "solver.forward.method=anderson", "solver.forward.tol=1e-4", "solver.forward.max_iter=60")


@pytest.fixture(scope="module")
def trellis_run(tmp_path_factory) -> Path:
    """A tiny trellis run on the Markov source (id tokenizer: prompts are space-separated ids)."""
    return _train(tmp_path_factory.mktemp("trellis"), "trellis", f"data.source={MARKOV}", "model.cell=trellis")


@pytest.fixture(scope="module")
def char_model(char_run):
    """(model, tokenizer, config) of the char run, loaded independently of the CLI."""
    return load_checkpoint(char_run / "last.pt")


@dataclass
class Result:
    code: int
    out: str
    err: str


def run(capsys, *argv: str) -> Result:
    """generate_main(argv) with its exit code (a SystemExit from argparse included) and captured output."""
    capsys.readouterr()
    try:
        code = generate_main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def ok(capsys, *argv: str) -> str:
    """stdout of a run that must succeed."""
    result = run(capsys, *argv)
    assert result.code == 0, result.err
    return result.out


# ----------------------------------------------------------------------------------------------------- generation


def test_prints_prompt_and_exactly_max_new_tokens_characters(char_run, char_model, capsys):
    _, tokenizer, _ = char_model
    out = ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 12, "--seed", 1)
    assert out.startswith(PROMPT) and out.endswith("\n")
    assert len(out) == len(PROMPT) + 12 + 1  # the char tokenizer decodes one character per token
    assert set(out[len(PROMPT) : -1]) <= set(tokenizer.symbols)
    # A run directory works like its last.pt; the same seed gives the same text.
    assert ok(capsys, "--checkpoint", char_run / "last.pt", "--prompt", PROMPT, "--max-new-tokens", 12,
              "--seed", 1) == out
    assert ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 12, "--seed", 2) != out


def test_temperature_zero_is_deterministic_without_a_seed(char_run, capsys):
    argv = ("--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 10, "--temperature", 0)
    first = ok(capsys, *argv)
    assert len(first) == len(PROMPT) + 10 + 1 and first.startswith(PROMPT)
    assert ok(capsys, *argv) == first
    # Filters do not change the argmax, and neither does a seed.
    assert ok(capsys, *argv, "--top-k", 3, "--top-p", 0.5, "--seed", 7) == first


@pytest.mark.parametrize("extra", [(), ("--temperature", "0"), ("--top-k", "5", "--repetition-penalty", "1.3")])
def test_stream_prints_the_same_text_as_without(char_run, capsys, extra):
    argv = ("--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 10, "--seed", 3, *extra)
    assert ok(capsys, *argv, "--stream") == ok(capsys, *argv)


def test_num_samples_prints_each_sample_under_its_header(char_run, capsys):
    n, new = 3, 6
    out = ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", new, "--num-samples", n,
             "--seed", 5)
    samples, pos = [], 0
    for i in range(1, n + 1):
        header = f"---- sample {i} ----\n"
        assert out[pos : pos + len(header)] == header
        pos += len(header)
        body = out[pos : pos + len(PROMPT) + new]
        assert body.startswith(PROMPT) and out[pos + len(body)] == "\n"
        samples.append(body)
        pos += len(body) + 1
    assert pos == len(out)
    assert len(set(samples)) > 1  # independent draws (18 characters at a per-character entropy of ~2.8 nats)

    # Greedy samples are all the single greedy continuation.
    greedy = ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", new, "--temperature", 0)
    many = ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", new, "--temperature", 0,
              "--num-samples", n)
    assert many == "".join(f"---- sample {i} ----\n{greedy}" for i in range(1, n + 1))


# ------------------------------------------------------------------------------------------- equivalence and stats


def _table(out: str) -> list[str]:
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("mode "))
    return lines[start:]


def test_check_equivalence_passes_on_the_trained_model(char_run, capsys):
    result = run(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 6, "--temperature", 0,
                 "--check-equivalence")
    assert result.code == 0, result.out
    text = ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 6, "--temperature", 0)
    assert result.out.startswith(text)  # the sample first, then the report
    table = _table(result.out)
    assert table[0].split() == ["mode", "max_state_diff", "state_diff", "bound", "rel_state_diff", "max_logit_diff",
                                "mismatches", "nfe", "converged", "diff@tight", "shrink"]
    rows = {line.split()[0]: line.split() for line in table[1:-1]}
    assert set(rows) == {"sequence", "token", "chunk=4"}
    for mode in ("token", "chunk=4"):
        max_diff, state_diff, bound, rel_diff, logit_diff, mismatches, nfe, converged, *tight = rows[mode][1:]
        assert float(max_diff) <= float(state_diff) <= float(bound) and float(logit_diff) < 1e-2
        assert mismatches == "0" and int(nfe) >= 1 and converged == "True"
    # At tolerance / 100 the token-by-token equilibria move with the sequence-level ones: the difference shrinks.
    assert float(rows["token"][-1]) < 0.2 and float(rows["token"][-2]) < float(rows["token"][2])
    assert rows["chunk=4"][-2:] == ["-", "-"]
    assert rows["sequence"][-3] == "True"
    assert re.fullmatch(r"ok \(slack 2, contraction 0\.\d+\)", table[-1]), table[-1]


def test_check_equivalence_exits_1_when_differences_exceed_the_bound(char_run, capsys, monkeypatch):
    real = deqseq.equivalence.check_equivalence

    def strict(model, x, *args, **kwargs):
        return real(model, x, slack=1e-12)  # a bound no solve with a nonzero residual can meet

    monkeypatch.setattr(deqseq.equivalence, "check_equivalence", strict)
    result = run(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 4, "--temperature", 0,
                 "--check-equivalence")
    assert result.code == 1
    last = _table(result.out)[-1]
    assert last.startswith("NOT ok: ") and "token state diff" in last and "chunk=4 state diff" in last


def test_stats_reports_each_token_and_a_summary_on_stderr(char_run, capsys):
    new = 5
    result = run(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", new, "--seed", 0,
                 "--stats")
    assert result.code == 0 and len(result.out) == len(PROMPT) + new + 1
    lines = result.err.splitlines()
    assert len(lines) == new + 1
    token_line = re.compile(r"token +(\d+): iterations +(\d+)  residual (\S+)  converged (True|False)")
    iterations = []
    for index, line in enumerate(lines[:new]):
        match = token_line.fullmatch(line)
        assert match, line
        assert int(match[1]) == index and 1 <= int(match[2]) <= 60
        assert match[4] == "True" and float(match[3]) <= 1e-4  # the solver's tolerance
        iterations.append(int(match[2]))
    summary = re.fullmatch(r"prefill 4 tokens: ([\d.]+) ms, (\d+) iterations; 4 tokens x 1: ([\d.]+) tokens/s, "
                           r"([\d.]+) iterations/token, max residual (\S+)", lines[-1])
    assert summary, lines[-1]
    assert int(summary[2]) == iterations[0] and float(summary[3]) > 0
    assert float(summary[4]) == pytest.approx(sum(iterations[1:]) / (new - 1), abs=0.051)  # printed to 1 decimal
    assert float(summary[5]) <= 1e-4


# -------------------------------------------------------------------------------------------------------- scoring


def test_score_prints_the_library_score(char_run, char_model, capsys, monkeypatch, tmp_path):
    text = corpus_text()[:61]  # several segments of seq_len, so the carried history matters
    path = tmp_path / "score.txt"
    path.write_text(text, encoding="utf-8")
    calls = []
    real = deqseq.scoring.score

    def recording(*args, **kwargs):
        calls.append((args, kwargs, real(*args, **kwargs)))
        return calls[-1][2]

    monkeypatch.setattr(deqseq.scoring, "score", recording)
    out = ok(capsys, "--checkpoint", char_run, "--score", path)

    model, tokenizer, config = char_model
    ids = torch.tensor(tokenizer.encode(text))
    mem_len = SEQ_LEN - 1  # --mem-len auto on a transformer without a window: the training context
    expected = score(model, ids, config.data.seq_len, carry_history=True, mem_len=mem_len)
    (args, kwargs, got), = calls
    assert args[2] == SEQ_LEN and kwargs == {"carry_history": True, "mem_len": "auto"}
    assert got.tokens == expected.tokens == len(text) - 1
    assert abs(got.nll - expected.nll) < 1e-6 and 0 < got.nll < math.log(tokenizer.vocab_size) + 1

    match = re.fullmatch(r"(.+): nll (\S+) nats/token  ppl (\S+)  bits/token (\S+)  \((\d+) tokens\)\n", out)
    assert match, out
    assert match[1] == str(path) and int(match[5]) == len(text) - 1
    nll, ppl, bits = (float(match[i]) for i in (2, 3, 4))
    assert abs(nll - expected.nll) <= 5e-5 + 1e-6
    assert abs(ppl - math.exp(nll)) <= math.exp(nll) * 6e-5 + 5e-4  # nll printed to 4 decimals, ppl to 3
    assert abs(bits - nll / math.log(2)) <= 5e-5 / math.log(2) + 5e-5 + 1e-9
    assert out == f"{path}: {expected}\n"


def test_score_honours_mem_len(char_run, char_model, capsys, tmp_path):
    text = corpus_text()[:40]
    path = tmp_path / "score.txt"
    path.write_text(text, encoding="utf-8")
    model, tokenizer, config = char_model
    ids = torch.tensor(tokenizer.encode(text))
    expected = score(model, ids, config.data.seq_len, carry_history=True, mem_len=2)
    assert ok(capsys, "--checkpoint", char_run, "--score", path, "--mem-len", 2) == f"{path}: {expected}\n"


# -------------------------------------------------------------------------------------------------------- prompts


def test_prompt_from_a_file_and_from_stdin(char_run, capsys, monkeypatch, tmp_path):
    prompt = "def f"
    argv = ("--checkpoint", char_run, "--max-new-tokens", 8, "--seed", 11)
    direct = ok(capsys, *argv, "--prompt", prompt)
    assert direct.startswith(prompt) and len(direct) == len(prompt) + 8 + 1
    path = tmp_path / "prompt.txt"
    path.write_text(prompt, encoding="utf-8")
    assert ok(capsys, *argv, "--prompt", f"@{path}") == direct
    monkeypatch.setattr(sys, "stdin", io.StringIO(prompt))
    assert ok(capsys, *argv, "--prompt", "-") == direct


# ------------------------------------------------------------------------------------------ library and CLI agree


@pytest.mark.parametrize("mem_len_arg, mem_len", [("auto", SEQ_LEN - 1), ("all", None), ("3", 3), ("0", 0)])
def test_greedy_text_equals_the_library(char_run, char_model, capsys, mem_len_arg, mem_len):
    model, tokenizer, _ = char_model
    new = 4  # 4 + 4 = 8 positions fit the training context, as --mem-len all requires
    out = ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", new, "--temperature", 0,
             "--mem-len", mem_len_arg)
    ids = generate(model, tokenizer.encode(PROMPT), new, temperature=0, mem_len=mem_len)
    assert out == tokenizer.decode(ids[0]) + "\n"


def test_longer_greedy_text_and_warm_start_equal_the_library(char_run, char_model, capsys):
    model, tokenizer, _ = char_model
    prompt = "def f3(x):\n"
    for extra, warm in (((), False), (("--warm-start",), True)):
        out = ok(capsys, "--checkpoint", char_run, "--prompt", prompt, "--max-new-tokens", 20, "--temperature", 0,
                 *extra)
        ids = generate(model, tokenizer.encode(prompt), 20, temperature=0, mem_len=SEQ_LEN - 1, warm_start=warm)
        assert out == tokenizer.decode(ids[0]) + "\n"


def test_fused_greedy_text_equals_the_unfused_and_the_library(char_run, char_model, capsys, monkeypatch):
    monkeypatch.setattr(sys.modules["solvers.fused"], "COMPILE", False)  # a compiled stream is tested elsewhere
    model, tokenizer, _ = char_model
    prompt = "def f3(x):\n"
    args = ("--checkpoint", char_run, "--prompt", prompt, "--max-new-tokens", 12, "--temperature", 0)
    out = ok(capsys, *args, "--fused")
    assert out == ok(capsys, *args)
    ids = generate(model, tokenizer.encode(prompt), 12, temperature=0, mem_len=SEQ_LEN - 1, fused=True)
    assert out == tokenizer.decode(ids[0]) + "\n"


def test_seeded_samples_equal_the_library(char_run, char_model, capsys):
    model, tokenizer, _ = char_model
    out = ok(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 7, "--seed", 123,
             "--top-k", 4, "--repetition-penalty", 1.2, "--num-samples", 2)
    ids = generate(model, tokenizer.encode(PROMPT), 7, top_k=4, repetition_penalty=1.2, seed=123, num_samples=2,
                   mem_len=SEQ_LEN - 1)
    assert out == "".join(f"---- sample {i + 1} ----\n{tokenizer.decode(row)}\n" for i, row in enumerate(ids))


# ----------------------------------------------------------------------------------------------- the trellis model


def test_trellis_id_model_generates_and_scores(trellis_run, capsys, tmp_path):
    model, tokenizer, config = load_checkpoint(trellis_run)
    out = ok(capsys, "--checkpoint", trellis_run, "--prompt", "1 2 3", "--max-new-tokens", 5, "--temperature", 0,
             "--check-equivalence")
    lines = out.splitlines()
    ids = generate(model, [1, 2, 3], 5, temperature=0)
    assert lines[0] == tokenizer.decode(ids[0]) and lines[0].startswith("1 2 3 ") and len(lines[0].split()) == 8
    assert re.fullmatch(r"ok \(slack 2, contraction 0\.\d+\)", lines[-1]), lines[-1]

    path = tmp_path / "ids.txt"
    path.write_text("0 1 2 3 4 5 6 7 " * 3, encoding="utf-8")
    expected = score(model, torch.tensor(tokenizer.encode(path.read_text())), config.data.seq_len, mem_len=None)
    assert ok(capsys, "--checkpoint", trellis_run, "--score", path) == f"{path}: {expected}\n"


def test_stream_keeps_the_separator_of_an_id_tokenizer(trellis_run, capsys):
    argv = ("--checkpoint", trellis_run, "--prompt", "1 2 3", "--max-new-tokens", 4, "--seed", 1)
    assert ok(capsys, *argv, "--stream") == ok(capsys, *argv)


def test_stream_with_several_samples_prints_the_same_as_without(char_run, capsys):
    argv = ("--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 5, "--seed", 1, "--num-samples", 2)
    assert ok(capsys, *argv, "--stream") == ok(capsys, *argv)


# ---------------------------------------------------------------------------------------------------- exit codes


def test_ctrl_c_exits_130(char_run, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield  # a generator, like the real stream

    monkeypatch.setattr(deqseq.generation, "stream", interrupted)
    result = run(capsys, "--checkpoint", char_run, "--prompt", PROMPT, "--max-new-tokens", 4)
    assert result.code == 130 and result.err == "generate.py: interrupted\n"


def _bad_files(tmp: Path) -> dict[str, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    random_bytes = tmp / "random.pt"
    random_bytes.write_bytes(os.urandom(2048))
    foreign = tmp / "foreign.pt"
    torch.save({"a": 1}, foreign)
    latin1 = tmp / "latin1.txt"
    latin1.write_bytes("d\xe9f".encode("latin-1"))
    unknown = tmp / "unknown.txt"
    unknown.write_text("def Zed(x)", encoding="utf-8")
    short = tmp / "short.txt"
    short.write_text("d", encoding="utf-8")
    return {"random": random_bytes, "foreign": foreign, "latin1": latin1, "unknown": unknown, "short": short}


CKPT = "{ckpt}"
BAD_INPUTS = [
    # (id, argv with CKPT for `--checkpoint <char run>` and {tmp} for the test's folder, substrings of the message)
    ("missing checkpoint", ["--checkpoint", "{tmp}/nope.pt"], ["checkpoint not found", "nope.pt"]),
    ("missing run dir", ["--checkpoint", "{tmp}/no_run"], ["checkpoint not found", "no_run"]),
    ("random bytes", ["--checkpoint", "{tmp}/random.pt"], ["not a readable torch checkpoint", "random.pt"]),
    ("foreign torch file", ["--checkpoint", "{tmp}/foreign.pt"], ["not a deqseq checkpoint", "foreign.pt"]),
    ("unknown symbol Z", [CKPT, "--prompt", "def Z"], ["unknown character 'Z'", "position 4"]),
    ("unknown symbol euro", [CKPT, "--prompt", "x\u20ac"], ["unknown character '\u20ac'", "position 1"]),
    ("missing prompt file", [CKPT, "--prompt", "@{tmp}/absent.txt"], ["prompt file not found", "absent.txt"]),
    ("prompt file is a directory", [CKPT, "--prompt", "@{tmp}"], ["cannot read prompt file"]),
    ("prompt file not utf-8", [CKPT, "--prompt", "@{tmp}/latin1.txt"], ["cannot read prompt file", "latin1.txt"]),
    ("empty prompt", [CKPT, "--prompt", ""], ["prompt is empty"]),
    ("too long for --mem-len all", [CKPT, "--prompt", PROMPT, "--max-new-tokens", "6", "--mem-len", "all"],
     ["9 positions exceed the 8", "--mem-len N"]),
    ("max-new-tokens 0", [CKPT, "--max-new-tokens", "0"], ["--max-new-tokens", "positive integer"]),
    ("max-new-tokens -3", [CKPT, "--max-new-tokens", "-3"], ["--max-new-tokens", "-3"]),
    ("max-new-tokens text", [CKPT, "--max-new-tokens", "many"], ["--max-new-tokens", "many"]),
    ("num-samples 0", [CKPT, "--num-samples", "0"], ["--num-samples", "positive integer"]),
    ("top-p 0", [CKPT, "--top-p", "0"], ["top_p", "(0, 1]"]),
    ("top-p 1.5", [CKPT, "--top-p", "1.5"], ["top_p", "1.5"]),
    ("temperature -1", [CKPT, "--temperature", "-1"], ["temperature", "-1"]),
    ("temperature nan", [CKPT, "--temperature", "nan"], ["temperature", "nan"]),
    ("top-k 0", [CKPT, "--top-k", "0"], ["top_k", "0"]),
    ("repetition-penalty 0", [CKPT, "--repetition-penalty", "0"], ["repetition_penalty", "0"]),
    ("mem-len -1", [CKPT, "--mem-len", "-1"], ["--mem-len", "-1"]),
    ("mem-len word", [CKPT, "--mem-len", "some"], ["--mem-len", "some"]),
    ("missing score file", [CKPT, "--score", "{tmp}/absent.txt"], ["score file not found", "absent.txt"]),
    ("score file with unknown symbol", [CKPT, "--score", "{tmp}/unknown.txt"], ["unknown character 'Z'"]),
    ("score file of one token", [CKPT, "--score", "{tmp}/short.txt"], ["short.txt has 1 tokens", "at least 2"]),
    ("bad device", [CKPT, "--device", "gpu0"], ["bad --device 'gpu0'"]),
    ("no checkpoint option", ["--prompt", "x"], ["--checkpoint"]),
]


@pytest.mark.parametrize("argv, expected", [pytest.param(a, e, id=i) for i, a, e in BAD_INPUTS])
def test_user_errors_exit_2_with_one_line(char_run, capsys, tmp_path, argv, expected):
    _bad_files(tmp_path)
    args = []
    for a in argv:
        args += ["--checkpoint", str(char_run)] if a == CKPT else [a.replace("{tmp}", str(tmp_path))]
    result = run(capsys, *args)
    assert result.code == 2
    assert result.out == ""
    assert result.err.endswith("\n") and len(result.err.splitlines()) == 1, result.err
    line = result.err.strip()
    assert line.startswith("generate.py: error: ") and "Traceback" not in line
    for part in expected:
        assert part in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_exits_2(char_run, capsys):
    result = run(capsys, "--checkpoint", char_run, "--device", "cuda")
    assert result.code == 2 and result.out == ""
    assert result.err == "generate.py: error: --device cuda asked for CUDA but no CUDA device is available\n"


# ------------------------------------------------------------------------------------ several prompts and --stop


def test_several_prompts_in_one_batch_equal_each_prompt_alone(char_run, capsys, tmp_path):
    prompts = ["def f", "    return x + 1\n", "d"]
    argv = ("--checkpoint", char_run, "--max-new-tokens", 9, "--temperature", 0)
    alone = [ok(capsys, *argv, "--prompt", p) for p in prompts]
    batch = ok(capsys, *argv, *[a for p in prompts for a in ("--prompt", p)])
    expected = "".join(f"---- prompt {i + 1} ----\n{text}" for i, text in enumerate(alone))
    assert batch == expected
    (tmp_path / "prompts.txt").write_text("def f\n\nd\n", encoding="utf-8")
    from_file = ok(capsys, *argv, "--prompts", tmp_path / "prompts.txt")
    assert from_file == f"---- prompt 1 ----\n{alone[0]}---- prompt 2 ----\n{alone[2]}"
    streamed = ok(capsys, *argv, "--stream", "--prompt", prompts[1], "--prompt", prompts[0])
    assert streamed == f"---- prompt 1 ----\n{alone[1]}---- prompt 2 ----\n{alone[0]}"


def test_stop_strings_end_each_row_after_its_first_match(char_run, char_model, capsys):
    model, tokenizer, _ = char_model
    argv = ("--checkpoint", char_run, "--max-new-tokens", 30, "--temperature", 0)
    free = [ok(capsys, *argv, "--prompt", p)[:-1] for p in ("def f", "x")]  # without print's line break
    stop = free[0][5:][2:4]  # two characters the first row generates
    out = ok(capsys, *argv, "--prompt", "def f", "--prompt", "x", "--stop", stop)
    for i, (text, prompt) in enumerate(zip(free, ("def f", "x"), strict=True)):
        hit = text.find(stop, len(prompt))
        want = text if hit < 0 else text[: hit + len(stop)]
        assert f"---- prompt {i + 1} ----\n{want}\n" in out
    streamed = ok(capsys, *argv, "--prompt", "def f", "--stop", stop, "--stream")
    assert streamed == free[0][: free[0].find(stop, 5) + 2] + "\n"
    # \n on the command line is a line break; the row ends at the first one it generates.
    lines = ok(capsys, *argv, "--prompt", "def f", "--stop", "\\n")
    assert lines == free[0][: free[0].index("\n", 5) + 1] + "\n" if "\n" in free[0][5:] else lines == free[0] + "\n"
    assert run(capsys, *argv, "--prompt", "d", "--stop", "").code == 2


def test_several_prompts_pass_the_equivalence_check(char_run, capsys):
    result = run(capsys, "--checkpoint", char_run, "--max-new-tokens", 6, "--temperature", 0, "--prompt", "def f",
                 "--prompt", "d", "--check-equivalence")
    assert result.code == 0, result.out
    assert result.out.count("equivalence check") == 2
