"""Sequence-level vs token-by-token vs chunked solves: same equilibria, same logits, within the tolerance."""

import math

import pytest
import torch

from deqseq import DEQSequenceModel, EquivalenceReport, ModelConfig, SolverSettings, check_equivalence
from solvers import SolverConfig

VOCAB, T = 40, 48

MODELS = {
    "transformer": dict(cell="transformer"),
    "transformer-w8": dict(cell="transformer", window=8),  # window shorter than the sequence
    "trellis": dict(cell="trellis"),
    "trellis-k3d2": dict(cell="trellis", kernel_size=3, dilation=2),
}


def make_model(key: str, settings: SolverSettings, dtype=torch.float64, seed: int = 0) -> DEQSequenceModel:
    """A small random model with the given solver settings."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, **MODELS[key])
    return DEQSequenceModel(cfg, settings).to(dtype)


def tight(batch_dims: int) -> SolverSettings:
    """Relative tolerance 1e-10; per-position systems (batch_dims=2) need more iterations for the whole sequence."""
    cfg = SolverConfig(max_iter=400, tol=1e-10)
    return SolverSettings(forward=cfg, backward=cfg, batch_dims=batch_dims)


def tokens(batch: int = 2, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch_dims", [1, 2])
@pytest.mark.parametrize("key", list(MODELS))
def test_float64_equivalence(key, batch_dims):
    model = make_model(key, tight(batch_dims))
    report = check_equivalence(model, tokens(batch=1 if key.startswith("transformer") else 2), chunk_sizes=(1, 5))
    assert set(report.modes) == {"token", "chunk=5"}
    for mode in report.modes.values():
        assert mode["converged"]
        assert mode["max_state_diff"] < 1e-8
        assert mode["max_logit_diff"] < 1e-8
        assert mode["argmax_mismatches"] == []
    assert report.ok, str(report)
    assert model.training  # check_equivalence restored the mode


def test_token_by_token_by_hand_and_kv_projected_once():
    """One position per solve against the frozen history; each position projected into the KV cache once."""
    model = make_model("transformer-w8", tight(1)).eval()
    x = tokens(batch=1)
    with torch.no_grad():
        ref = model(x)
        cell = model.deq.cell
        cell.kv_projections = 0
        history, zs, logits = None, [], []
        for t in range(T):
            out = model(x[:, t : t + 1], history=history)
            assert out.z.shape == (1, 1, 16) and out.stats.nstep.shape == (1,)
            history = out.history
            zs.append(out.z)
            logits.append(out.logits)
    assert cell.kv_projections == T
    assert history.offset == T and history.k.shape[2] == 8  # the window
    assert (torch.cat(zs, 1) - ref.z).abs().max() < 1e-8
    assert (torch.cat(logits, 1) - ref.logits).abs().max() < 1e-8


@pytest.mark.parametrize("key", ["transformer", "trellis"])
def test_float32_default_tolerances(key):
    # Default tolerances (Broyden, rel 1e-4); the iteration budget is raised because a random transformer
    # often needs 35-60 Broyden steps to reach 1e-4 on a whole sequence.
    settings = SolverSettings(forward=SolverConfig(max_iter=100))
    tol = settings.forward.tol
    model = make_model(key, settings, dtype=torch.float32)
    slack = 10.0
    report = check_equivalence(model, tokens(), chunk_sizes=(1, 4), slack=slack)
    print(f"\n{key} float32\n{report}")
    assert report.ok, str(report)
    weight = model.head.proj.weight
    width = model.deq.cell.readout_dim
    for mode in report.modes.values():
        # Each solve is within slack * ||f(z)-z|| <= slack * tol * ||f(z)|| of the equilibrium.
        assert mode["max_state_diff"] <= 2 * slack * tol * report.reference["f_norm"]
        assert mode["max_logit_diff"] <= weight.norm(dim=1).max().item() * math.sqrt(width) * mode["max_state_diff"]
        assert mode["stats"]["not_converged"] == 0.0
    assert report.reference["stats"]["rel_max"] < tol


def test_report_flags_unconverged_solves_and_prints_a_table():
    settings = SolverSettings(forward=SolverConfig(max_iter=2))
    model = make_model("transformer", settings, dtype=torch.float32)
    report = check_equivalence(model, tokens(length=12), chunk_sizes=(1, 3, 4))
    assert set(report.modes) == {"token", "chunk=3", "chunk=4"}
    assert not report.ok
    assert not report.reference["converged"]
    text = str(report)
    # the multi-start and per-position summaries first, then the table and the verdict
    starts_line, positions_line, *lines = text.splitlines()
    assert starts_line.startswith("starts: 0 of 3 converged") and positions_line.startswith("positions: rho_t max")
    assert lines[0].split() == ["mode", "max_state_diff", "state_diff", "bound", "rel_state_diff", "max_logit_diff",
                                "mismatches", "nfe", "converged"]
    assert [line.split()[0] for line in lines[1:5]] == ["sequence", "token", "chunk=3", "chunk=4"]
    assert len({line.index(line.split()[1]) for line in lines[:5]}) == 1  # the columns are aligned
    assert "NOT ok" in lines[-1] and "not converged" in lines[-1]
    # nfe is summed over the 12 token solves (3 evaluations each at most)
    assert 12 < report.modes["token"]["stats"]["nfe"] <= 36


def _mode(**overrides) -> dict:
    mode = dict(max_state_diff=1e-6, state_diff=1e-6, rel_state_diff=1e-7, max_logit_diff=1e-5, argmax_mismatches=[],
                stats={"nfe": 10.0}, converged=True, residual=1e-8, bound=2e-7)
    return {**mode, **overrides}


def test_ok_rules():
    reference = {"stats": {"nfe": 5.0}, "converged": True, "residual": 1e-8, "f_norm": 1.0, "rho": 0.5}

    def ok(**overrides) -> bool:
        return EquivalenceReport({"token": _mode(bound=2e-6), "chunk=4": _mode(**overrides)}, reference, 10.0).ok

    assert ok(bound=2e-6)
    assert not ok()  # state diff 1e-6 above its bound 2e-7
    assert not ok(bound=2e-6, converged=False)
    # an argmax flip is fine where the reference's top-2 gap is within twice the logit difference
    assert ok(bound=2e-6, argmax_mismatches=[{"batch": 0, "position": 3, "gap": 2e-5}])
    assert not ok(bound=2e-6, argmax_mismatches=[{"batch": 1, "position": 3, "gap": 3e-5}])
    report = EquivalenceReport({"token": _mode()}, {**reference, "converged": False}, 10.0)
    assert report.failures == ["sequence solve not converged", "token state diff 1.000e-06 > bound 2.000e-07"]


def test_argmax_flip_at_an_exact_tie_is_accepted():
    """Make position 3 an exact top-2 tie: solver noise may flip its argmax, and that must not fail the check."""
    model = make_model("trellis", tight(1))
    x = tokens(batch=1, length=6)
    with torch.no_grad():
        ref = model(x).logits
        first, second = ref[0, 3].topk(2).indices.tolist()
        model.head.proj.bias[first] -= (ref[0, 3, first] - ref[0, 3, second]).item()
    report = check_equivalence(model, x, chunk_sizes=(1, 2, 4))
    for mode in report.modes.values():
        for mismatch in mode["argmax_mismatches"]:
            assert (mismatch["batch"], mismatch["position"]) == (0, 3) and mismatch["gap"] < 1e-12
    assert report.ok, str(report)


@pytest.mark.parametrize("local", [False, True])
def test_equivalence_with_conditioning(local):
    torch.manual_seed(0)
    cfg = ModelConfig(cell="trellis", vocab_size=VOCAB, d_model=16, cond_dim=3)
    model = DEQSequenceModel(cfg, tight(1)).double()
    x = tokens(length=20)
    cond = torch.randn(2, 20, 3, dtype=torch.float64) if local else torch.randn(2, 3, dtype=torch.float64)
    report = check_equivalence(model, x, chunk_sizes=(1, 6), cond=cond)
    assert report.ok, str(report)
    assert max(m["max_state_diff"] for m in report.modes.values()) < 1e-8


def test_contraction_estimate_matches_the_dense_jacobian():
    """rho in the report is the spectral radius of the whole-sequence map's Jacobian at z*: compare with the
    eigenvalues of the dense Jacobian of a small model (one sequence of 6 x 16 values)."""
    model = make_model("transformer", tight(1))
    x = tokens(batch=1, length=6)
    report = check_equivalence(model, x, chunk_sizes=(1,), contraction_iters=96)
    with torch.no_grad():
        z = model(x).z
    ctx = model.deq.cell.prepare(model.embed(x))
    jac = torch.autograd.functional.jacobian(lambda v: model.deq.cell(v.view(1, 6, 16), ctx).reshape(-1), z.reshape(-1))
    dense = torch.linalg.eigvals(jac).abs().max().item()
    assert 0 < dense < 1
    assert abs(report.reference["rho"] - dense) < 1e-6 * max(1.0, dense)


def test_a_systematic_difference_fails_the_check_once_the_tolerance_tightens():
    """Token-by-token solves that reach a slightly different fixed point (here: history keys nudged by 1e-4)
    can hide below a loose tolerance's bound; at tolerance / 1e4 the bound shrinks and they cannot."""
    settings = SolverSettings(forward=SolverConfig(method="anderson", max_iter=400, tol=1e-3))
    model = make_model("transformer", settings)
    x = tokens(batch=1, length=16)
    clean = check_equivalence(model, x, chunk_sizes=(1,), tighten=1e4)
    assert clean.ok, str(clean)
    assert clean.modes["token"]["shrink"] < 1e-2  # the same fixed point: the difference falls with the tolerance

    cell = model.deq.cell
    real = cell.extend_history

    def nudged(ctx, z_star):
        history = real(ctx, z_star)
        history.k = history.k + 1e-4
        return history

    cell.extend_history = nudged
    loose = check_equivalence(model, x, chunk_sizes=(1,))
    broken = check_equivalence(model, x, chunk_sizes=(1,), tighten=1e4)
    assert loose.ok  # at tol 1e-3 the nudge is within what the residuals allow
    assert not broken.ok and "at the tighter tolerance: not a fixed point" in " ".join(broken.failures)
    assert broken.modes["token"]["shrink"] > 0.05


