"""Time to quality: valid NLL against wall-clock seconds for DEQ recipes and the explicit models a user would pick.

Every model trains on the same data, tokenizer and batches for the same wall-clock budget, with the same
optimiser settings (the task config's AdamW, warmup steps, gradient clip) and a cosine learning-rate decay
driven by the fraction of the budget used, so each model's schedule ends when its time does. At fixed wall-time
marks the clock stops and the model is evaluated on the same held-out positions (the first --eval-tokens of the
valid split, solved in segments of the training length, no history carried). Models:

  deq        the task config as it is (configs/default.yaml, configs/markov.yaml): the default DEQ recipe
  tiedK      the explicit weight-tied network of the same cell: solver.grad=unrolled:K, no pretraining, no
             Jacobian penalty (K plain applications of the cell from z0 = 0, backprop through all of them)
  gptK       an untied K-layer pre-LN GPT of the same width (bench/gpt.py, d_ff = 4 d_model)
  levers     DEQ variants, one lever at a time (see LEVERS); --recipe NAME "OVERRIDES" adds your own

Reported per task: the curves, each model's final NLL and steps, time to the best explicit model's final NLL
(and for the Markov source, time to within --markov-gap nats of the entropy rate) and its ratio to the explicit
model's, plus the step cost of each DEQ recipe against an explicit weight-tied step with as many cell
evaluations (forward evaluations + adjoint vector-Jacobian products). Writes JSON and, with matplotlib, a PNG.
With --budget-steps N every model trains for N optimizer steps instead (marks and learning-rate decay in steps):
quality per step, to tell a recipe's per-step quality from its step cost.

    python bench/time_to_quality.py [--task stdlib markov] [--budget-s 240] [--models deq tied4 gpt4 ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpt import GPT  # noqa: E402
from bench.report import write_json  # noqa: E402
from deqseq import Trainer, load_config  # noqa: E402
from deqseq.data import StreamBatcher  # noqa: E402
from deqseq.training import lr_factor  # noqa: E402

TASKS = {"stdlib": "configs/default.yaml", "markov": "configs/markov.yaml"}
EXPLICIT = ["train.pretrain_steps=0", "solver.jac_weight=0"]


def tied(k: int) -> list[str]:
    """Overrides that turn the task's DEQ into the explicit weight-tied network of K layers."""
    return [f"solver.grad=unrolled:{k}", *EXPLICIT]


# The recipe before this benchmark existed, per task: full solves (Anderson to 1e-3 in up to 30 iterations, adjoint
# to 1e-4 in up to 30), and on stdlib the Jacobian penalty at weight 2 on 35% of the steps.
OLD_SOLVES = ["solver.forward.max_iter=30", "solver.forward.tol=1e-3", "solver.backward.method=anderson",
              "solver.backward.max_iter=30", "solver.backward.tol=1e-4"]
OLD_RECIPE = {"stdlib": [*OLD_SOLVES, "solver.jac_prob=0.35"], "markov": [*OLD_SOLVES, "solver.jac_weight=0"]}
SHORT_FORWARD = ["solver.forward.max_iter=8", "solver.forward.tol=5e-2"]
# DEQ variants, one lever at a time: (label, overrides on top of the task config, whether they start from the old
# recipe). The ladder old -> short forward -> short backward -> rare penalty ends at today's default.
LEVERS: dict[str, tuple[str, list[str], bool]] = {
    "deq-old": ("the recipe before: full forward and adjoint solves", [], True),
    "lever-fwd": ("old + forward stops at 5e-2 or 8 iterations", SHORT_FORWARD, True),
    "lever-bwd": ("old + short forward + 2 Picard adjoint steps",
                  [*SHORT_FORWARD, "solver.backward.method=picard",
                   "solver.backward.max_iter=2", "solver.backward.tol=1e-2"], True),
    "deq-jfb": ("default with Jacobian-free backprop (phantom:1)", ["solver.grad=phantom:1"], False),
    "deq-nojac": ("default without the Jacobian penalty", ["solver.jac_weight=0"], False),
    "deq-nopre": ("default without pretraining", ["train.pretrain_steps=0"], False),
    "deq-exact": ("full solves, no Jacobian penalty", [*OLD_SOLVES, "solver.jac_weight=0"], False),
}


