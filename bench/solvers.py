"""Solver benchmark: deqseq's solvers vs torchdeq 0.1.0 on the same f, tol and thread count.

For each problem and method: evaluations and wall time to reach rel 1e-4 and 1e-6 (a fresh solve per
tolerance, median of --repeats), the final residual, and the share of wall time spent outside f. On the
attention problem also our methods with fused iterations (SolverConfig(fused=True), "<method>+fused").

    python bench/solvers.py [--threads 2] [--repeats 5] [--device cpu|cuda] [--out bench/results/solvers.json]

On CUDA, f's time is read after a synchronisation (TimedF) and so is each solve's wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.problems import attention_problem, tanh_map  # noqa: E402
from bench.report import sync, write_json  # noqa: E402
from solvers import SolverConfig, solve, spectral_radius  # noqa: E402

OURS = ("broyden", "anderson", "picard")
PEER = ("broyden", "anderson", "fixed_point_iter")
TOLS = (1e-4, 1e-6)
MAX_ITER = 100


class TimedF:
    """Wraps f to count calls and the wall time spent inside it."""

    def __init__(self, f):
        self.f, self.calls, self.seconds = f, 0, 0.0

    def __call__(self, z):
        start = time.perf_counter()
        out = self.f(z)
        sync(out.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def run_ours(f, z0, method, tol):
    """Our solve; "<method>+fused" runs it with fused iterations (compiled on the first call, untimed)."""
    name, _, fused = method.partition("+")
    cfg = SolverConfig(method=name, max_iter=MAX_ITER, tol=tol, fused=bool(fused))
    if fused:
        solve(f, z0, cfg)  # compiles once per shape and config (cached afterwards)
    timed = TimedF(f)
    sync(z0.device)
    start = time.perf_counter()
    z, stats = solve(timed, z0, cfg)
    sync(z.device)
    wall = time.perf_counter() - start
    return z, timed, wall, bool(stats.converged.all())


def run_peer(f, z0, method, tol):
    """The peer's solver called directly (no adapter), with its own defaults besides max_iter/tol/stop."""
    from torchdeq.solver import get_solver

    timed = TimedF(f)
    sync(z0.device)
    start = time.perf_counter()
    z, _, _ = get_solver(method)(timed, z0, max_iter=MAX_ITER, tol=tol, stop_mode="rel")
    sync(z.device)
    wall = time.perf_counter() - start
    return z.view_as(z0), timed, wall, None


def rel_residual(f, z):
    with torch.no_grad():
        fz = f(z)
        b = z.shape[0]
        return float(((fz - z).reshape(b, -1).norm(dim=1) / (fz.reshape(b, -1).norm(dim=1) + 1e-9)).max())


def measure(f, z0, label, runner, method, repeats):
    row = {"method": label}
    for tol in TOLS:
        walls, outside, result = [], [], None
        for _ in range(repeats):
            z, timed, wall, converged = runner(f, z0, method, tol)
            walls.append(wall)
            outside.append(1.0 - timed.seconds / wall)
            result = (z, timed, converged)
        z, timed, converged = result
        residual = rel_residual(f, z)
        key = f"{tol:.0e}"
        row[key] = {
            "nfe": timed.calls,
            "wall_ms": 1e3 * statistics.median(walls),
            "outside_f": statistics.median(outside),
            "final_rel": residual,
            "reached": residual < tol,
        }
    return row