# ------------------------------------------------------------------------------ random starts and per-position rho


def test_random_starts_reach_the_reference_within_the_bound():
    model = make_model("transformer", tight(1))
    x = tokens(length=12)
    report = check_equivalence(model, x, chunk_sizes=(1, 4))
    assert report.ok, str(report)
    assert [s["scale"] for s in report.starts] == pytest.approx([1.0, math.sqrt(3.0), 3.0])
    for start in report.starts:
        assert start["converged"] and start["tol_factor"] == 1.0
        assert start["state_diff"] <= start["bound"] < 1e-6
        assert start["max_state_diff"] < 1e-8
    assert report.positions["dz"].keys() == {"token", "chunk=4", "starts"}
    assert str(report).splitlines()[0].startswith("starts: 3 of 3 converged (1-3x the RMS of z*), max diff ")
    # the same seed draws the same starts, another seed others
    again = check_equivalence(model, x, chunk_sizes=(1,))
    other = check_equivalence(model, x, chunk_sizes=(1,), seed=1)
    assert [s["state_diff"] for s in again.starts] == [s["state_diff"] for s in report.starts]
    assert [s["state_diff"] for s in other.starts] != [s["state_diff"] for s in report.starts]


def test_random_starts_have_the_asked_rms():
    from deqseq.equivalence import _random_start

    z = torch.randn(4, 50, 16, dtype=torch.float64) * torch.linspace(0.1, 10, 50, dtype=torch.float64)[:, None]
    z[0, 0] = 0.0  # no scale at the origin: RMS 1
    z0 = _random_start(z, 3.0, torch.Generator().manual_seed(0))
    ratio = z0.pow(2).mean(-1).sqrt() / z.pow(2).mean(-1).sqrt()
    assert ratio[1:].mean().item() == pytest.approx(3.0, rel=0.05)
    assert 1.5 < z0[0, 0].pow(2).mean().sqrt().item() < 4.5


