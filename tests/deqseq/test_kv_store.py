"""The transformer's capacity-backed key/value store: decoding appends in place (no O(L) copy per token), with
results bit-for-bit equal to copying the history, and branching or fan-out never writes another branch's rows."""

from __future__ import annotations

import pytest
import torch

from deqseq import DEQSequenceModel, ModelConfig, SolverSettings
from deqseq.cells.transformer import MIN_STORE_ROWS, TransformerHistory
from solvers import SolverConfig

VOCAB = 11


def make_model(window: int | None = None) -> DEQSequenceModel:
    torch.manual_seed(0)
    cfg = SolverConfig(method="anderson", max_iter=40, tol=1e-8)
    config = ModelConfig(vocab_size=VOCAB, cell="transformer", d_model=16, n_heads=2, d_ff=32, window=window)
    return DEQSequenceModel(config, SolverSettings(forward=cfg, backward=cfg)).double().eval()


def copied(history: TransformerHistory) -> TransformerHistory:
    """The same history in fresh tensors, not backed by any store (the copy path)."""
    return TransformerHistory(offset=history.offset, k=history.k.clone(), v=history.v.clone())


def decode(model: DEQSequenceModel, ids: torch.Tensor, prefix: int, use_store: bool):
    """Logits and histories of solving ids[:, prefix:] one position at a time after a prefill of the prefix."""
    with torch.no_grad():
        out = model(ids[:, :prefix])
        history, logits, histories = out.history, [], []
        for t in range(prefix, ids.shape[1]):
            out = model(ids[:, t : t + 1], history=history if use_store else copied(history))
            history = out.history
            logits.append(out.logits)
            histories.append(history)
    return torch.cat(logits, dim=1), histories


@pytest.mark.parametrize("window", [None, 5])
def test_decoding_through_the_store_equals_copying_the_history_bit_for_bit(window):
    model = make_model(window)
    ids = torch.randint(0, VOCAB, (2, 150), generator=torch.Generator().manual_seed(1))
    stored, histories = decode(model, ids, 10, use_store=True)
    plain, _ = decode(model, ids, 10, use_store=False)
    assert torch.equal(stored, plain)
    stores = {id(h.store) for h in histories}
    assert all(h.store is not None for h in histories)
    if window is None:
        # geometric growth: rows 64, then 2 x the history each time it fills (140 positions -> 3 stores)
        assert len(stores) <= 3 and histories[-1].store.capacity >= histories[-1].k.shape[2]
        assert histories[0].store.capacity == max(MIN_STORE_ROWS, 2 * 11)
    else:
        # a window keeps the store's size fixed; a full store is compacted into a new one every ~59 tokens
        assert {h.store.capacity for h in histories} == {MIN_STORE_ROWS} and len(stores) <= 3
        assert all(h.k.shape[2] == 5 for h in histories[5:])
    for h in histories[-3:]:  # every history is a view of its store's rows start .. start+L-1
        assert torch.equal(h.k, h.store.k[:, :, h.start : h.start + h.k.shape[2]])


def test_branches_from_one_history_never_share_rows():
    model = make_model()
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        root = model(ids[:, :12]).history
        first = model(ids[:, 12:13], history=root)  # claims the rows after the root's in a new store
        a = model(ids[:, 13:14], history=first.history)  # appends in place
        b = model(torch.tensor([[3]]), history=first.history)  # a second branch of `first`: copies instead
        a2 = model(ids[:, 14:15], history=a.history)  # `a` continues in place after `b` took its copy
        again = model(ids[:, 12:13], history=root)  # an older history again: copies
        ref = model(ids[:, :15])
        ref_b = model(torch.cat([ids[:, :13], torch.tensor([[3]])], dim=1))
    assert a.history.store is first.history.store and b.history.store is not first.history.store
    assert a2.history.store is a.history.store and again.history.store is not first.history.store
    torch.testing.assert_close(a2.logits[:, -1], ref.logits[:, -1], rtol=0, atol=1e-7)
    torch.testing.assert_close(b.logits[:, -1], ref_b.logits[:, -1], rtol=0, atol=1e-7)
    torch.testing.assert_close(again.logits, first.logits, rtol=0, atol=0)
    torch.testing.assert_close(a2.history.k[:, :, :13], first.history.k, rtol=0, atol=0)