@dataclass
class Curve:
    """One model's run: the wall-time marks with their valid NLL, and per-step costs."""

    name: str
    label: str
    params: int
    points: list[dict] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)
    fwd_nfe: list[float] = field(default_factory=list)
    bwd_nfe: list[float] = field(default_factory=list)
    not_converged: list[float] = field(default_factory=list)
    eval_nfe: float | None = None
    eval_not_converged: float | None = None

    def summary(self) -> dict:
        """The JSON record of the run."""
        last = self.points[-1]
        return {
            "label": self.label, "params": self.params, "points": self.points, "final_nll": last["nll"],
            "steps": last["step"], "seconds": last["seconds"],
            "step_ms_median": statistics.median(self.step_ms), "step_ms_mean": statistics.fmean(self.step_ms),
            "fwd_nfe_mean": statistics.fmean(self.fwd_nfe) if self.fwd_nfe else None,
            "bwd_nfe_mean": statistics.fmean(self.bwd_nfe) if self.bwd_nfe else None,
            "eval_fwd_nfe_mean": self.eval_nfe,
            # share of forward solves that stopped at max_iter above tol (training steps after pretraining; eval)
            "fwd_not_converged": statistics.fmean(self.not_converged) if self.not_converged else None,
            "eval_fwd_not_converged": self.eval_not_converged,
        }


class BudgetClock:
    """Training seconds and steps used so far (evaluation excluded) and the fraction of the budget they are: a
    budget of seconds (time to quality) or, with `steps=True`, of optimizer steps (quality per step)."""

    def __init__(self, budget: float, steps: bool = False) -> None:
        self.budget, self.in_steps = budget, steps
        self.seconds, self.steps = 0.0, 0

    @property
    def used(self) -> float:
        """What the budget counts: steps or seconds."""
        return self.steps if self.in_steps else self.seconds

    @property
    def fraction(self) -> float:
        """Share of the budget used, in [0, 1]."""
        return min(1.0, self.used / self.budget)


def budget_schedule(clock: BudgetClock, warmup: int, floor: float) -> Callable[[int], float]:
    """LR factor: linear warmup over `warmup` steps times a cosine decay to `floor` over the budget."""
    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return ramp * lr_factor(warmup + int(1e6 * clock.fraction), warmup, warmup + 10**6, floor)
    return factor


def eval_segments(valid: torch.Tensor, tokens: int, batch: int, seq_len: int) -> list[dict]:
    """The held-out positions every model is scored on: the first `tokens` valid ids as (batch, seq_len) segments."""
    return list(StreamBatcher(valid[: tokens + 1], batch, seq_len))


@torch.no_grad()
def mean_nll(logits_of: Callable[[torch.Tensor], torch.Tensor], segments: list[dict]) -> float:
    """Mean next-token NLL (nats) over the segments."""
    total, count = 0.0, 0
    for seg in segments:
        logits = logits_of(seg["x"])
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), seg["t"].reshape(-1),
                                       reduction="sum"))
        count += seg["t"].numel()
    return total / count


def train_for_budget(curve: Curve, step: Callable[[], dict], evaluate: Callable[[], float], clock: BudgetClock,
                     marks: list[float]) -> None:
    """Run `step` until the clock reaches the budget, evaluating (clock stopped) as each mark is passed."""
    pending = list(marks)
    while pending:
        start = time.perf_counter()
        metrics = step()
        seconds = time.perf_counter() - start
        clock.seconds += seconds
        if metrics is None:  # a skipped non-finite step still costs its time
            continue
        clock.steps += 1
        curve.step_ms.append(1000 * seconds)
        if "fwd_nfe" in metrics:
            curve.fwd_nfe.append(metrics["fwd_nfe"])
            curve.bwd_nfe.append(metrics.get("bwd_nfe", 0.0))
            if "bwd_nfe" in metrics or not metrics.get("pretraining", 1.0):
                curve.not_converged.append(metrics["fwd_not_converged"])
        while pending and clock.used >= pending[0]:
            pending.pop(0)
            nll = evaluate()
            curve.points.append({"seconds": round(clock.seconds, 3), "step": clock.steps, "nll": nll})
            print(f"    {curve.name:<18} {clock.seconds:7.1f} s  step {clock.steps:6d}  valid NLL {nll:.4f}",
                  flush=True)


