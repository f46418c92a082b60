"""Generation benchmark: tokens/s of cached DEQ decoding against re-solving the prefix and an explicit decoder.

For total lengths L (prompt + generated, default 64, 256, 1024), greedy decoding of the last G tokens with
  (a) deqseq cached decoding: `deqseq.stream`, one single-position solve per token against frozen history;
  (b) naive: re-solve the whole prefix for every new token (what a DEQ without a history cache must do);
  (c) an explicit weight-tied transformer of the same cell and width with K layers and a static per-layer KV
      cache, injection and rotary tables computed once per token (a lean cached decoder step). K is the DEQ's
      mean number of cell evaluations per token (solver iterations + 1: the solver evaluates f at its start
      point too), so (a) and (c) apply the cell equally often; the table also gives (c) at K = iterations.
  (a') (a) with fused solver iterations (`stream(..., fused=True)`: each iteration's bookkeeping one compiled
      graph, compiled before timing).
(a), (a') and (b) must emit the same tokens; the benchmark reports mismatches. Writes JSON and prints a table.

    python bench/generation.py [--threads 2] [--lengths 64 256 1024] [--new 16] [--rounds 5]
                               [--checkpoint RUN/last.pt [--tol TOL]] [--device cpu|cuda]

Per-token times are wall times between consecutive tokens, with the device synchronised before each reading;
cached and explicit decoding run in interleaved rounds and their ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import sync, write_json  # noqa: E402
from deqseq import DEQSequenceModel, ModelConfig, SolverSettings, load_checkpoint, stream  # noqa: E402
from deqseq.cells import TransformerHistory  # noqa: E402
from solvers import SolverConfig  # noqa: E402


def cached_decode(model: DEQSequenceModel, prompt: torch.Tensor, new: int,
                  fused: bool = False) -> tuple[list, list[float]]:
    """deqseq.stream's greedy steps and the per-token seconds between consecutive steps (the first entry is
    the prompt's prefill plus the first token). Every position attends to the whole prefix (mem_len="all"), as
    in the naive and explicit decoders, so the three compute the same function (a trained model's default
    window, its training length, would make the cached decoder attend to less than the other two). fused: the
    per-token solves run with fused, compiled solver iterations (stream's fused=True)."""
    steps, seconds = [], []
    sync(prompt.device)
    start = time.perf_counter()
    for step in stream(model, prompt, new, temperature=0, mem_len="all", fused=fused):
        sync(prompt.device)
        now = time.perf_counter()
        steps.append(step)
        seconds.append(now - start)
        start = now
    return steps, seconds


def naive_decode(model: DEQSequenceModel, prompt: torch.Tensor, new: int) -> tuple[torch.Tensor, list[float]]:
    """Greedy tokens and per-token seconds, re-solving every prefix from scratch (whole prefix attended)."""
    ids, seconds = prompt, []
    for _ in range(new):
        start = time.perf_counter()
        token = model(ids).logits[:, -1].argmax(-1, keepdim=True)
        sync(ids.device)
        seconds.append(time.perf_counter() - start)
        ids = torch.cat([ids, token], dim=1)
    return ids[:, prompt.shape[1]:], seconds


def explicit_decode(model: DEQSequenceModel, prompt: torch.Tensor, new: int, layers: int) -> list[float]:
    """Per-token seconds of a K-layer weight-tied decoder with a static (preallocated) KV cache per layer: per
    token, injection and rotary tables are computed once and each layer writes its new key/value row in place,
    with no copy of the cache (the prompt's prefill is not timed)."""
    cell = model.deq.cell
    B, P = prompt.shape
    capacity = P + new
    shape = (B, cell.n_heads, capacity, cell.head_dim)
    device = prompt.device
    caches = [(torch.zeros(shape, device=device), torch.zeros(shape, device=device)) for _ in range(layers)]
    z = torch.zeros(B, P, cell.state_dim, device=device)
    ctx = cell.prepare(model.embed(prompt))
    for k_buf, v_buf in caches:  # layer k's cache holds the keys/values of layer k's input states
        frozen = cell.extend_history(ctx, z)
        k_buf[:, :, :P], v_buf[:, :, :P] = frozen.k, frozen.v
        z = cell(z, ctx)
    token = model.head(cell.readout(z[:, -1:])).argmax(-1)
    seconds = []
    for i in range(new):
        start = time.perf_counter()
        length = P + i  # cached positions
        x = model.embed(token)
        h = torch.zeros(B, 1, cell.state_dim, device=device)
        shared = None
        for k_buf, v_buf in caches:
            history = TransformerHistory(offset=length, k=k_buf[:, :, :length], v=v_buf[:, :, :length])
            if shared is None:  # the same for every layer of a weight-tied stack
                shared = cell.prepare(x, TransformerHistory(offset=length, k=k_buf[:, :, :0], v=v_buf[:, :, :0]))
            # Attention reads the cache's first length+1 rows; the forward writes row `length` (this layer's
            # key and value of h): that write is the cache append.
            ctx = replace(shared, history=history, kv_buffer=(k_buf[:, :, : length + 1], v_buf[:, :, : length + 1]))
            h = cell(h, ctx)
        token = model.head(cell.readout(h)).argmax(-1)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def build_model(checkpoint: str | None, tol: float | None = None) -> tuple[DEQSequenceModel, str]:
    """The benchmarked model: a trained checkpoint (with its own solver, or Anderson to `tol`), or a random
    d_model=128 transformer."""
    if checkpoint:
        model, _, _ = load_checkpoint(checkpoint)
        if tol is None:
            fwd = model.deq.settings.forward
            return model, f"{checkpoint}, its own solver ({fwd.method} tol {fwd.tol:g}, {fwd.max_iter} iters)"
        model.deq.settings = replace(model.deq.settings, forward=SolverConfig(method="anderson", max_iter=40, tol=tol))
        return model, f"{checkpoint}, anderson tol {tol:g}"
    torch.manual_seed(0)
    solver = SolverSettings(forward=SolverConfig(method="anderson", max_iter=40, tol=1e-4), batch_dims=2)
    cfg = ModelConfig(cell="transformer", vocab_size=256, d_model=128, n_heads=4, d_ff=512)
    return DEQSequenceModel(cfg, solver).eval(), "random d_model=128 n_heads=4 d_ff=512, anderson tol 1e-4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--new", type=int, default=16, help="generated (timed) tokens per length")
    parser.add_argument("--checkpoint", default=None, help="benchmark a trained model instead of a random one")
    parser.add_argument("--tol", type=float, default=None,
                        help="with --checkpoint: solve with Anderson to this tolerance instead of the model's own "
                             "solver (a loose training tolerance lets cached and naive decoding part at near-ties)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of cached and explicit decoding")
    parser.add_argument("--out", default="bench/results/generation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, described = build_model(args.checkpoint, args.tol)
    model = model.to(device)
    vocab = model.config.vocab_size
    rows = []
    with torch.no_grad():
        for length in args.lengths:
            prompt = torch.randint(0, vocab, (1, length - args.new), generator=torch.Generator().manual_seed(length))
            prompt = prompt.to(device)
            list(stream(model, prompt[:, :8], 4, temperature=0, mem_len="all"))  # warm-up
            list(stream(model, prompt[:, :8], 4, temperature=0, mem_len="all", fused=True))  # and compile
            steps, seconds = cached_decode(model, prompt, args.new)
            cached_ids = torch.stack([s.ids for s in steps], dim=1)
            fused_steps, fused_seconds = cached_decode(model, prompt, args.new, fused=True)
            fused_ids = torch.stack([s.ids for s in fused_steps], dim=1)
            iters = statistics.mean(s.iterations.float().mean().item() for s in steps[1:])
            naive_ids, naive = naive_decode(model, prompt, args.new)
            evals = max(1, round(iters + 1))
            # Rounds of cached and explicit decoding, interleaved: this VM's speed drifts by 2x over seconds, and
            # a ratio of runs far apart in time measures the drift. Per round: each decoder's median per token.
            cached, fused, explicit, explicit_k = [], [], [], []
            for r in range(args.rounds):
                if r:
                    seconds = cached_decode(model, prompt, args.new)[1]
                    fused_seconds = cached_decode(model, prompt, args.new, fused=True)[1]
                cached.append(statistics.median(seconds[1:]))  # seconds[0] is the prompt's prefill
                fused.append(statistics.median(fused_seconds[1:]))
                explicit.append(statistics.median(explicit_decode(model, prompt, args.new, evals)[1:]))
                explicit_k.append(statistics.median(explicit_decode(model, prompt, args.new, max(1, round(iters)))[1:]))
            ratios = [c / e for c, e in zip(cached, explicit, strict=True)]
            fused_ratios = [c / e for c, e in zip(fused, explicit, strict=True)]
            row = {
                "length": length,
                "prompt": length - args.new,
                "cached_tok_s": 1 / statistics.median(cached),
                "fused_tok_s": 1 / statistics.median(fused),
                "naive_tok_s": 1 / statistics.median(naive[1:]),
                "explicit_tok_s": 1 / statistics.median(explicit),
                "explicit_iters_tok_s": 1 / statistics.median(explicit_k),
                "iters_per_token": iters,
                "explicit_layers": evals,
                "token_mismatches_vs_naive": int((cached_ids != naive_ids).sum()),
                "fused_token_mismatches_vs_naive": int((fused_ids != naive_ids).sum()),
                "fused_iters_per_token": statistics.mean(s.iterations.float().mean().item() for s in fused_steps[1:]),
                "rounds": args.rounds,
                "explicit_over_cached_per_round": ratios,
                "explicit_over_fused_per_round": fused_ratios,
            }
            row["speedup_vs_naive"] = row["cached_tok_s"] / row["naive_tok_s"]
            row["explicit_over_cached"] = statistics.median(ratios)
            row["explicit_over_fused"] = statistics.median(fused_ratios)
            row["explicit_iters_over_cached"] = statistics.median(
                c / e for c, e in zip(cached, explicit_k, strict=True))
            rows.append(row)
    print(f"model: {described}, {device}, {args.threads} threads, greedy; per decoder the median over {args.new - 1}"
          f" tokens of each of {args.rounds} interleaved rounds; ratios are medians of the per-round ratios")
    print(f"{'L':>6}{'cached tok/s':>14}{'naive tok/s':>13}{'speedup':>9}{'explicit tok/s':>16}{'K':>3}"
          f"{'slowdown':>10}{'K=iters':>9}{'iters/tok':>11}{'mismatch':>10}{'fused tok/s':>13}{'slowdown':>10}"
          f"{'mismatch':>10}")
    for r in rows:
        print(f"{r['length']:>6}{r['cached_tok_s']:>14.1f}{r['naive_tok_s']:>13.2f}{r['speedup_vs_naive']:>8.1f}x"
              f"{r['explicit_tok_s']:>16.1f}{r['explicit_layers']:>3}{r['explicit_over_cached']:>9.2f}x"
              f"{r['explicit_iters_over_cached']:>8.2f}x{r['iters_per_token']:>11.2f}{r['token_mismatches_vs_naive']:>10}"
              f"{r['fused_tok_s']:>13.1f}{r['explicit_over_fused']:>9.2f}x{r['fused_token_mismatches_vs_naive']:>10}")
    write_json(args.out, {"threads": args.threads, "device": str(device), "torch": torch.__version__,
                          "model": described, "rows": rows})


if __name__ == "__main__":
    main()
