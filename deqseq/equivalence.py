"""Check that solving a sequence at once, token by token and in chunks reaches the same equilibria.

A causal cell's fixed point at position t depends only on positions <= t, so freezing earlier equilibria as
history and solving the rest must give the same z* and logits, up to what the solver tolerance allows. The
token-by-token mode solves one position per step against the history, exactly as cached generation does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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


def _solve_in_chunks(model: DEQSequenceModel, x: Tensor, cond: Tensor | None, chunk: int,
                     window: int | None) -> _Run:
    """Solve x `chunk` positions at a time, carrying the history of the frozen positions."""
    history, zs, logits, stats = None, [], [], []
    for s in range(0, x.shape[1], chunk):
        c = cond[:, s : s + chunk] if cond is not None and cond.dim() == 3 else cond
        out = model(x[:, s : s + chunk], history=history, cond=c, window=window)
        history = out.history
        zs.append(out.z)
        logits.append(out.logits)
        stats.append(out.stats)
    z = torch.cat(zs, dim=1)
    x_emb = model.embed(x, cond)
    ctx = model.deq.cell.prepare(x_emb, window=window)
    fz = model.deq.cell(z, ctx)
    return _Run(
        z=z, logits=torch.cat(logits, dim=1), stats=_merge_stats(stats),
        residual=_row_norm(fz - z),
        f_norm=_row_norm(fz),
    )


def _top2_gap(logits: Tensor) -> Tensor:
    """Difference between the largest and second largest logit, per position."""
    top = logits.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _row_norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def _implied_residual(model: DEQSequenceModel, run: _Run, tol_factor: float) -> Tensor:
    """The whole-sequence residual ||F(z) - z|| per sequence that solves at the model's forward tolerance can
    leave: tol ||F(z)|| for relative stopping (per position or per sequence alike), tol sqrt(T D) for absolute."""
    cfg = model.settings.forward
    tol = cfg.tol / tol_factor
    if cfg.stop == "rel":
        return tol * run.f_norm
    return torch.full_like(run.f_norm, tol * math.sqrt(run.z[0].numel()))


def _compare(ref: _Run, run: _Run, slack: float, rho: Tensor, implied: Tensor) -> dict:
    """Differences of `run` from the reference, and whether they are within what the residuals allow.

    If the whole-sequence map F contracts with factor rho near its fixed point z*, every point z with residual
    r = ||F(z) - z|| lies within r / (1 - rho) of z*, so two solves are within (r_ref + r_run) / (1 - rho) of
    each other (per sequence, 2-norm). rho is estimated (the spectral radius of dF/dz at the reference), so the
    bound carries `slack` for the estimate's error; where rho >= 1 no bound exists. `implied` is the residual
    the solver tolerance allows: a run whose states leave a larger residual under the whole-sequence map is not
    a fixed point of it (its solves converged to something else, e.g. against a wrong history).
    """
    mismatch = ref.logits.argmax(-1) != run.logits.argmax(-1)
    gaps = _top2_gap(ref.logits)
    mismatches = [
        {"batch": b, "position": t, "gap": gaps[b, t].item()} for b, t in mismatch.nonzero().tolist()
    ]
    diff = _row_norm(ref.z - run.z)
    margin = (1 - rho).clamp_min(0)
    bound = torch.where(margin > 0, slack * (ref.residual + run.residual) / margin.clamp_min(1e-30),
                        torch.full_like(diff, math.inf))
    worst = int((diff / bound).nan_to_num(nan=math.inf).argmax()) if bool((bound < math.inf).all()) else int(
        margin.argmin())
    return {
        "max_state_diff": (ref.z - run.z).abs().max().item(),
        "state_diff": diff[worst].item(),
        "rel_state_diff": (diff / _row_norm(ref.z).clamp_min(1e-30)).max().item(),
        "max_logit_diff": (ref.logits - run.logits).abs().max().item(),
        "argmax_mismatches": mismatches,
        "stats": run.stats.summary(),
        "converged": bool(run.stats.converged.all()),
        "residual": run.residual.max().item(),
        "residual_ratio": (run.residual / implied.clamp_min(1e-300)).max().item(),
        "bound": bound[worst].item(),
    }


def _solve(model: DEQSequenceModel, x: Tensor, cond: Tensor | None, chunk: int, window: int | None,
           tol_factor: float = 1.0) -> _Run:
    """_solve_in_chunks with the forward tolerance divided by tol_factor."""
    if tol_factor == 1.0:
        return _solve_in_chunks(model, x, cond, chunk, window)
    saved = model.settings
    model.settings = replace(saved, forward=replace(saved.forward, tol=saved.forward.tol / tol_factor))
    try:
        return _solve_in_chunks(model, x, cond, chunk, window)
    finally:
        model.settings = saved


def _contraction(model: DEQSequenceModel, x: Tensor, cond: Tensor | None, z: Tensor, window: int | None,
                 iters: int) -> Tensor:
    """Estimated spectral radius of the whole-sequence map's Jacobian at z, per sequence (B,)."""
    ctx = model.deq.cell.prepare(model.embed(x, cond), window=window)
    return solvers.spectral_radius(lambda v: model.deq.cell(v, ctx), z, iters=iters, batch_dims=1,
                                   generator=torch.Generator(device=z.device).manual_seed(0))