def _replace_cell_map(model: DEQSequenceModel, fn) -> None:
    """Make the cell's map z -> fn(z) (positions independent); prepare and extend_history are the cell's own."""
    model.deq.cell.forward = lambda z, ctx: fn(z)


def test_a_start_that_reaches_another_fixed_point_fails_the_check():
    """z = tanh(2 z + 0.3) elementwise has two attracting fixed points (~0.98 and ~-0.91): the reference (from zeros)
    reaches the positive one, random starts send some values to the negative one."""
    cfg = SolverConfig(method="picard", max_iter=400, tol=1e-10)
    model = make_model("transformer", SolverSettings(forward=cfg, backward=cfg))
    _replace_cell_map(model, lambda z: torch.tanh(2 * z + 0.3))
    report = check_equivalence(model, tokens(length=8), chunk_sizes=(1,))
    assert report.reference["converged"] and report.reference["rho"] < 0.1  # contracts at the reference
    assert report.modes["token"]["state_diff"] <= report.modes["token"]["bound"]
    assert len(report.failures) == 3, report.failures
    for k, (start, failure) in enumerate(zip(report.starts, report.failures, strict=True)):
        assert start["converged"] and start["state_diff"] > 1.0
        assert failure.startswith(f"start {k} (") and "reached a different fixed point" in failure
    assert not report.ok and "NOT ok: start 0" in str(report)
    assert max(report.positions["dz"]["starts"]) > 1.0 > 1e-8 > max(report.positions["dz"]["token"])


