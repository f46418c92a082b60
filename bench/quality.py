"""Model quality: the DEQ vs the explicit weight-tied baseline (unrolled:K, same parameters and steps).

On the synthetic order-2 Markov source the report is test NLL minus the source's exact entropy rate (the
best any model can do); on stdlib sources it is test bits per byte after the same budget. Writes JSON.

    python bench/quality.py [--steps 1500] [--stdlib-steps 600] [--layers 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_json  # noqa: E402
from deqseq.config import load_config  # noqa: E402
from deqseq.training import Trainer  # noqa: E402


def run(config: str, overrides: list[str]) -> dict:
    """Train one model and return its test metrics, the data's entropy rate and the wall time."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(config, [*overrides, f"run.out_dir={out}", "tracking.mode=disabled"])
        trainer = Trainer(cfg, progress=False)
        start = time.perf_counter()
        result = trainer.run()
        return {"test": result.test, "valid": result.valid, "entropy_rate": trainer.corpus.entropy_rate,
                "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps on the Markov source")
    parser.add_argument("--stdlib-steps", type=int, default=600, help="training steps on stdlib (0 = skip)")
    parser.add_argument("--layers", type=int, default=8, help="K of the explicit unrolled:K baseline")
    parser.add_argument("--out", default="bench/results/quality.json")
    args = parser.parse_args()
    explicit = [f"solver.grad=unrolled:{args.layers}", "train.pretrain_steps=0"]
    results = {"markov": {}, "stdlib": {}, "layers": args.layers}
    base = [f"train.max_steps={args.steps}", "train.eval_every=0"]
    results["markov"]["deq"] = run("configs/markov.yaml", base)
    results["markov"]["explicit"] = run("configs/markov.yaml", base + explicit)
    if args.stdlib_steps:
        base = [f"train.max_steps={args.stdlib_steps}", "train.eval_every=0", "data.source=stdlib:max_bytes=2000000"]
        results["stdlib"]["deq"] = run("configs/default.yaml", base)
        results["stdlib"]["explicit"] = run("configs/default.yaml", base + explicit)

    rate = results["markov"]["deq"]["entropy_rate"]
    print(f"Markov order 2, vocab 16, {args.steps} steps; entropy rate {rate:.4f} nats/token")
    print(f"{'model':<22}{'test NLL':>10}{'minus entropy rate':>20}{'minutes':>9}")
    for name, label in (("deq", "DEQ (implicit)"), ("explicit", f"explicit unrolled:{args.layers}")):
        r = results["markov"][name]
        r["gap"] = r["test"]["nll"] - rate
        print(f"{label:<22}{r['test']['nll']:>10.4f}{r['gap']:>20.4f}{r['seconds'] / 60:>9.1f}")
    if args.stdlib_steps:
        print(f"\nstdlib sources, byte-level, {args.stdlib_steps} steps")
        print(f"{'model':<22}{'test bits/byte':>15}{'minutes':>9}")
        for name, label in (("deq", "DEQ (implicit)"), ("explicit", f"explicit unrolled:{args.layers}")):
            r = results["stdlib"][name]
            print(f"{label:<22}{r['test']['bits_per_byte']:>15.4f}{r['seconds'] / 60:>9.1f}")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
