"""bench/device_check.sh: its CPU-runnable parts at tiny sizes, its failure exit codes and its summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(device: str, out: Path, only: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUICK": "1", "ONLY": only}
    return subprocess.run(["bash", str(SCRIPT), device, str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_every_step_but_the_tests_runs_on_cpu_and_is_summarised(tmp_path):
    # the "tests" step is `pytest -m device`, which this suite runs itself
    done = run_script("cpu", tmp_path, "train equivalence generation solvers")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and summary["env"]["device"] == "cpu" and summary["env"]["torch"] == torch.__version__
    assert [(s["step"], s["rc"]) for s in summary["steps"]] == [("train", 0), ("equivalence", 0), ("generation", 0),
                                                                ("solvers", 0)]
    train_log = (tmp_path / "train.log").read_text()
    assert "step 6/6" in train_log and (tmp_path / "runs" / "bf16" / "last.pt").exists()
    assert "\nok (slack" in (tmp_path / "equivalence.log").read_text()
    generation = json.loads((tmp_path / "generation.json").read_text())
    assert generation["device"] == "cpu" and [r["length"] for r in generation["rows"]] == [64]
    assert generation["rows"][0]["token_mismatches_vs_naive"] == 0
    solvers = json.loads((tmp_path / "solvers.json").read_text())
    assert solvers["device"] == "cpu" and len(solvers["problems"]) == 3
    assert {"broyden_outside_f_1e-4", "anderson_outside_f_1e-4"} <= solvers["targets_attention"].keys()


def test_a_failed_step_fails_the_run_and_the_summary(tmp_path):
    done = run_script("cpu", tmp_path, "equivalence")  # no training step: no checkpoint to check
    assert done.returncode == 1 and "== equivalence FAILED" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not summary["ok"] and summary["steps"][0]["step"] == "equivalence" and summary["steps"][0]["rc"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_an_unusable_device_exits_2(tmp_path):
    done = run_script("cuda", tmp_path, "solvers")
    assert done.returncode == 2 and "cuda is not usable here" in done.stderr
    assert not (tmp_path / "summary.json").exists()
