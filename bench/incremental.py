"""Incremental-solve benchmark: one new position against frozen history vs re-solving the prefix.

For prefix lengths T (default 64, 256, 1024) it times, per new token:
  (a) deqseq incremental: solve one position against the frozen history (the generation path);
  (b) naive: re-solve the whole prefix of T+1 positions;
  (c) an explicit K-layer weight-tied transformer with a per-layer KV cache, K = (a)'s mean solver
      iterations per token (about the same work per token as the DEQ).
Writes JSON and prints a table.

    python bench/incremental.py [--threads 2] [--lengths 64 256 1024] [--tokens 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_json  # noqa: E402
from deqseq import DEQSequenceModel, ModelConfig, SolverSettings  # noqa: E402
from solvers import SolverConfig  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def explicit_kv_layers(model: DEQSequenceModel, prefix: torch.Tensor, token: torch.Tensor, layers: int) -> float:
    """Seconds for one token through `layers` applications of the same cell, each layer with its own KV
    cache of the prefix (built beforehand, not timed): a standard cached K-layer decoder step."""
    cell = model.deq.cell
    emb = model.embed(prefix)
    caches, z = [], torch.zeros(prefix.shape[0], prefix.shape[1], cell.state_dim)
    for _ in range(layers):  # layer k's cache holds the keys/values of layer k's input states
        ctx = cell.prepare(emb)
        caches.append(cell.extend_history(ctx, z))
        z = cell(z, ctx)
    new = model.embed(token)

    def step():
        h = torch.zeros(new.shape[0], 1, cell.state_dim)
        for cache in caches:
            ctx = cell.prepare(new, cache)
            cell.extend_history(ctx, h)  # the cache append a decoder does per layer
            h = cell(h, ctx)
        return h

    step()
    return statistics.median(timed(step)[0] for _ in range(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--tokens", type=int, default=8, help="new tokens timed per length")
    parser.add_argument("--out", default="bench/results/incremental.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    solver = SolverSettings(forward=SolverConfig(method="anderson", max_iter=40, tol=1e-4), batch_dims=2)
    model = DEQSequenceModel(ModelConfig(cell="transformer", vocab_size=256, d_model=128, n_heads=4, d_ff=512),
                             solver).eval()
    rows = []
    with torch.no_grad():
        for length in args.lengths:
            ids = torch.randint(0, 256, (1, length + args.tokens))
            history = model(ids[:, :length]).history
            inc_times, inc_iters, naive_times = [], [], []
            for i in range(args.tokens):
                token = ids[:, length + i: length + i + 1]
                seconds, out = timed(lambda: model(token, history=history))  # noqa: B023
                inc_times.append(seconds)
                inc_iters.append(float(out.stats.nstep.float().mean()))
                history = out.history
                naive_times.append(timed(lambda: model(ids[:, : length + i + 1]))[0])  # noqa: B023
            layers = max(1, round(statistics.mean(inc_iters)))
            explicit = explicit_kv_layers(model, ids[:, :length], ids[:, length: length + 1], layers)
            row = {
                "prefix": length,
                "incremental_ms": 1e3 * statistics.median(inc_times),
                "naive_ms": 1e3 * statistics.median(naive_times),
                "explicit_kv_ms": 1e3 * explicit,
                "iters_per_token": statistics.mean(inc_iters),
                "explicit_layers": layers,
            }
            row["speedup_vs_naive"] = row["naive_ms"] / row["incremental_ms"]
            row["ratio_vs_explicit"] = row["incremental_ms"] / row["explicit_kv_ms"]
            rows.append(row)
    base = rows[0]["incremental_ms"]
    print(f"{'prefix T':>8}{'incremental ms':>16}{'naive ms':>10}{'speedup':>9}{'explicit KV ms':>16}"
          f"{'DEQ/explicit':>14}{'iters/token':>13}{'vs T=' + str(rows[0]['prefix']):>10}")
    for row in rows:
        print(f"{row['prefix']:>8}{row['incremental_ms']:>16.2f}{row['naive_ms']:>10.1f}{row['speedup_vs_naive']:>8.1f}x"
              f"{row['explicit_kv_ms']:>16.2f}{row['ratio_vs_explicit']:>14.2f}{row['iters_per_token']:>13.1f}"
              f"{row['incremental_ms'] / base:>9.2f}x")
    write_json(args.out, {"threads": args.threads, "torch": torch.__version__, "rows": rows})


if __name__ == "__main__":
    main()