def test_a_map_that_does_not_contract_fails_at_every_position():
    """z = tanh(2 z): the reference stays at the repelling fixed point 0, where every position's map has rho 2."""
    cfg = SolverConfig(method="picard", max_iter=400, tol=1e-10)
    model = make_model("transformer", SolverSettings(forward=cfg, backward=cfg))
    _replace_cell_map(model, lambda z: torch.tanh(2 * z))
    report = check_equivalence(model, tokens(batch=1, length=5), chunk_sizes=(1,))
    assert report.positions["rho"] == pytest.approx([2.0] * 5, abs=1e-9)
    assert report.reference["rho"] == pytest.approx(2.0, abs=1e-9)
    assert report.failures == [
        "the map does not contract at z* (estimated spectral radius 2.000 >= 1): no bound",
        "the single-position map does not contract at position 0 (estimated spectral radius 2.000 >= 1): no bound"]
    assert not report.ok
    # the starts converge to the attracting fixed points +-0.957, where no bound exists to compare with
    assert all(s["converged"] and s["bound"] == math.inf for s in report.starts)
    assert max(report.positions["dz"]["starts"]) > 1.0


TINY_CELLS = {
    "transformer": dict(cell="transformer", d_model=8, n_heads=2, d_ff=16),
    "transformer-w2": dict(cell="transformer", d_model=8, n_heads=2, d_ff=16, window=2),
    "trellis": dict(cell="trellis", d_model=4),
}


@pytest.mark.parametrize("key", list(TINY_CELLS))
def test_per_position_rho_matches_the_dense_jacobians_diagonal_blocks(key):
    """rho_t is the spectral radius of the t-th diagonal block of the whole-sequence Jacobian (block lower-
    triangular for a causal cell), and max_t rho_t the whole Jacobian's spectral radius."""
    torch.manual_seed(0)
    model = DEQSequenceModel(ModelConfig(vocab_size=VOCAB, **TINY_CELLS[key]), tight(1)).double()
    length, dim = 5, model.deq.cell.state_dim
    x = tokens(batch=1, length=length)
    report = check_equivalence(model, x, chunk_sizes=(1,), position_iters=dim, starts=0)
    with torch.no_grad():
        z = model(x).z
    ctx = model.deq.cell.prepare(model.embed(x))
    jac = torch.autograd.functional.jacobian(lambda v: model.deq.cell(v.view(1, length, dim), ctx).reshape(-1),
                                             z.reshape(-1)).view(length, dim, length, dim)
    for s in range(length):
        for t in range(s + 1, length):
            assert jac[s, :, t].abs().max() == 0  # no position depends on a later one
    blocks = [torch.linalg.eigvals(jac[t, :, t]).abs().max().item() for t in range(length)]
    assert report.positions["rho"] == pytest.approx(blocks, abs=1e-6)
    dense = torch.linalg.eigvals(jac.reshape(length * dim, -1)).abs().max().item()
    assert report.reference["rho_positions"] == pytest.approx(dense, abs=1e-6) and 0 < dense < 1
    assert report.reference["rho_position"] == max(range(length), key=blocks.__getitem__)
    assert report.reference["rho_bound"] == max(report.reference["rho"], report.reference["rho_positions"])
    assert report.ok, str(report)