@dataclass
class EquivalenceReport:
    """Sequence-level solve vs token-by-token and chunked solves with frozen history.

    modes:     {"token": {...}, "chunk=K": {...}}, each with max_state_diff (largest |dz| of one value),
               state_diff and bound (||z_ref - z|| of one sequence and its bound (r_ref + r) slack / (1 - rho),
               for the sequence closest to its bound), rel_state_diff (largest ||dz|| / ||z_ref||),
               max_logit_diff, argmax_mismatches ([{batch, position, gap}], gap = the reference's top-2 logit gap
               there), stats (solver summary, nfe summed over steps), converged, residual (largest
               whole-sequence ||f(z)-z||) and, when the check re-solved at a tighter tolerance, tight (the same
               numbers for that re-solve) and shrink (state_diff there / here).
    reference: the sequence-level solve's stats, converged, residual, f_norm (largest ||f(z)||) and rho (largest
               estimated spectral radius of df/dz at z*: the local contraction factor).
    """

    modes: dict[str, dict]
    reference: dict
    slack: float

    @property
    def failures(self) -> list[str]:
        """Why the check fails, one line per reason (empty when it passes)."""
        out = [] if self.reference["converged"] else ["sequence solve not converged"]
        rho = self.reference.get("rho")
        if rho is not None and not rho < 1:
            out.append(f"the map does not contract at z* (estimated spectral radius {rho:.3f} >= 1): no bound")
        for name, m in self.modes.items():
            if not m["converged"]:
                out.append(f"{name} not converged")
            if not m["state_diff"] <= m["bound"]:
                out.append(f"{name} state diff {m['state_diff']:.3e} > bound {m['bound']:.3e}")
            if m.get("residual_ratio", 0) > self.slack:
                out.append(f"{name} states are not a fixed point of the sequence map: residual "
                           f"{m['residual_ratio']:.3g}x what the tolerance allows")
            flips = [mm for mm in m["argmax_mismatches"] if not mm["gap"] <= 2 * m["max_logit_diff"]]
            if flips:
                out.append(f"{name} has {len(flips)} argmax flips at top-2 gaps > 2 * max_logit_diff")
            tight = m.get("tight")
            if tight is not None and tight["converged"] and not tight["state_diff"] <= tight["bound"]:
                out.append(f"{name} at the tighter tolerance: state diff {tight['state_diff']:.3e} > bound "
                           f"{tight['bound']:.3e}")
            if tight is not None and tight["converged"] and tight["residual_ratio"] > self.slack:
                out.append(f"{name} at the tighter tolerance: not a fixed point of the sequence map (residual "
                           f"{tight['residual_ratio']:.3g}x what the tolerance allows)")
        return out

    @property
    def ok(self) -> bool:
        """Every solve converged, every state difference is within its bound, every argmax flip is a near tie."""
        return not self.failures

    def __str__(self) -> str:
        tightened = any("tight" in m for m in self.modes.values())
        header = ["mode", "max_state_diff", "state_diff", "bound", "rel_state_diff", "max_logit_diff", "mismatches",
                  "nfe", "converged"] + (["diff@tight", "shrink"] if tightened else [])
        ref = self.reference
        rows = [["sequence", "-", "-", "-", "-", "-", "-", f"{ref['stats']['nfe']:.0f}", str(ref["converged"])]
                + (["-", "-"] if tightened else [])]
        for name, m in self.modes.items():
            row = [name, f"{m['max_state_diff']:.3e}", f"{m['state_diff']:.3e}", f"{m['bound']:.3e}",
                   f"{m['rel_state_diff']:.2e}", f"{m['max_logit_diff']:.3e}", str(len(m["argmax_mismatches"])),
                   f"{m['stats']['nfe']:.0f}", str(m["converged"])]
            if tightened:
                tight = m.get("tight")
                row += ["-", "-"] if tight is None else [f"{tight['state_diff']:.3e}", f"{m['shrink']:.3f}"]
            rows.append(row)
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                 for row in (header, *rows)]
        failures = self.failures
        verdict = "NOT ok: " + "; ".join(failures) if failures else "ok"
        rho = ref.get("rho")
        about = f"slack {self.slack:g}" + (f", contraction {rho:.3f}" if rho is not None else "")
        return "\n".join([*lines, f"{verdict} ({about})"])


