"""Evidence of a unique equilibrium: random starts and per-position contraction on held-out sequences.

Runs deqseq.check_equivalence as `generate.py --check-equivalence` does (its iteration budget, the re-solve at
tolerance / 100, random starts of the sequence solve at that tolerance) on a few held-out windows of the
checkpoint's data, prints the report and a per-position table (rho_t of the single-position map the token-by-token
solve iterates; |dz_t| = max over the batch of ||z_t - z_ref,t|| for the token, chunked and random-start solves),
says whether |dz_t| grows along the sequence, writes JSON and a plot. Without a checkpoint it uses a small random
model on random ids (nothing is trained).

    python bench/uniqueness.py [--checkpoint runs/default/last.pt] [--sequences 2] [--length 256] [--cost]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_json  # noqa: E402
from deqseq import (  # noqa: E402
    DEQSequenceModel,
    EquivalenceReport,
    ModelConfig,
    SolverSettings,
    check_equivalence,
    load_checkpoint,
    load_corpus,
)
from deqseq.cli import CHECK_STARTS, CHECK_TIGHTEN, check_as_cli  # noqa: E402
from solvers import SolverConfig  # noqa: E402


def held_out_ids(config, split: str, sequences: int, length: int) -> torch.Tensor:
    """`sequences` windows of `length` ids of a split of the checkpoint's corpus, at evenly spaced offsets."""
    from deqseq.data import Corpus

    data = load_corpus(config.data.spec, config.data.tokenizer)
    if not isinstance(data, Corpus):
        raise SystemExit(f"{config.data.spec!r} is not a token corpus; this benchmark checks token models")
    ids = data.split(split)
    if len(ids) < length:
        raise SystemExit(f"the {split} split has {len(ids)} ids, fewer than --length {length}")
    starts = torch.linspace(0, len(ids) - length, sequences).long().tolist()
    return torch.stack([ids[s : s + length] for s in starts])


def random_model(seed: int) -> DEQSequenceModel:
    """A small random transformer DEQ (nothing trained), with a solver that converges on it."""
    torch.manual_seed(seed)
    cfg = SolverConfig(method="anderson", max_iter=40, tol=1e-4)
    config = ModelConfig(cell="transformer", vocab_size=256, d_model=64, n_heads=4, d_ff=128)
    return DEQSequenceModel(config, SolverSettings(forward=cfg, backward=cfg)).eval()


def run_check(model: DEQSequenceModel, ids: torch.Tensor, **kwargs) -> tuple[EquivalenceReport, float]:
    """check_equivalence as `--check-equivalence` runs it (cli.check_as_cli); the report and its seconds."""
    start = time.perf_counter()
    report = check_as_cli(model, ids, check_equivalence, **kwargs)
    return report, time.perf_counter() - start


def rank_correlation(values: list[float]) -> float:
    """Spearman rank correlation of values with their index (ties broken by order)."""
    n = len(values)
    if n < 2:
        return math.nan
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[torch.tensor(values).argsort()] = torch.arange(n, dtype=torch.float64)
    index = torch.arange(n, dtype=torch.float64)
    return torch.corrcoef(torch.stack([index, ranks]))[0, 1].item()


def trend(dz: list[float]) -> dict[str, float]:
    """Whether |dz_t| grows along the sequence: medians of the first and last quarter, and the rank correlation."""
    quarter = max(1, len(dz) // 4)
    first, last = torch.tensor(dz[:quarter]).median().item(), torch.tensor(dz[-quarter:]).median().item()
    return {"median_first_quarter": first, "median_last_quarter": last,
            "last_over_first": last / first if first > 0 else math.inf, "rank_correlation": rank_correlation(dz)}


def position_table(report: EquivalenceReport, every: int) -> str:
    """rho_t and |dz_t| of each mode at every `every`-th position, plus the positions where each peaks."""
    dz = report.positions["dz"]
    rho = report.positions.get("rho")
    length = len(next(iter(dz.values())))
    shown = set(range(0, length, every)) | {length - 1}
    shown |= {max(range(length), key=values.__getitem__) for values in [*dz.values(), *([rho] if rho else [])]}
    header = ["t", *(["rho_t"] if rho else []), *(f"|dz_t| {name}" for name in dz)]
    rows = [[str(t), *([f"{rho[t]:.4f}"] if rho else []), *(f"{values[t]:.3e}" for values in dz.values())]
            for t in sorted(shown)]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in (header, *rows))


