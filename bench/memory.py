"""Training-step activation memory: implicit gradients at forward max_iter 5 and 30 vs unrolled:30.

Memory is measured as the bytes of the tensors autograd saves for backward during one training step's
forward (counted once per storage, through torch.autograd.graph.saved_tensors_hooks), and on CUDA also as
torch.cuda.max_memory_allocated. Writes JSON and prints a table.

    python bench/memory.py [--d-model 128] [--batch 16] [--seq-len 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_json  # noqa: E402
from deqseq import DEQSequenceModel, ModelConfig, SolverSettings  # noqa: E402
from solvers import SolverConfig  # noqa: E402


def saved_bytes(model: DEQSequenceModel, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(bytes saved for backward by one loss forward, forward function evaluations), then runs backward."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, metrics = model.loss(batch)
    loss.backward()
    return sum(storages.values()), int(metrics["fwd_nfe"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", default="bench/results/memory.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.batch, args.seq_len), device=device)
    rows = []
    # tol far below reach, so every solve runs exactly max_iter iterations
    for label, grad, max_iter in (("implicit, max_iter 5", "implicit", 5), ("implicit, max_iter 30", "implicit", 30),
                                  ("unrolled:30", "unrolled:30", 30)):
        settings = SolverSettings(forward=SolverConfig(method="anderson", max_iter=max_iter, tol=1e-30),
                                  backward=SolverConfig(method="anderson", max_iter=30, tol=1e-6), grad=grad)
        torch.manual_seed(0)
        model = DEQSequenceModel(ModelConfig(d_model=args.d_model, n_heads=4, d_ff=4 * args.d_model),
                                 settings).to(device)
        nbytes, nfe = saved_bytes(model, {"x": x})
        row = {"mode": label, "saved_mib": nbytes / 2**20, "forward_nfe": nfe}
        if device.type == "cuda":
            row["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
    by = {r["mode"]: r["saved_mib"] for r in rows}
    ratios = {"implicit30_over_implicit5": by["implicit, max_iter 30"] / by["implicit, max_iter 5"],
              "unrolled30_over_implicit30": by["unrolled:30"] / by["implicit, max_iter 30"]}
    print(f"{'mode':<24}{'saved for backward MiB':>24}{'forward nfe':>13}")
    for r in rows:
        print(f"{r['mode']:<24}{r['saved_mib']:>24.2f}{r['forward_nfe']:>13}")
    print(f"implicit 30 / implicit 5: {ratios['implicit30_over_implicit5']:.3f}  (target <= 1.1)")
    print(f"unrolled:30 / implicit 30: {ratios['unrolled30_over_implicit30']:.1f}x  (target >= 5)")
    write_json(args.out, {"device": str(device), "rows": rows, "ratios": ratios,
                          "shape": [args.batch, args.seq_len, args.d_model]})


if __name__ == "__main__":
    main()