def check_equivalence(
    model: DEQSequenceModel,
    x: Tensor,
    chunk_sizes: tuple[int, ...] = (1, 4),
    cond: Tensor | None = None,
    slack: float = 2.0,
    mem_len: int | str | None = "auto",
    tighten: float | None = None,
    contraction_iters: int = 20,
) -> EquivalenceReport:
    """Solve x (B, T) at once, token by token (always), and in chunks of each K > 1 in chunk_sizes; compare.

    Each difference is bounded through the estimated contraction factor of the whole-sequence map at the
    reference equilibrium (see `_compare`); the check fails where a difference exceeds its bound, a solve did
    not converge, the map does not contract there, or an argmax flips where the top-2 logits are not a near tie.
    tighten: also re-solve the reference and the token mode at tolerance / tighten, reporting how much the
    difference shrinks (two solves of one fixed point move together as the tolerance tightens; solves that
    found different fixed points do not). mem_len: the attention window, as in `generate` (default: the
    model's default_window). Runs in eval mode without autograd and restores the model's mode afterwards.
    """
    if any(k < 1 for k in chunk_sizes):
        raise ValueError(f"chunk_sizes must be >= 1, got {chunk_sizes}")
    if tighten is not None and not tighten > 1:
        raise ValueError(f"tighten must be > 1 (or None), got {tighten}")
    window = model.resolve_window(mem_len)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ref = _solve(model, x, cond, x.shape[1], window)
            rho = _contraction(model, x, cond, ref.z, window, contraction_iters)

            def compare(reference: _Run, run: _Run, factor: float = 1.0) -> dict:
                return _compare(reference, run, slack, rho, _implied_residual(model, run, factor))

            modes = {"token": compare(ref, _solve(model, x, cond, 1, window))}
            for k in sorted(set(chunk_sizes) - {1}):
                modes[f"chunk={k}"] = compare(ref, _solve(model, x, cond, k, window))
            if tighten is not None:
                ref_tight = _solve(model, x, cond, x.shape[1], window, tighten)
                tight = compare(ref_tight, _solve(model, x, cond, 1, window, tighten), tighten)
                modes["token"]["tight"] = tight
                modes["token"]["shrink"] = tight["state_diff"] / max(modes["token"]["state_diff"], 1e-300)
    finally:
        model.train(was_training)
    reference = {
        "stats": ref.stats.summary(),
        "converged": bool(ref.stats.converged.all()),
        "residual": ref.residual.max().item(),
        "f_norm": ref.f_norm.max().item(),
        "rho": rho.max().item(),
    }
    return EquivalenceReport(modes=modes, reference=reference, slack=slack)