def plot_positions(report: EquivalenceReport, path: str | Path, title: str) -> None:
    """|dz_t| (log scale) of each mode and rho_t along the sequence, in two panels sharing the position axis."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the plot needs matplotlib: pip install matplotlib (or pass --no-plot)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dz, rho = report.positions["dz"], report.positions.get("rho")
    fig, axes = plt.subplots(2 if rho else 1, 1, figsize=(9, 6 if rho else 3.5), sharex=True, squeeze=False)
    top = axes[0, 0]
    for name, values in dz.items():
        top.semilogy(range(len(values)), [max(v, 1e-300) for v in values], label=name, lw=1)
    top.set_ylabel("|dz_t| vs sequence solve")
    top.legend(loc="best", fontsize=8)
    top.set_title(title, fontsize=9)
    if rho:
        bottom = axes[1, 0]
        bottom.plot(range(len(rho)), rho, lw=1, color="k", label="rho_t (single-position map)")
        bottom.axhline(report.reference["rho"], color="tab:red", ls="--", lw=1, label="whole-sequence estimate")
        bottom.set_ylabel("spectral radius")
        bottom.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("position t")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/default/last.pt",
                        help="a checkpoint; when it does not exist, a small random model on random ids")
    parser.add_argument("--sequences", type=int, default=2)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--split", choices=["valid", "test"], default="valid")
    parser.add_argument("--starts", type=int, default=CHECK_STARTS)
    parser.add_argument("--position-iters", type=int, default=None, help="Arnoldi steps per position (default "
                        "min(20, state_dim))")
    parser.add_argument("--cost", action="store_true",
                        help="also time the check without starts and without the per-position estimate")
    parser.add_argument("--every", type=int, default=16, help="table rows every this many positions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/uniqueness.json")
    parser.add_argument("--plot", default="docs/equivalence_positions.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if Path(args.checkpoint).exists():
        model, _, config = load_checkpoint(args.checkpoint)
        ids = held_out_ids(config, args.split, args.sequences, args.length)
        what = f"{args.checkpoint} ({config.data.spec}, {args.split} split)"
    else:
        print(f"no checkpoint at {args.checkpoint}: a random d_model=64 transformer on random ids")
        model = random_model(args.seed)
        ids = torch.randint(0, 256, (args.sequences, args.length), generator=torch.Generator().manual_seed(args.seed))
        what = "random model, random ids"
    window = model.resolve_window("auto")
    forward = model.settings.forward
    print(f"{what}: {ids.shape[0]} x {ids.shape[1]} tokens, window {window}, solver {forward.method} tol "
          f"{forward.tol:g} (and / {CHECK_TIGHTEN:g}), state_dim {model.deq.cell.state_dim}")

    report, seconds = run_check(model, ids, starts=args.starts, position_iters=args.position_iters, seed=args.seed)
    print(report)
    print(position_table(report, args.every))
    trends = {name: trend(values) for name, values in report.positions["dz"].items()}
    for name, tr in trends.items():
        print(f"|dz_t| {name}: median {tr['median_first_quarter']:.3e} over the first quarter, "
              f"{tr['median_last_quarter']:.3e} over the last ({tr['last_over_first']:.3g}x); rank correlation with "
              f"t {tr['rank_correlation']:+.2f}")
    print(f"check: {seconds:.1f} s")
    cost = {"full": seconds}
    if args.cost:
        def best_of_two(**kwargs) -> float:
            return min(run_check(model, ids, seed=args.seed, **kwargs)[1] for _ in range(2))

        base = best_of_two(starts=0, position_iters=0)
        cost.update(without_starts_and_positions=base,
                    positions=best_of_two(starts=0, position_iters=args.position_iters) - base,
                    starts=best_of_two(starts=args.starts, position_iters=0) - base)
        print(f"cost (best of two runs each): {base:.1f} s without starts and rho_t; rho_t adds "
              f"{cost['positions']:.1f} s, {args.starts} starts add {cost['starts']:.1f} s")
    if not args.no_plot:
        title = f"{what}: {ids.shape[0]} x {ids.shape[1]} tokens, window {window}"
        plot_positions(report, args.plot, title)
    write_json(args.out, {
        "what": what, "sequences": ids.shape[0], "length": ids.shape[1], "window": window,
        "solver": dataclasses.asdict(forward), "tighten": CHECK_TIGHTEN, "threads": args.threads,
        "torch": torch.__version__, "ok": report.ok, "failures": report.failures, "seconds": cost, "trend": trends,
        "report": dataclasses.asdict(report),
    })


if __name__ == "__main__":
    main()