def problems(device: torch.device):
    """(name, f, z0) of each benchmarked problem, on `device`."""
    for radius in (0.3, 0.95):
        f, z0, tensors = tanh_map(systems=16, size=256, radius=radius, dtype=torch.float32, input_scale=0.1,
                                  spectrum="symmetric")
        tensors.update({name: t.to(device) for name, t in tensors.items()})  # f reads this dict
        yield f"tanh map, 16 systems x 256, W radius {radius}", f, z0.to(device)
    _, z0, cell, u = attention_problem(batch=8, length=64, d_model=128, n_heads=4, gain=2.0)
    cell, u = cell.to(device), u.to(device)
    yield "attention+LN B8 T64 D128", (lambda z: cell(z, u)), z0.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--peer", choices=["yes", "no", "auto"], default="auto",
                        help="compare with torchdeq (auto: when it is installed)")
    parser.add_argument("--out", default="bench/results/solvers.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peer = args.peer == "yes" or (args.peer == "auto" and importlib.util.find_spec("torchdeq") is not None)

    results = {"torch": torch.__version__, "threads": args.threads, "device": str(device), "peer": peer,
               "max_iter": MAX_ITER,
               "machine": platform.processor() or platform.machine(), "problems": []}
    for name, f, z0 in problems(device):
        with torch.no_grad():
            z_ref, _ = solve(f, z0, SolverConfig(method="anderson", max_iter=500, tol=1e-6))
            radius = float(spectral_radius(f, z_ref, iters=40).max())
        rows = [measure(f, z0, m, run_ours, m, args.repeats) for m in OURS]
        if name.startswith("attention"):  # fused iterations at a training size (they are meant for small ones)
            rows += [measure(f, z0, m + "+fused", run_ours, m + "+fused", args.repeats) for m in OURS]
        if peer:
            rows += [measure(f, z0, "torchdeq:" + m, run_peer, m, args.repeats) for m in PEER]
        results["problems"].append({"problem": name, "jacobian_spectral_radius": radius, "rows": rows})
        print(f"\n{name}   (spectral radius of df/dz at z*: {radius:.3f})")
        print(f"{'method':<26}{'nfe@1e-4':>9}{'ms@1e-4':>9}{'nfe@1e-6':>9}{'ms@1e-6':>9}"
              f"{'final rel@1e-6':>15}{'outside f':>10}")
        for row in rows:
            a, b = row["1e-04"], row["1e-06"]
            flag = "" if b["reached"] else "  (not reached)"
            print(f"{row['method']:<26}{a['nfe']:>9}{a['wall_ms']:>9.1f}{b['nfe']:>9}{b['wall_ms']:>9.1f}"
                  f"{b['final_rel']:>15.1e}{b['outside_f']:>9.0%}{flag}")
    attention = results["problems"][-1]["rows"]
    by = {row["method"]: row for row in attention}

    def best(names):
        reached = [by[n]["1e-04"]["wall_ms"] for n in names if by[n]["1e-04"]["reached"]]
        return min(reached) if reached else float("inf")

    targets = {
        "broyden_outside_f_1e-4": by["broyden"]["1e-04"]["outside_f"],
        "anderson_outside_f_1e-4": by["anderson"]["1e-04"]["outside_f"],
        "anderson_nfe_1e-4": by["anderson"]["1e-04"]["nfe"],
        "fused_over_eager_wall_1e-4": {m: by[m + "+fused"]["1e-04"]["wall_ms"] / by[m]["1e-04"]["wall_ms"]
                                       for m in OURS},
    }
    if peer:
        targets.update({
            "best_ours_over_best_peer_wall_1e-4": best(OURS) / best(["torchdeq:" + m for m in PEER]),
            "peer_broyden_outside_f_1e-4": by["torchdeq:broyden"]["1e-04"]["outside_f"],
            "peer_anderson_nfe_1e-4": by["torchdeq:anderson"]["1e-04"]["nfe"],
        })
    results["targets_attention"] = targets
    print("\nTargets on the attention cell (1e-4):")
    print(f"  time outside f: Broyden {targets['broyden_outside_f_1e-4']:.0%}, Anderson "
          f"{targets['anderson_outside_f_1e-4']:.0%}  (target <= 20%)")
    print("  fused / eager wall time: " + ", ".join(f"{m} {r:.2f}" for m, r in
                                                     targets["fused_over_eager_wall_1e-4"].items()))
    if peer:
        ratio = targets["best_ours_over_best_peer_wall_1e-4"]
        print(f"  best ours / best torchdeq wall time: {ratio:.2f}  (target < 1; torchdeq Broyden outside f: "
              f"{targets['peer_broyden_outside_f_1e-4']:.0%})")
        print(f"  Anderson nfe: ours {targets['anderson_nfe_1e-4']}, torchdeq {targets['peer_anderson_nfe_1e-4']}")
    else:
        print("  (torchdeq not installed: no peer comparison)")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
