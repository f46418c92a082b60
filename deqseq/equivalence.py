"""Check that solving a sequence at once, token by token and in chunks reaches the same equilibria.

A causal cell's fixed point at position t depends only on positions <= t, so freezing earlier equilibria as
history and solving the rest must give the same z* and logits, up to what the solver tolerance allows. The
token-by-token mode solves one position per step against the history, exactly as cached generation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import solvers

from .model import DEQSequenceModel


@dataclass
class _Run:
    """One way of solving the whole sequence: concatenated equilibria, logits and merged solver stats."""

    z: Tensor
    logits: Tensor
    stats: solvers.SolverStats
    residual: Tensor  # (B,) ||F(z) - z|| of the whole-sequence map F
    f_norm: Tensor  # (B,) ||F(z)||


def _merge_stats(parts: list[solvers.SolverStats]) -> solvers.SolverStats:
    """One SolverStats over the systems of several solves (flattened), with nfe summed over the solves."""

    def cat(name: str) -> Tensor:
        return torch.cat([getattr(p, name).reshape(-1) for p in parts])

    return solvers.SolverStats(
        method=parts[0].method, nfe=sum(p.nfe for p in parts), nstep=cat("nstep"),
        abs_residual=cat("abs_residual"), rel_residual=cat("rel_residual"), converged=cat("converged"),
        nonfinite=cat("nonfinite"),
    )


def _solve_in_chunks(model: DEQSequenceModel, x: Tensor, cond: Tensor | None, chunk: int) -> _Run:
    """Solve x `chunk` positions at a time, carrying the history of the frozen positions."""
    history, zs, logits, stats = None, [], [], []
    for s in range(0, x.shape[1], chunk):
        c = cond[:, s : s + chunk] if cond is not None and cond.dim() == 3 else cond
        out = model(x[:, s : s + chunk], history=history, cond=c)
        history = out.history
        zs.append(out.z)
        logits.append(out.logits)
        stats.append(out.stats)
    z = torch.cat(zs, dim=1)
    x_emb = model.embed(x, cond)
    ctx = model.deq.cell.prepare(x_emb)
    fz = model.deq.cell(z, ctx)
    return _Run(
        z=z, logits=torch.cat(logits, dim=1), stats=_merge_stats(stats),
        residual=torch.linalg.vector_norm((fz - z).flatten(1), dim=1),
        f_norm=torch.linalg.vector_norm(fz.flatten(1), dim=1),
    )


def _top2_gap(logits: Tensor) -> Tensor:
    """Difference between the largest and second largest logit, per position."""
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _compare(ref: _Run, run: _Run, slack: float) -> dict:
    """Differences of `run` from the reference, and whether they are within what the residuals allow."""
    mismatch = ref.logits.argmax(-1) != run.logits.argmax(-1)
    gaps = _top2_gap(ref.logits)
    mismatches = [
        {"batch": b, "position": t, "gap": gaps[b, t].item()} for b, t in mismatch.nonzero().tolist()
    ]
    return {
        "max_state_diff": (ref.z - run.z).abs().max().item(),
        "max_logit_diff": (ref.logits - run.logits).abs().max().item(),
        "argmax_mismatches": mismatches,
        "stats": run.stats.summary(),
        "converged": bool(run.stats.converged.all()),
        "residual": run.residual.max().item(),
        # Each solution is within slack * residual of the equilibrium when the map contracts by <= 1 - 1/slack.
        "bound": slack * (ref.residual.max().item() + run.residual.max().item()),
    }


@dataclass
class EquivalenceReport:
    """Sequence-level solve vs token-by-token and chunked solves with frozen history.

    modes:     {"token": {...}, "chunk=K": {...}}, each with max_state_diff, max_logit_diff, argmax_mismatches
               ([{batch, position, gap}], gap = the reference's top-2 logit gap there), stats (solver summary,
               nfe summed over steps), converged, residual (largest whole-sequence ||f(z)-z||) and bound.
    reference: the sequence-level solve's stats, converged, residual and f_norm (largest ||f(z)||).
    """

    modes: dict[str, dict]
    reference: dict
    slack: float

    @property
    def failures(self) -> list[str]:
        """Why the check fails, one line per reason (empty when it passes)."""
        out = [] if self.reference["converged"] else ["sequence solve not converged"]
        for name, m in self.modes.items():
            if not m["converged"]:
                out.append(f"{name} not converged")
            if not m["max_state_diff"] <= m["bound"]:
                out.append(f"{name} state diff {m['max_state_diff']:.3e} > bound {m['bound']:.3e}")
            flips = [mm for mm in m["argmax_mismatches"] if not mm["gap"] <= 2 * m["max_logit_diff"]]
            if flips:
                out.append(f"{name} has {len(flips)} argmax flips at top-2 gaps > 2 * max_logit_diff")
        return out

    @property
    def ok(self) -> bool:
        """Every solve converged, every state difference is within its bound, every argmax flip is a near tie."""
        return not self.failures

    def __str__(self) -> str:
        header = ("mode", "max_state_diff", "max_logit_diff", "bound", "mismatches", "nfe", "converged")
        rows = [("sequence", "-", "-", "-", "-", f"{self.reference['stats']['nfe']:.0f}",
                 str(self.reference["converged"]))]
        for name, m in self.modes.items():
            rows.append((name, f"{m['max_state_diff']:.3e}", f"{m['max_logit_diff']:.3e}", f"{m['bound']:.3e}",
                         str(len(m["argmax_mismatches"])), f"{m['stats']['nfe']:.0f}", str(m["converged"])))
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                 for row in (header, *rows)]
        failures = self.failures
        verdict = "NOT ok: " + "; ".join(failures) if failures else "ok"
        return "\n".join([*lines, f"{verdict} (slack {self.slack:g})"])


def check_equivalence(
    model: DEQSequenceModel,
    x: Tensor,
    chunk_sizes: tuple[int, ...] = (1, 4),
    cond: Tensor | None = None,
    slack: float = 10.0,
) -> EquivalenceReport:
    """Solve x (B, T) at once, token by token (always), and in chunks of each K > 1 in chunk_sizes; compare.

    Runs in eval mode without autograd and restores the model's mode afterwards.
    """
    if any(k < 1 for k in chunk_sizes):
        raise ValueError(f"chunk_sizes must be >= 1, got {chunk_sizes}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = _solve_in_chunks(model, x, cond, x.shape[1])
            modes = {"token": _compare(ref, _solve_in_chunks(model, x, cond, 1), slack)}
            for k in sorted(set(chunk_sizes) - {1}):
                modes[f"chunk={k}"] = _compare(ref, _solve_in_chunks(model, x, cond, k), slack)
    finally:
        model.train(was_training)
    reference = {
        "stats": ref.stats.summary(),
        "converged": bool(ref.stats.converged.all()),
        "residual": ref.residual.max().item(),
        "f_norm": ref.f_norm.max().item(),
    }
    return EquivalenceReport(modes=modes, reference=reference, slack=slack)
