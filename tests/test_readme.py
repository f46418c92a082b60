"""The README's Python snippets run as written (against a tiny trained checkpoint where they load one), and its
claims about the test suite match the suite."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deqseq.cli import train_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "data.batch_size=2", "data.seq_len=16",
        "data.eval_batch_size=2", "train.eval_batches=1", "run.device=cpu", "tracking.mode=disabled",
        "train.max_steps=4", "train.eval_every=0", "data.source=stdlib:max_bytes=60000"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with runs/default/last.pt (a tiny byte-level model of the stdlib), configs/ and deqseq/model.py to
    score."""
    root = tmp_path_factory.mktemp("readme")
    with contextlib.redirect_stdout(io.StringIO()):
        assert train_main(["--no-progress", *TINY, f"run.out_dir={root / 'runs'}", "run.name=default"]) == 0
    shutil.copytree(ROOT / "configs", root / "configs")  # snippets run from the repository root
    (root / "deqseq").mkdir()
    (root / "deqseq" / "model.py").write_text((ROOT / "deqseq" / "model.py").read_text(encoding="utf-8")[:3000],
                                               encoding="utf-8")
    return root


def test_the_readme_has_python_snippets():
    assert len(SNIPPETS) >= 4


@pytest.fixture
def restored_registries():
    """The registries as they were before a snippet that registers its own cells, heads, sources or methods."""
    import solvers
    from deqseq import CELLS, HEADS, INPUTS, SOURCES

    saved = [(registry, dict(registry)) for registry in (CELLS, HEADS, INPUTS, SOURCES)]
    methods = set(solvers.METHODS)
    yield
    for registry, entries in saved:
        for name in [n for n in registry if n not in entries]:
            registry.unregister(name)
    for name in set(solvers.METHODS) - methods:
        solvers.unregister_method(name)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_python_snippet_runs_as_written(index, workdir, monkeypatch, restored_registries):
    monkeypatch.chdir(workdir)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(SNIPPETS[index], f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})


def test_the_stated_test_count_is_the_suites():
    stated = re.search(r"runs the suite \((\d+) tests", README)
    assert stated, "the README states the number of tests"
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", str(ROOT / "tests")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    collected = re.search(r"(\d+) tests? collected", out.stdout)
    assert collected, out.stdout[-500:]
    assert int(stated[1]) == int(collected[1])
