"""Check that solving a sequence at once, token by token and in chunks reaches the same equilibria.

A causal cell's fixed point at position t depends only on positions <= t, so freezing earlier equilibria as
history and solving the rest must give the same z* and logits, up to what the solver tolerance allows. The
token-by-token mode solves one position per step against the history, exactly as cached generation does.

Two more pieces of evidence that the equilibrium is unique (at least locally): the sequence is re-solved from
random starts, which must all reach the reference z*, and the contraction factor is estimated per position, on
the single-position map the token-by-token solve iterates (its spectral radii must match the whole-sequence one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

import solvers

from .model import DEQSequenceModel, cond_at, eval_mode

START_SCALE_MAX = 3.0  # random starts lie 1x .. this many times z*'s per-position RMS from the origin


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
                     window: int | None, z0: Tensor | None = None) -> _Run:
    """Solve x `chunk` positions at a time, carrying the history of the frozen positions; z0 (B, T, state_dim),
    when given, is the initial guess of every solve (its rows for that chunk)."""
    history, zs, logits, stats = None, [], [], []
    for s in range(0, x.shape[1], chunk):
        c = cond_at(cond, s, s + chunk)
        start = z0[:, s : s + chunk] if z0 is not None else None
        out = model(x[:, s : s + chunk], history=history, cond=c, z0=start, window=window)
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
           tol_factor: float = 1.0, z0: Tensor | None = None) -> _Run:
    """_solve_in_chunks with the forward tolerance divided by tol_factor."""
    if tol_factor == 1.0:
        return _solve_in_chunks(model, x, cond, chunk, window, z0)
    saved = model.settings
    model.settings = replace(saved, forward=replace(saved.forward, tol=saved.forward.tol / tol_factor))
    try:
        return _solve_in_chunks(model, x, cond, chunk, window, z0)
    finally:
        model.settings = saved


def _contraction(model: DEQSequenceModel, x: Tensor, cond: Tensor | None, z: Tensor, window: int | None,
                 iters: int) -> Tensor:
    """Estimated spectral radius of the whole-sequence map's Jacobian at z, per sequence (B,)."""
    ctx = model.deq.cell.prepare(model.embed(x, cond), window=window)
    return solvers.spectral_radius(lambda v: model.deq.cell(v, ctx), z, iters=iters, batch_dims=1,
                                   generator=torch.Generator(device=z.device).manual_seed(0))


def _position_contraction(model: DEQSequenceModel, x: Tensor, cond: Tensor | None, z: Tensor, window: int | None,
                          iters: int) -> Tensor:
    """Estimated spectral radius rho_t of each single-position map at z, per sequence and position (B, T).

    The map of position t is the one the token-by-token solve iterates: the cell on that position alone, against
    the history of positions < t frozen at z. Its Jacobian is the t-th diagonal block of the causal whole-sequence
    map's (block lower-triangular) Jacobian, so max_t rho_t estimates the same spectral radius as `_contraction`.
    """
    cell = model.deq.cell
    history, out = None, []
    for t in range(x.shape[1]):
        ctx = cell.prepare(model.embed(x[:, t : t + 1], cond_at(cond, t, t + 1)), history, window=window)
        z_t = z[:, t : t + 1]
        out.append(solvers.spectral_radius(lambda v, ctx=ctx: cell(v, ctx), z_t, iters=iters, batch_dims=1,
                                           generator=torch.Generator(device=z.device).manual_seed(t)))
        history = cell.extend_history(ctx, z_t)
    return torch.stack(out, dim=1)


def _position_diffs(ref: Tensor, z: Tensor) -> list[float]:
    """max over the batch of ||z_ref,t - z_t|| (2-norm over the state), per position t."""
    return torch.linalg.vector_norm(ref - z, dim=-1).amax(dim=0).tolist()


def _start_scales(starts: int) -> list[float]:
    """How far each random start lies from the origin, in units of z*'s per-position RMS: 1x to START_SCALE_MAX x,
    spread geometrically."""
    return [START_SCALE_MAX ** (k / max(starts - 1, 1)) for k in range(starts)]