def test_fan_out_leaves_the_store_and_detach_keeps_it():
    model = make_model()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = model(ids[:, 15:16], history=model(ids[:, :15]).history).history
    assert h.store is not None
    fanned, detached = h.select(torch.tensor([0, 0, 1])), h.detach()
    assert fanned.store is None and detached.store is h.store and detached.start == h.start
    assert torch.equal(fanned.k, h.k[[0, 0, 1]])


def test_no_store_under_autograd():
    """Training solves with autograd on: autograd may save history views, so nothing is written in place."""
    model = make_model().train()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    history = model(ids[:, :6]).history.detach()
    out = model(ids[:, 6:], history=history)
    assert out.history.store is None
    out.logits.sum().backward()


def test_a_history_whose_tensors_were_replaced_is_copied_not_read_from_the_store():
    model = make_model()
    ids = torch.randint(0, VOCAB, (1, 14), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        h = model(ids[:, 12:13], history=model(ids[:, :12]).history).history
        h.k = h.k + 1e-3  # what a user or a test may do: the store's rows no longer hold k
        out = model(ids[:, 13:14], history=h)
        ref = model(ids[:, 13:14], history=copied(h))
    assert out.history.store is not h.store
    assert torch.equal(out.logits, ref.logits)


@torch.no_grad()
def test_extend_history_takes_the_last_forwards_keys_only_where_they_are_the_equilibriums(monkeypatch):
    # The last forward of a solve wrote its input's keys and values into the store; when the equilibrium is that
    # input, extend_history keeps them instead of projecting again. The result is bit-for-bit what projecting
    # gives, and a state that differs, or was written to since, is projected.
    cell = make_model().deq.cell
    x = torch.randn(2, 5, cell.inject.in_features, dtype=torch.float64)
    frozen = cell.extend_history(cell.prepare(x[:, :4]), torch.randn(2, 4, 16, dtype=torch.float64))
    z = torch.randn(2, 1, 16, dtype=torch.float64)
    projections = []
    qkv = cell._qkv
    monkeypatch.setattr(cell, "_qkv", lambda a, ctx: projections.append(a) or qkv(a, ctx))

    def extended(forward_at: torch.Tensor | None, z_star: torch.Tensor, bump: bool = False) -> TransformerHistory:
        ctx = cell.prepare(x[:, 4:], copied(frozen))
        if forward_at is not None:
            cell(forward_at, ctx)
            if bump:
                forward_at.mul_(1.0)  # the same values, but written to since the forward
        projections.clear()
        history = cell.extend_history(ctx, z_star)
        return history, len(projections)

    fresh, n_fresh = extended(None, z)
    reused, n_reused = extended(z.clone(), z.clone())
    assert (n_fresh, n_reused) == (1, 0)
    assert torch.equal(reused.k, fresh.k) and torch.equal(reused.v, fresh.v)
    other, n_other = extended(z + 1e-9, z)
    written, n_written = extended(z.clone(), z, bump=True)
    assert (n_other, n_written) == (1, 1)
    for history in (other, written):
        assert torch.equal(history.k, fresh.k) and torch.equal(history.v, fresh.v)


@pytest.mark.parametrize("norm, skip, window", [("pre", False, None), ("pre", True, 4), ("post", False, 3)])
@torch.no_grad()
def test_the_pure_decode_step_is_the_cells_forward(norm, skip, window):
    # pure_f is f for one position against the store, as a static-shape pure function (what fused decoding
    # compiles): it must equal the cell's forward, also for a window whose history starts inside the store.
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, cell="transformer", d_model=16, n_heads=2, d_ff=32, norm=norm,
                         state_skip=skip, window=window)
    model = DEQSequenceModel(config, SolverSettings()).double().eval()
    cell = model.deq.cell
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    history = model(ids[:, :6]).history
    for t in range(6, 12):
        ctx = cell.prepare(model.embed(ids[:, t : t + 1]), history, window=window)
        pure = cell.pure_f(ctx)
        assert pure is not None and pure.fn is cell.pure_f(ctx).fn  # one function object per cell
        z = torch.randn(2, 1, 16, dtype=torch.float64)
        fz, k, v = pure.fn(z, *pure.args)  # f(z) and z's keys and values (what extend_history appends for z)
        torch.testing.assert_close(fz, cell(z, ctx), rtol=1e-12, atol=1e-12)
        own = cell.extend_history(cell.prepare(model.embed(ids[:, t : t + 1]), copied(history), window=window), z)
        torch.testing.assert_close(k, own.k[:, :, -1:], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, own.v[:, :, -1:], rtol=1e-12, atol=1e-12)
        history = cell.extend_history(ctx, fz)
    assert history.start > 0 or window is None


