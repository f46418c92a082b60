"""Real-valued sequences: how close a trained mixture-of-Gaussians DEQ gets to the Fourier source's noise bound.

The Fourier source adds iid Gaussian noise of known std to each series, so no predictor's expected NLL per step is
below the noise entropy 0.5*log(2*pi*e*noise^2). Early in a series the history does not yet pin down the clean
signal, so the gap is reported per position window. Two references are measured on the same test series: the
oracle that knows the clean signal (its NLL is the bound up to sampling error) and persistence (the previous value
with a Gaussian of the train residuals' std). Writes JSON.

    python bench/fourier.py [--checkpoint runs/fourier-mog/last.pt] [--train]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import write_json  # noqa: E402
from deqseq import continue_series, load_checkpoint, load_config, load_corpus, train  # noqa: E402

WINDOWS = ((0, 8), (8, 32), (32, 64))


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, std: float | torch.Tensor) -> torch.Tensor:
    """Per-element NLL in nats of x under N(mean, std^2)."""
    std = torch.as_tensor(std, dtype=x.dtype)
    return 0.5 * math.log(2 * math.pi) + torch.log(std) + 0.5 * ((x - mean) / std) ** 2


def by_window(nll: torch.Tensor) -> dict[str, float]:
    """Mean NLL (N, T) over all positions and over each window of predicted positions that fits."""
    out = {"all": nll.mean().item()}
    for a, b in WINDOWS:
        if a < nll.shape[1]:
            out[f"{a}-{min(b, nll.shape[1]) - 1}"] = nll[:, a:b].mean().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/fourier-mog/last.pt")
    parser.add_argument("--train", action="store_true", help="train configs/fourier-mog.yaml first")
    parser.add_argument("--samples", type=int, default=64, help="continuations per series for the forecast error")
    parser.add_argument("--series", type=int, default=20, help="test series continued for the forecast error")
    parser.add_argument("--out", default="bench/results/fourier.json")
    args = parser.parse_args()
    torch.set_num_threads(2)

    seconds = None
    if args.train:
        start = time.perf_counter()
        result = train(load_config("configs/fourier-mog.yaml"), progress=False)
        seconds = time.perf_counter() - start
        args.checkpoint = str(result.run_dir / "last.pt")
    elif not Path(args.checkpoint).exists():
        sys.exit(f"no checkpoint {args.checkpoint}: train one with python train.py --config configs/fourier-mog.yaml "
                 "(or pass --train)")
    with torch.no_grad():
        results = evaluate(args, load_checkpoint(args.checkpoint), seconds)
    write_json(args.out, results)


def evaluate(args: argparse.Namespace, loaded, seconds: float | None) -> dict:
    """NLL by position window for the model and the references, and forecast errors from half a window."""
    model, _, config = loaded
    data = load_corpus(config.data.spec)
    T = config.data.seq_len
    x, clean, cond = data.test[:, : T + 1], data.clean("test")[:, : T + 1], data.cond("test")

    out = model(x[:, :T], cond=cond)
    model_nll = model.head.nll(out.params, x[:, 1:])
    oracle_nll = gaussian_nll(x[:, 1:, 0], clean[:, 1:, 0], data.noise)
    train_x = data.train[:, : T + 1, 0]
    persistence_std = (train_x[:, 1:] - train_x[:, :-1]).std().item()
    persistence_nll = gaussian_nll(x[:, 1:, 0], x[:, :-1, 0], persistence_std)

    # Forecasts: half the window observed, the rest sampled; error of the sample mean against the clean signal.
    half = T // 2
    errors, coverage = [], []
    for i in range(min(args.series, len(x))):
        c = continue_series(model, x[i, :half], T + 1 - half, num_samples=args.samples, seed=i,
                            cond=None if cond is None else cond[i], mem_len=T - 1)
        truth = x[i, half:, 0]
        errors.append((c.mean[:, 0] - clean[i, half:, 0]) ** 2)
        coverage.append(((truth - c.mean[:, 0]).abs() <= 2 * c.std[:, 0]).float())
    rmse = torch.stack(errors).mean(0).sqrt()

    results = {
        "checkpoint": args.checkpoint,
        "source": config.data.spec,
        "train_seconds": seconds,
        "nll_bound": data.nll_bound,
        "test_series": len(x),
        "model_nll": by_window(model_nll),
        "oracle_nll": by_window(oracle_nll),
        "persistence_nll": by_window(persistence_nll),
        "model_gap_to_bound": {k: v - data.nll_bound for k, v in by_window(model_nll).items()},
        "forecast": {
            "observed": half,
            "samples": args.samples,
            "series": len(errors),
            "rmse_vs_clean_at_step": {str(h + 1): rmse[h].item() for h in (0, 3, 7, 15, len(rmse) - 1)},
            "noise_std": data.noise,
            "truth_within_2std": torch.stack(coverage).mean().item(),
        },
    }
    print(f"test NLL per step (nats): model {results['model_nll']}")
    print(f"  oracle {results['oracle_nll']}  persistence {results['persistence_nll']}")
    print(f"  noise bound {data.nll_bound:.4f}; model gap {results['model_gap_to_bound']}")
    print(f"forecast from {half} observed steps: {results['forecast']}")
    return results


if __name__ == "__main__":
    main()