def _random_start(z_ref: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """Gaussian z0 whose RMS at each position is `scale` times that of z_ref there (1 where z_ref is 0)."""
    rms = z_ref.pow(2).mean(dim=-1, keepdim=True).sqrt()
    rms = torch.where(rms > 0, rms, torch.ones_like(rms))
    noise = torch.randn(z_ref.shape, generator=generator, dtype=z_ref.dtype, device=z_ref.device)
    return noise * rms * scale


@dataclass
class EquivalenceReport:
    """Sequence-level solve vs token-by-token and chunked solves with frozen history, and vs random starts.

    modes:     {"token": {...}, "chunk=K": {...}}, each with max_state_diff (largest |dz| of one value),
               state_diff and bound (||z_ref - z|| of one sequence and its bound (r_ref + r) slack / (1 - rho),
               for the sequence closest to its bound), rel_state_diff (largest ||dz|| / ||z_ref||),
               max_logit_diff, argmax_mismatches ([{batch, position, gap}], gap = the reference's top-2 logit gap
               there), stats (solver summary, nfe summed over steps), converged, residual (largest
               whole-sequence ||f(z)-z||) and, when the check re-solved at a tighter tolerance, tight (the same
               numbers for that re-solve) and shrink (state_diff there / here).
    reference: the sequence-level solve's stats, converged, residual, f_norm (largest ||f(z)||) and rho (largest
               estimated spectral radius of df/dz at z*: the local contraction factor); with the per-position
               estimate also rho_positions (largest rho_t over positions and sequences), rho_position (its t) and
               rho_bound (largest over sequences of the factor the bounds use: see `check_equivalence`).
    starts:    one dict per random start of the sequence-level solve, with the fields of a mode (differences
               from the reference solved at the same tolerance) plus scale (z0's RMS over z*'s, per position)
               and tol_factor (both were solved at the forward tolerance / tol_factor).
    positions: per position t, lists of length T: "rho" (rho_t, the spectral radius of the single-position map
               the token-by-token solve iterates, largest over the batch; absent without the estimate) and "dz"
               ({mode name, "token@tight" or "starts": the largest over the batch (and starts) of ||z_t - z_ref,t||,
               against the reference at the same tolerance}).
    """

    modes: dict[str, dict]
    reference: dict
    slack: float
    starts: list[dict] = field(default_factory=list)
    positions: dict = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        """Why the check fails, one line per reason (empty when it passes)."""
        out = [] if self.reference["converged"] else ["sequence solve not converged"]
        rho = self.reference.get("rho")
        if rho is not None and not rho < 1:
            out.append(f"the map does not contract at z* (estimated spectral radius {rho:.3f} >= 1): no bound")
        rho_t = self.reference.get("rho_positions")
        if rho_t is not None and not rho_t < 1:
            out.append(f"the single-position map does not contract at position {self.reference['rho_position']} "
                       f"(estimated spectral radius {rho_t:.3f} >= 1): no bound")
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
        for k, s in enumerate(self.starts):
            if not s["converged"]:
                out.append(f"start {k} ({s['scale']:.3g}x the RMS of z*) not converged")
            elif not s["state_diff"] <= s["bound"]:
                out.append(f"start {k} ({s['scale']:.3g}x the RMS of z*) reached a different fixed point: state diff "
                           f"{s['state_diff']:.3e} > bound {s['bound']:.3e}")
        return out

    @property
    def ok(self) -> bool:
        """Every solve converged, every state difference is within its bound, every argmax flip is a near tie."""
        return not self.failures

    def _starts_line(self) -> str:
        """One line on the random starts: how many converged, and the one closest to its bound."""
        n, starts = len(self.starts), self.starts
        worst = max(range(n), key=lambda k: (starts[k]["state_diff"] / starts[k]["bound"]
                                             if starts[k]["bound"] > 0 else math.inf, starts[k]["state_diff"]))
        s = starts[worst]
        scales = f"{starts[0]['scale']:.3g}-{starts[-1]['scale']:.3g}x" if n > 1 else f"{s['scale']:.3g}x"
        tol = f", tol / {s['tol_factor']:g}" if s["tol_factor"] != 1 else ""
        relation = "<=" if s["state_diff"] <= s["bound"] else ">"
        return (f"starts: {sum(x['converged'] for x in starts)} of {n} converged ({scales} the RMS of z*{tol}), "
                f"max diff {s['state_diff']:.3e} {relation} bound {s['bound']:.3e} (start {worst}; relative "
                f"{max(x['rel_state_diff'] for x in starts):.2e})")

    def _positions_line(self) -> str:
        """One line on the per-position estimates: rho_t's max and median, and where each mode's |dz_t| peaks."""
        parts = []
        rho = self.positions.get("rho")
        if rho:
            t = max(range(len(rho)), key=rho.__getitem__)
            median = torch.tensor(rho).median().item()
            whole = self.reference.get("rho")
            versus = f" (whole-sequence {whole:.3f})" if whole is not None else ""
            parts.append(f"rho_t max {rho[t]:.3f} at t={t}{versus}, median {median:.3f}")
        peaks = []
        for name, dz in self.positions.get("dz", {}).items():
            t = max(range(len(dz)), key=dz.__getitem__)
            peaks.append(f"{dz[t]:.2e} at t={t} ({name})")
        if peaks:
            parts.append("largest |dz_t| " + ", ".join(peaks))
        return "positions: " + "; ".join(parts)

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
        # The summaries go above the table, so that the table and its verdict stay the last lines.
        above = ([self._starts_line()] if self.starts else []) + ([self._positions_line()] if self.positions else [])
        failures = self.failures
        verdict = "NOT ok: " + "; ".join(failures) if failures else "ok"
        rho = ref.get("rho")
        about = f"slack {self.slack:g}" + (f", contraction {rho:.3f}" if rho is not None else "")
        return "\n".join([*above, *lines, f"{verdict} ({about})"])


def check_equivalence(
    model: DEQSequenceModel,
    x: Tensor,
    chunk_sizes: tuple[int, ...] = (1, 4),
    cond: Tensor | None = None,
    slack: float = 2.0,
    mem_len: int | str | None = "auto",
    tighten: float | None = None,
    contraction_iters: int = 20,
    starts: int = 3,
    position_iters: int | None = None,
    seed: int = 0,
) -> EquivalenceReport:
    """Solve x (B, T) at once, token by token (always), and in chunks of each K > 1 in chunk_sizes; compare.

    Each difference is bounded through the estimated contraction factor of the whole-sequence map at the
    reference equilibrium (see `_compare`); the check fails where a difference exceeds its bound, a solve did
    not converge, the map does not contract there, or an argmax flips where the top-2 logits are not a near tie.
    tighten: also re-solve the reference and the token mode at tolerance / tighten, reporting how much the
    difference shrinks (two solves of one fixed point move together as the tolerance tightens; solves that
    found different fixed points do not). mem_len: the attention window, as in `generate` (default: the
    model's default_window). Runs in eval mode without autograd and restores the model's mode afterwards.

    starts: re-solve the sequence from this many Gaussian z0 (generator seeded with `seed`), 1x to 3x the
    reference's per-position RMS; each must converge to within the same bound of the reference (at tolerance /
    tighten when given, where the bound is tighter), else a start found another fixed point and the check fails.

    position_iters (default min(contraction_iters, state_dim); 0 = off): Arnoldi steps for rho_t, the spectral
    radius of the single-position map the token-by-token solve iterates (position t against the history frozen
    at z*_{<t}). A causal map's Jacobian is block lower-triangular over positions with these maps' Jacobians as
    its diagonal blocks, so its spectrum is the union of theirs and max_t rho_t is a second estimate of the
    whole-sequence rho (reported side by side). The off-diagonal blocks (how an error at s < t moves position t)
    are not estimated, so no per-position error bound is claimed: the bounds stay whole-sequence ones, with
    rho per sequence the larger of the two estimates (Arnoldi with few steps tends to underestimate, so the
    larger is the safer), and rho_t >= 1 at any position fails the check like rho >= 1.
    """
    _check_arguments(chunk_sizes, tighten, starts, position_iters)
    if position_iters is None:
        position_iters = min(contraction_iters, model.deq.cell.state_dim)
    window = model.resolve_window(mem_len)
    with eval_mode(model), torch.no_grad():
        ref = _solve(model, x, cond, x.shape[1], window)
        rho_seq = _contraction(model, x, cond, ref.z, window, contraction_iters)
        rho_pos = _position_contraction(model, x, cond, ref.z, window, position_iters) if position_iters else None
        rho = rho_seq if rho_pos is None else torch.maximum(rho_seq, rho_pos.amax(dim=1))

        def compare(reference: _Run, run: _Run, factor: float = 1.0) -> dict:
            return _compare(reference, run, slack, rho, _implied_residual(model, run, factor))

        def solve(chunk: int, factor: float = 1.0, z0: Tensor | None = None) -> _Run:
            return _solve(model, x, cond, chunk, window, factor, z0)

        modes, dz, ref_start, factor = _mode_runs(solve, compare, ref, chunk_sizes, tighten)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        start_reports, start_dz = [], []
        for scale in _start_scales(starts):
            run = solve(x.shape[1], factor, _random_start(ref_start.z, scale, generator))
            start_reports.append({**compare(ref_start, run, factor), "scale": scale, "tol_factor": factor})
            start_dz.append(_position_diffs(ref_start.z, run.z))
        if start_dz:
            dz["starts"] = [max(values) for values in zip(*start_dz, strict=True)]
    reference, positions = _reference_summary(ref, rho_seq, rho_pos, rho, dz)
    return EquivalenceReport(modes=modes, reference=reference, slack=slack, starts=start_reports, positions=positions)


def _check_arguments(chunk_sizes: tuple[int, ...], tighten: float | None, starts: int,
                     position_iters: int | None) -> None:
    """ValueError for check_equivalence arguments out of range."""
    if any(k < 1 for k in chunk_sizes):
        raise ValueError(f"chunk_sizes must be >= 1, got {chunk_sizes}")
    if tighten is not None and not tighten > 1:
        raise ValueError(f"tighten must be > 1 (or None), got {tighten}")
    if starts < 0:
        raise ValueError(f"starts must be >= 0, got {starts}")
    if position_iters is not None and position_iters < 0:
        raise ValueError(f"position_iters must be >= 0 (or None), got {position_iters}")


def _mode_runs(solve, compare, ref: _Run, chunk_sizes: tuple[int, ...],
               tighten: float | None) -> tuple[dict, dict, _Run, float]:
    """The token and chunk modes compared with the reference (and the token mode again at tolerance / tighten):
    (modes, per-position diffs, the reference the random starts compare with, its tolerance factor)."""
    runs = {"token": solve(1)}
    for k in sorted(set(chunk_sizes) - {1}):
        runs[f"chunk={k}"] = solve(k)
    modes = {name: compare(ref, run) for name, run in runs.items()}
    dz = {name: _position_diffs(ref.z, run.z) for name, run in runs.items()}
    if tighten is None:
        return modes, dz, ref, 1.0
    length = ref.z.shape[1]
    ref_tight, token_tight = solve(length, tighten), solve(1, tighten)
    tight = compare(ref_tight, token_tight, tighten)
    dz["token@tight"] = _position_diffs(ref_tight.z, token_tight.z)
    modes["token"]["tight"] = tight
    modes["token"]["shrink"] = tight["state_diff"] / max(modes["token"]["state_diff"], 1e-300)
    return modes, dz, ref_tight, tighten


def _reference_summary(ref: _Run, rho_seq: Tensor, rho_pos: Tensor | None, rho: Tensor,
                       dz: dict) -> tuple[dict, dict]:
    """The report's reference entry (solver stats, residual, contraction estimates) and its positions entry."""
    reference = {
        "stats": ref.stats.summary(),
        "converged": bool(ref.stats.converged.all()),
        "residual": ref.residual.max().item(),
        "f_norm": ref.f_norm.max().item(),
        "rho": rho_seq.max().item(),
    }
    positions: dict = {"dz": dz}
    if rho_pos is not None:
        per_position = rho_pos.amax(dim=0)
        positions["rho"] = per_position.tolist()
        reference.update(rho_positions=per_position.max().item(), rho_position=int(per_position.argmax()),
                         rho_bound=rho.max().item())
    return reference, positions