def run_deqseq(name: str, label: str, config: str, overrides: list[str], segments: list[dict], clock: BudgetClock,
               marks: list[float]) -> Curve:
    """Train the deqseq model of config + overrides with the library's own training step for the budget."""
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(config, [*overrides, f"run.out_dir={out}", "tracking.mode=disabled", "train.save_every=0",
                                   f"run.threads={torch.get_num_threads()}"])
        trainer = Trainer(cfg, progress=False)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
            trainer.optimizer, budget_schedule(clock, cfg.train.warmup_steps, cfg.train.min_lr_ratio))
        model, batches = trainer.model, trainer.batcher.cycle()
        curve = Curve(name, label, sum(p.numel() for p in model.parameters()))
        eval_nfe: list[float] = []
        eval_unconverged: list[float] = []

        def logits_of(x: torch.Tensor) -> torch.Tensor:
            out = model(x)
            eval_nfe.append(out.stats.nfe)
            eval_unconverged.append(1.0 - out.stats.converged.float().mean().item())
            return out.logits

        def evaluate() -> float:
            model.eval()
            try:
                return mean_nll(logits_of, segments)
            finally:
                model.train()

        def step() -> dict | None:
            metrics = trainer.train_step(next(batches))
            if metrics is not None:
                trainer.step += 1  # as Trainer.run counts steps: the pretraining switch reads it
            return metrics

        train_for_budget(curve, step, evaluate, clock, marks)
        curve.eval_nfe = statistics.fmean(eval_nfe)
        curve.eval_not_converged = statistics.fmean(eval_unconverged[-len(segments):])  # at the last mark
        return curve