def test_position_fields_shapes_and_values():
    model = make_model("trellis", tight(1))
    length, dim = 10, model.deq.cell.state_dim
    report = check_equivalence(model, tokens(batch=3, length=length), chunk_sizes=(1, 3), starts=2)
    assert len(report.starts) == 2 and [s["scale"] for s in report.starts] == [1.0, 3.0]
    assert len(report.positions["rho"]) == length and all(0 < r < 1 for r in report.positions["rho"])
    assert report.reference["rho_positions"] == max(report.positions["rho"])
    for name, dz in report.positions["dz"].items():
        assert len(dz) == length
        if name in report.modes:
            # the 2-norm over one position's state lies between its largest value and sqrt(dim) times that
            peak = report.modes[name]["max_state_diff"]
            assert peak <= max(dz) <= math.sqrt(dim) * peak
    lines = str(report).splitlines()
    assert lines[1].startswith("positions: rho_t max ") and "(whole-sequence " in lines[1]
    assert "at t=" in lines[1] and "(token)" in lines[1] and "(chunk=3)" in lines[1] and "(starts)" in lines[1]
    assert lines[2].startswith("mode ")

    plain = check_equivalence(model, tokens(batch=3, length=length), chunk_sizes=(1,), starts=0, position_iters=0)
    assert plain.starts == [] and "rho" not in plain.positions and "rho_positions" not in plain.reference
    assert str(plain).splitlines()[0].startswith("positions: largest |dz_t| ")
    with pytest.raises(ValueError, match="starts"):
        check_equivalence(model, tokens(length=4), starts=-1)


def test_start_failure_rules():
    reference = {"stats": {"nfe": 5.0}, "converged": True, "residual": 1e-8, "f_norm": 1.0, "rho": 0.5,
                 "rho_positions": 0.4, "rho_position": 2}

    def start(**overrides) -> dict:
        return {**_mode(bound=2e-6), "scale": 3.0, "tol_factor": 1.0, **overrides}

    modes = {"token": _mode(bound=2e-6)}
    assert EquivalenceReport(modes, reference, 10.0, starts=[start(), start()]).ok
    report = EquivalenceReport(modes, reference, 10.0, starts=[start(), start(state_diff=1e-3), start(converged=False)])
    assert report.failures == ["start 1 (3x the RMS of z*) reached a different fixed point: state diff 1.000e-03 > "
                               "bound 2.000e-06", "start 2 (3x the RMS of z*) not converged"]
    assert ("starts: 2 of 3 converged (3-3x the RMS of z*), max diff 1.000e-03 > bound 2.000e-06 (start 1; relative "
            "1.00e-07)") in str(report)
    bad = EquivalenceReport(modes, {**reference, "rho_positions": 1.2}, 10.0)
    assert bad.failures == ["the single-position map does not contract at position 2 (estimated spectral radius "
                            "1.200 >= 1): no bound"]


def test_the_cli_check_prints_the_starts_and_positions_lines(capsys):
    from deqseq.cli import _check

    cfg = SolverConfig(max_iter=100, tol=1e-6)
    model = make_model("transformer", SolverSettings(forward=cfg, backward=cfg))
    assert _check(model, tokens(batch=1, length=10), check_equivalence) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("equivalence check (") and "3 random starts at the tighter tolerance" in lines[0]
    assert lines[1].startswith("starts: 3 of 3 converged (1-3x the RMS of z*, tol / 100), max diff ")
    assert lines[2].startswith("positions: rho_t max ")
    assert lines[3].startswith("mode ") and lines[-1].startswith("ok (slack 2, contraction ")