@torch.no_grad()
def test_the_pure_decode_step_is_only_offered_where_it_holds():
    model = make_model()
    cell = model.deq.cell
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(4))
    history = model(ids[:, :6]).history
    assert cell.pure_f(cell.prepare(model.embed(ids[:, :6]))) is None  # several positions, no store
    assert cell.pure_f(cell.prepare(model.embed(ids[:, 6:7]), copied(history))) is not None
    with torch.enable_grad():
        assert cell.pure_f(cell.prepare(model.embed(ids[:, 6:7]), copied(history))) is None  # autograd
    half = make_model().to(torch.bfloat16).deq.cell
    bf16 = TransformerHistory(offset=6, k=history.k.to(torch.bfloat16), v=history.v.to(torch.bfloat16))
    assert half.pure_f(half.prepare(torch.zeros(1, 1, 16, dtype=torch.bfloat16), bf16)) is None  # 16-bit
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cell.pure_f(cell.prepare(model.embed(ids[:, 6:7]), copied(history))) is None  # autocast


def test_a_stream_sizes_the_store_for_all_its_positions():
    # stream reserves prompt + max_new_tokens rows at once (without a window): one store, no doubling, so a
    # fused decode step's attention over the store's capacity reads no more rows than the sequence will have.
    from deqseq import stream

    model = make_model()
    prompt = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(6))
    stores = set()
    for _ in stream(model, prompt, 20, temperature=0, mem_len="all"):
        if model.last_history.offset > 10:
            stores.add(id(model.last_history.store))
    assert len(stores) == 1 and model.last_history.store.capacity == 30
    assert model.last_history.k.shape[2] == 29  # the last token is drawn, not solved


@torch.no_grad()
def test_a_fused_decode_step_appends_the_keys_its_solve_kept(monkeypatch):
    # The fused solve of the pure step keeps z*'s keys and values (PureF.aux); extend_history appends them
    # without projecting z* again, and they are the keys and values projecting gives.
    import dataclasses
    import sys

    monkeypatch.setattr(sys.modules["solvers.fused"], "COMPILE", False)
    model = make_model()
    fused = dataclasses.replace(model.settings.forward, fused=True)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(7))
    history = model(ids[:, :8]).history
    cell = model.deq.cell
    projections = []
    qkv = cell._qkv
    monkeypatch.setattr(cell, "_qkv", lambda a, ctx: projections.append(a) or qkv(a, ctx))
    out = model(ids[:, 8:9], history=copied(history), solver=fused)
    assert not projections
    ctx = cell.prepare(model.embed(ids[:, 8:9]), copied(history))
    projected = cell.extend_history(ctx, out.z)
    assert len(projections) == 1
    torch.testing.assert_close(out.history.k, projected.k, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.history.v, projected.v, rtol=1e-12, atol=1e-12)