def run_gpt(name: str, label: str, config: str, layers: int, segments: list[dict], clock: BudgetClock,
            marks: list[float]) -> Curve:
    """Train the untied GPT baseline on the task's batches with the task config's optimiser settings."""
    cfg = load_config(config)
    torch.manual_seed(cfg.run.seed)
    with tempfile.TemporaryDirectory() as out:  # the Trainer only lends its data pipeline here
        trainer = Trainer(load_config(config, [f"run.out_dir={out}", "tracking.mode=disabled",
                                               f"run.threads={torch.get_num_threads()}"]), progress=False)
    corpus, d, t, m = trainer.corpus, cfg.data, cfg.train, cfg.model
    model = GPT(corpus.tokenizer.vocab_size, m.d_model, layers, m.n_heads, 4 * m.d_model, d.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, budget_schedule(clock, t.warmup_steps, t.min_lr_ratio))
    batches = StreamBatcher(corpus.train, d.batch_size, d.seq_len).cycle()

    def step() -> dict:
        batch = next(batches)
        opt.zero_grad(set_to_none=True)
        loss = model.loss(batch["x"], batch["t"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or math.inf)
        opt.step()
        sched.step()
        return {"loss": loss.item()}

    def evaluate() -> float:
        model.eval()
        try:
            return mean_nll(model, segments)
        finally:
            model.train()

    curve = Curve(name, label, sum(p.numel() for p in model.parameters()))
    train_for_budget(curve, step, evaluate, clock, marks)
    return curve


def time_to(points: list[dict], target: float, axis: str = "seconds") -> float | None:
    """Seconds (or with axis="step", steps) at which the curve first reaches `target` (linear between marks), None
    if it never does."""
    prev = None
    for p in points:
        if p["nll"] <= target:
            if prev is None or prev["nll"] == p["nll"]:
                return p[axis]
            w = (prev["nll"] - target) / (prev["nll"] - p["nll"])
            return prev[axis] + w * (p[axis] - prev[axis])
        prev = p
    return None


def step_cost(config: str, recipe_nfe: dict[str, float], ks: tuple[int, ...] = (2, 4, 8, 16), steps: int = 25) -> dict:
    """Explicit weight-tied step time as a line a + b K over K cell evaluations, and each DEQ recipe's evaluations."""
    times = {}
    with tempfile.TemporaryDirectory() as out:
        for k in ks:
            cfg = load_config(config, [*tied(k), f"run.out_dir={out}/{k}", "tracking.mode=disabled",
                                       f"run.threads={torch.get_num_threads()}"])
            trainer = Trainer(cfg, progress=False)
            batches = trainer.batcher.cycle()
            ms = []
            for i in range(steps + 3):
                start = time.perf_counter()
                trainer.train_step(next(batches))
                if i >= 3:
                    ms.append(1000 * (time.perf_counter() - start))
            times[k] = statistics.median(ms)
    kk = list(times)
    mk, mt = statistics.fmean(kk), statistics.fmean(times.values())
    slope = sum((k - mk) * (times[k] - mt) for k in kk) / sum((k - mk) ** 2 for k in kk)
    return {"explicit_ms": times, "intercept_ms": mt - slope * mk, "ms_per_evaluation": slope}


def report(task: str, curves: dict[str, Curve], entropy_rate: float | None, gap: float, cost: dict | None,
           axis: str = "seconds") -> dict:
    """Print the task's table and return its JSON record; `axis` says what time to a target counts (seconds or,
    for a budget of steps, step)."""
    unit = "seconds" if axis == "seconds" else "steps"
    explicit = [n for n in curves if n.startswith(("tied", "gpt"))]
    result = {"models": {n: c.summary() for n, c in curves.items()}}
    if explicit:
        best = min(explicit, key=lambda n: curves[n].points[-1]["nll"])
        target = curves[best].points[-1]["nll"]
        best_time = time_to(curves[best].points, target, axis)
        result["target"] = {"model": best, "nll": target, unit: best_time}
    targets = {"best_explicit": result.get("target", {}).get("nll")}
    if entropy_rate is not None:
        targets["entropy_plus_gap"] = entropy_rate + gap
        result["entropy_rate"] = entropy_rate
    print(f"\n{task}: valid NLL (nats/token) after the budget; {unit} to reach each target")
    header = f"{'model':<22}{'params':>9}{'steps':>8}{'ms/step':>9}{'fwd nfe':>9}{'bwd nfe':>9}{'final NLL':>11}"
    for key in targets:
        header += f"{'t(' + key + ')':>26}"
    print(header)
    for name, c in curves.items():
        s = result["models"][name]
        s["time_to"] = {}
        line = (f"{name:<22}{s['params']:>9}{s['steps']:>8}{s['step_ms_median']:>9.1f}"
                f"{s['fwd_nfe_mean'] or 0:>9.1f}{s['bwd_nfe_mean'] or 0:>9.1f}{s['final_nll']:>11.4f}")
        for key, target in targets.items():
            if target is None:
                continue
            t = time_to(c.points, target, axis)
            ref_model = (result["target"]["model"] if key == "best_explicit"
                         else _best_explicit_to(curves, target, axis))
            ref = time_to(curves[ref_model].points, target, axis) if ref_model else None
            ratio = t / ref if t is not None and ref else None
            s["time_to"][key] = {"target": target, unit: t, "reference": ref_model, "ratio": ratio}
            shown = "never" if t is None else f"{t:.0f} {unit[0]}" + (f" ({ratio:.2f}x)" if ratio is not None else "")
            line += f"{shown:>26}"
        print(line)
    if cost is not None:
        result["step_cost"] = cost
        print(f"explicit weight-tied step: {cost['intercept_ms']:.1f} ms + {cost['ms_per_evaluation']:.2f} ms per cell "
              "evaluation")
        for name in curves:
            s = result["models"][name]
            if s["fwd_nfe_mean"] is None or name.startswith("tied"):
                continue
            evals = s["fwd_nfe_mean"] + s["bwd_nfe_mean"]
            explicit_ms = cost["intercept_ms"] + cost["ms_per_evaluation"] * evals
            s["step_cost"] = {"evaluations": evals, "explicit_ms": explicit_ms,
                              "ratio": s["step_ms_mean"] / explicit_ms}
            print(f"  {name:<20} {s['step_ms_mean']:.1f} ms at {evals:.1f} evaluations: "
                  f"{s['step_ms_mean'] / explicit_ms:.2f}x the explicit step ({explicit_ms:.1f} ms)")
    return result


def _best_explicit_to(curves: dict[str, Curve], target: float, axis: str) -> str | None:
    """The explicit model that reaches `target` first (None if none does)."""
    times = {n: time_to(c.points, target, axis) for n, c in curves.items() if n.startswith(("tied", "gpt"))}
    reached = {n: t for n, t in times.items() if t is not None}
    return min(reached, key=reached.get) if reached else None


def plot(path: Path, task: str, curves: dict[str, Curve], result: dict, axis: str = "seconds") -> None:
    """Valid NLL against wall seconds (or steps), one line per model (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[plot]')")
        return
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, c in curves.items():
        style = "--" if name.startswith(("tied", "gpt")) else "-"
        ax.plot([p[axis] for p in c.points], [p["nll"] for p in c.points], style, marker="o", ms=3,
                label=f"{name}: {c.label}")
    if "entropy_rate" in result:
        ax.axhline(result["entropy_rate"], color="gray", lw=0.8, ls=":", label="entropy rate")
    lows = [p["nll"] for c in curves.values() for p in c.points]
    ax.set_ylim(min(lows) - 0.02, min(max(lows), min(lows) + 1.0))
    ax.set_xlabel("training wall time (s, 2 CPU threads; evaluation excluded)" if axis == "seconds"
                  else "training steps")
    ax.set_ylabel("valid NLL (nats/token)")
    ax.set_title(f"time to quality: {task}" if axis == "seconds" else f"quality per step: {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"wrote {path}")


def model_specs(task: str, names: list[str], extra: list[list[str]]) -> dict[str, tuple[str, str, object]]:
    """name -> (label, kind, overrides or layers) for the models asked for, on `task`."""
    custom = {name: overrides.split() for name, overrides in extra}
    specs = {}
    for name in [*names, *custom]:
        if name == "deq":
            specs[name] = ("default DEQ recipe", "deqseq", [])
        elif name in custom:
            specs[name] = (" ".join(custom[name]), "deqseq", custom[name])
        elif name in LEVERS:
            label, overrides, from_old = LEVERS[name]
            specs[name] = (label, "deqseq", [*(OLD_RECIPE[task] if from_old else []), *overrides])
        elif name.startswith("tied") and name[4:].isdigit():
            specs[name] = (f"explicit weight-tied unrolled:{name[4:]}", "deqseq", tied(int(name[4:])))
        elif name.startswith("gpt") and name[3:].isdigit():
            specs[name] = (f"explicit untied {name[3:]}-layer GPT", "gpt", int(name[3:]))
        else:
            raise SystemExit(f"unknown model {name!r}: deq, tiedK, gptK, {', '.join(LEVERS)} or a --recipe")
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", default=["stdlib", "markov"], choices=list(TASKS))
    parser.add_argument("--budget-s", type=float, default=240.0, help="training seconds per model")
    parser.add_argument("--budget-steps", type=int, default=None,
                        help="a budget of optimizer steps instead of seconds: quality per step (marks in steps)")
    parser.add_argument("--marks", type=int, default=12, help="evaluations per run, evenly spaced in time")
    parser.add_argument("--models", nargs="*", default=["deq", "tied4", "gpt4"],
                        help=f"deq, tiedK, gptK, {', '.join(LEVERS)}")
    parser.add_argument("--recipe", nargs=2, action="append", default=[], metavar=("NAME", "OVERRIDES"),
                        help='an extra DEQ model: its name and its config overrides, e.g. p2 "solver.grad=phantom:2"')
    parser.add_argument("--eval-tokens", type=int, default=16384, help="held-out positions scored at each mark")
    parser.add_argument("--markov-gap", type=float, default=0.05, help="target: entropy rate + this (nats)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-step-cost", action="store_true", help="skip the explicit step-cost fit")
    parser.add_argument("--out", default="bench/results/time_to_quality.json")
    parser.add_argument("--plot-dir", default="docs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    in_steps = args.budget_steps is not None
    budget, axis = (args.budget_steps, "step") if in_steps else (args.budget_s, "seconds")
    results = {("budget_steps" if in_steps else "budget_s"): budget, "threads": args.threads,
               "eval_tokens": args.eval_tokens, "torch": torch.__version__, "tasks": {}}
    marks = [budget * (i + 1) / args.marks for i in range(args.marks)]
    for task in args.task:
        config = TASKS[task]
        cfg = load_config(config)
        with tempfile.TemporaryDirectory() as out:
            probe = Trainer(load_config(config, [f"run.out_dir={out}", "tracking.mode=disabled",
                                                 f"run.threads={args.threads}"]), progress=False)
        segments = eval_segments(probe.corpus.valid, args.eval_tokens, cfg.data.eval_batch_size, cfg.data.seq_len)
        print(f"{task}: {config}, budget {budget:.0f} {'steps' if in_steps else 's'} per model, "
              f"{args.eval_tokens} valid positions",
              flush=True)
        curves: dict[str, Curve] = {}
        for name, (label, kind, spec) in model_specs(task, args.models, args.recipe).items():
            print(f"  {name}: {label}", flush=True)
            if kind == "gpt":
                curves[name] = run_gpt(name, label, config, spec, segments, BudgetClock(budget, in_steps), marks)
            else:
                curves[name] = run_deqseq(name, label, config, spec, segments, BudgetClock(budget, in_steps), marks)
        nfe = {n: c.summary()["fwd_nfe_mean"] for n, c in curves.items()}
        cost = None if args.no_step_cost else step_cost(config, nfe)
        results["tasks"][task] = report(task, curves, probe.corpus.entropy_rate, args.markov_gap, cost, axis)
        name = f"quality_per_step_{task}.png" if in_steps else f"time_to_quality_{task}.png"
        plot(Path(args.plot_dir) / name, task, curves, results["tasks"][task], axis)
        write_json(args.out, results)


if __name__ == "__main__":
    main()
