"""Digits (8x8 images as pixel sequences): test bits/dim of the DEQ, of the explicit weight-tied network of the
same cell (unrolled:K, no Jacobian penalty) and of independent per-pixel marginals, with each run's wall time.

Every model trains configs/digits.yaml for the same number of steps on the same batches (same seed); each run is
a `train.py` process, one after the other, so timings do not compete. Writes bench/results/digits.json and, from
the DEQ run, the sample grid docs/digits_samples.png (seed 0).

    python bench/digits.py [--steps 1500] [--tied 2 4] [--out-dir runs/bench-digits]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import write_json  # noqa: E402
from deqseq import load_corpus  # noqa: E402


def train(name: str, out_dir: Path, steps: int, extra: list[str]) -> dict:
    """Run train.py on configs/digits.yaml; its final valid/test metrics and wall time."""
    argv = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/digits.yaml"), "--no-progress",
            "--force", f"run.name={name}", f"run.out_dir={out_dir}", f"train.max_steps={steps}",
            "tracking.mode=disabled", *extra]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    last = json.loads((out_dir / name / "metrics.jsonl").read_text().splitlines()[-1])
    return {"overrides": extra, "seconds": round(seconds, 1), "steps": steps,
            "valid_bits_per_dim": last["valid_bits_per_dim"], "test_bits_per_dim": last["test_bits_per_dim"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--tied", type=int, nargs="*", default=[2, 4], help="K of the explicit unrolled:K models")
    parser.add_argument("--out-dir", default="runs/bench-digits")
    parser.add_argument("--json", default=str(ROOT / "bench/results/digits.json"))
    parser.add_argument("--png", default=str(ROOT / "docs/digits_samples.png"))
    args = parser.parse_args()
    out_dir = Path(args.out_dir).resolve()
    data = load_corpus("digits")
    results = {
        "data": data.description,
        "baselines": {"marginal_bits_per_dim": data.marginal_bits_per_dim("test"),
                      "class_marginal_bits_per_dim": data.marginal_bits_per_dim("test", by_class=True)},
        "models": {"deq": train("deq", out_dir, args.steps, [])},
    }
    for k in args.tied:
        results["models"][f"tied{k}"] = train(f"tied{k}", out_dir, args.steps,
                                              [f"solver.grad=unrolled:{k}", "solver.jac_weight=0"])
    subprocess.run([sys.executable, str(ROOT / "generate.py"), "--checkpoint", str(out_dir / "deq/last.pt"),
                    "--seed", "0", "--plot", args.png], check=True)
    print(f"{'model':8s} {'test bits/dim':>14s} {'valid':>7s} {'seconds':>8s}")
    for name, value in results["baselines"].items():
        print(f"{name[:-13]:8s} {value:14.3f}")
    for name, m in results["models"].items():
        print(f"{name:8s} {m['test_bits_per_dim']:14.3f} {m['valid_bits_per_dim']:7.3f} {m['seconds']:8.1f}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
