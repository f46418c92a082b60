"""Tests of the weight-tied causal cells: causality, history equivalence, RoPE, window, dropout, options."""

import pytest
import torch
from torch.nn.utils import parametrize

from deqseq import ModelConfig
from deqseq.cells import (
    CELLS,
    Cell,
    TransformerCell,
    TrellisCell,
    apply_rope,
    build_cell,
    rope_tables,
)

B, T, D_IN = 2, 16, 8
EXACT = 1e-12

CELL_KWARGS = {
    "trellis-k2d1": ("trellis", dict(hidden=12, d_input=D_IN, kernel_size=2, dilation=1)),
    "trellis-k3d2": ("trellis", dict(hidden=12, d_input=D_IN, kernel_size=3, dilation=2)),
    "transformer": ("transformer", dict(d_model=16, n_heads=2, d_ff=32, d_input=D_IN)),
    "transformer-w5": ("transformer", dict(d_model=16, n_heads=2, d_ff=32, d_input=D_IN, window=5)),
    "transformer-post-w5": (
        "transformer",
        dict(d_model=24, n_heads=3, d_ff=32, d_input=D_IN, window=5, norm="post"),
    ),
}
ALL = list(CELL_KWARGS)


def make_cell(key: str, seed: int = 0, **overrides) -> Cell:
    """A float64 cell in eval mode with seeded random weights."""
    name, kwargs = CELL_KWARGS[key]
    torch.manual_seed(seed)
    cls = {"trellis": TrellisCell, "transformer": TransformerCell}[name]
    return cls(**{**kwargs, **overrides}).double().eval()


def rand_zx(cell: Cell, seed: int = 1, batch: int = B, length: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    """A random state z (batch, length, state_dim) and input x (batch, length, D_IN)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, length, cell.state_dim, generator=g, dtype=torch.float64)
    x = torch.randn(batch, length, D_IN, generator=g, dtype=torch.float64)
    return z, x


def apply(cell: Cell, z, x, history=None, attn_mask=None) -> torch.Tensor:
    """One application f(z) with a fresh context."""
    return cell(z, cell.prepare(x, history, attn_mask))


def freeze(cell: Cell, z, x, chunk: int, history=None):
    """History after freezing z (with inputs x) `chunk` positions at a time."""
    for s in range(0, z.shape[1], chunk):
        ctx = cell.prepare(x[:, s : s + chunk], history)
        history = cell.extend_history(ctx, z[:, s : s + chunk])
    return history


def maxdiff(a, b) -> float:
    return (a - b).abs().max().item()


def bump(t: torch.Tensor) -> torch.Tensor:
    """A non-constant perturbation of t (a constant one would be erased by a pre-LayerNorm)."""
    return torch.linspace(-1.0, 2.0, t.shape[-1], dtype=t.dtype).expand_as(t)


# 1. causality of one application


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("t", [0, 6, T - 2])
def test_one_application_is_causal(key, t):
    cell = make_cell(key)
    z, x = rand_zx(cell)
    out = apply(cell, z, x)
    z2, x2 = z.clone(), x.clone()
    z2[:, t + 1 :] += torch.randn_like(z2[:, t + 1 :])
    x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
    out2 = apply(cell, z2, x2)
    assert maxdiff(out[:, : t + 1], out2[:, : t + 1]) < EXACT
    assert maxdiff(out[:, t + 1 :], out2[:, t + 1 :]) > 1e-6  # the perturbation did reach the future


# 2. history equivalence of one application


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("s,chunk", [(7, 7), (7, 1), (7, 3), (1, 1), (12, 5)])
def test_history_equivalence(key, s, chunk):
    cell = make_cell(key)
    z, x = rand_zx(cell)
    full = apply(cell, z, x)
    history = freeze(cell, z[:, :s], x[:, :s], chunk)
    assert history.offset == s
    suffix = apply(cell, z[:, s:], x[:, s:], history)
    assert suffix.shape == (B, T - s, cell.state_dim)
    assert maxdiff(full[:, s:], suffix) < EXACT


@pytest.mark.parametrize("key", ALL)
def test_token_by_token_matches_full_sequence(key):
    cell = make_cell(key)
    z, x = rand_zx(cell)
    full = apply(cell, z, x)
    history = None
    for t in range(T):
        ctx = cell.prepare(x[:, t : t + 1], history)
        assert maxdiff(cell(z[:, t : t + 1], ctx), full[:, t : t + 1]) < EXACT
        history = cell.extend_history(ctx, z[:, t : t + 1])
    assert history.offset == T


def test_trellis_history_keeps_exactly_the_left_context():
    cell = make_cell("trellis-k3d2")
    z, x = rand_zx(cell)
    for s in (1, 3, 4, 9):
        history = freeze(cell, z[:, :s], x[:, :s], chunk=2)
        pad = cell.pad
        assert pad == 4 and history.h.shape == (B, pad, 12) and history.x.shape == (B, pad, D_IN)
        n = min(s, pad)  # real positions, the rest are the zeros of the sequence start
        assert maxdiff(history.h[:, pad - n :], z[:, s - n : s, :12]) == 0
        assert maxdiff(history.x[:, pad - n :], x[:, s - n : s]) == 0
        assert history.h[:, : pad - n].abs().sum() == 0 and history.x[:, : pad - n].abs().sum() == 0
        assert maxdiff(history.c, z[:, s - 1, 12:]) == 0


# 3. each frozen position is projected into the KV history exactly once


@pytest.mark.parametrize("key", ["transformer", "transformer-w5"])
def test_kv_projection_count(key):
    cell = make_cell(key)
    z, x = rand_zx(cell)
    assert cell.kv_projections == 0
    history = freeze(cell, z[:, :10], x[:, :10], chunk=1)
    assert cell.kv_projections == 10
    expected_len = 10 if cell.window is None else cell.window
    assert history.k.shape == history.v.shape == (B, 2, expected_len, 8)
    ctx = cell.prepare(x[:, 10:], history)
    zz = z[:, 10:]
    for _ in range(25):
        zz = cell(zz, ctx)
    assert cell.kv_projections == 10
    cell.extend_history(ctx, zz)
    assert cell.kv_projections == T


# 4. rotary embeddings at absolute positions


def test_rope_table_at_offset_is_a_slice_of_the_full_table():
    for dtype in (torch.float64, torch.float32):
        cos_full, sin_full = rope_tables(0, 40, 8, dtype=dtype)
        cos, sin = rope_tables(27, 13, 8, dtype=dtype)
        assert cos.shape == (13, 4)
        assert torch.equal(cos, cos_full[27:]) and torch.equal(sin, sin_full[27:])
    q = torch.randn(2, 3, 13, 8, dtype=torch.float64)
    cos_full, sin_full = rope_tables(0, 40, 8, dtype=torch.float64)
    cos, sin = rope_tables(27, 13, 8, dtype=torch.float64)
    assert maxdiff(apply_rope(q, cos, sin), apply_rope(q, cos_full[27:], sin_full[27:])) == 0


def test_rope_is_a_rotation_depending_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, generator=g, dtype=torch.float64)
    cos, sin = rope_tables(0, 64, 16, dtype=torch.float64)

    def rot(v, p):
        return apply_rope(v, cos[p], sin[p])

    assert abs(rot(q, 5).norm() - q.norm()) < EXACT  # norm preserving
    assert maxdiff(rot(q, 0), q) < EXACT  # position 0 is the identity
    # <R_m q, R_n k> depends only on m - n
    assert abs(rot(q, 9) @ rot(k, 4) - rot(q, 50) @ rot(k, 45)) < 1e-10
    assert abs(rot(q, 9) @ rot(k, 4) - rot(q, 9) @ rot(k, 5)) > 1e-6


# 5. the attention window


@pytest.mark.parametrize("key", ["transformer-w5", "transformer-post-w5"])
def test_window_limits_the_receptive_field(key):
    cell = make_cell(key)
    w, t = cell.window, 12
    z, x = rand_zx(cell)
    out = apply(cell, z, x)
    z2, x2 = z.clone(), x.clone()
    z2[:, : t - w] += torch.randn_like(z2[:, : t - w])
    x2[:, : t - w] += torch.randn_like(x2[:, : t - w])
    assert maxdiff(out[:, t], apply(cell, z2, x2)[:, t]) < EXACT
    z3 = z.clone()
    z3[:, t - w] += bump(z3[:, t - w])
    assert maxdiff(out[:, t], apply(cell, z3, x)[:, t]) > 1e-6
    x3 = x.clone()
    x3[:, t - w] += bump(x3[:, t - w])
    assert maxdiff(out[:, t], apply(cell, z, x3)[:, t]) > 1e-6


def test_no_window_sees_the_whole_past():
    cell = make_cell("transformer")
    z, x = rand_zx(cell)
    z2 = z.clone()
    z2[:, 0] += bump(z2[:, 0])
    assert maxdiff(apply(cell, z, x)[:, T - 1], apply(cell, z2, x)[:, T - 1]) > 1e-6


@pytest.mark.parametrize("key", ["trellis-k2d1", "trellis-k3d2"])
def test_trellis_receptive_field(key):
    cell = make_cell(key)
    pad, t, H = cell.pad, 10, 12
    z, x = rand_zx(cell)
    out = apply(cell, z, x)
    z2, x2 = z.clone(), x.clone()
    z2[:, : t - pad, :H] += 1.0  # h before the conv's reach
    z2[:, : t - 1, H:] += 1.0  # c before the previous position
    x2[:, : t - pad] += 1.0
    assert maxdiff(out[:, t], apply(cell, z2, x2)[:, t]) < EXACT
    for pos, part in ((t - pad, slice(0, H)), (t - 1, slice(H, 2 * H))):
        z3 = z.clone()
        z3[:, pos, part] += 1.0
        assert maxdiff(out[:, t], apply(cell, z3, x)[:, t]) > 1e-6


# 6. variational dropout


def _masks(ctx):
    """The dropout masks held by a context (none in eval mode)."""
    names = ("attn_drop", "ff_drop", "h_drop")
    return [getattr(ctx, n) for n in names if getattr(ctx, n, None) is not None]


@pytest.mark.parametrize("key", ["transformer", "trellis-k3d2"])
def test_variational_dropout(key):
    p = 0.3
    cell = make_cell(key, dropout=p).train()
    z, x = rand_zx(cell)
    ctx = cell.prepare(x)
    masks = _masks(ctx)
    assert len(masks) == (2 if key == "transformer" else 1)
    for m in masks:
        assert m.shape[:2] == (B, 1)  # one mask per sequence: the same at every position and iteration
        values = set(m.unique().tolist())
        assert values <= {0.0, 1 / (1 - p)} and len(values) == 2
    out1, out2 = cell(z, ctx), cell(z, ctx)
    assert torch.equal(out1, out2)  # f is deterministic during a solve
    ctx2 = cell.prepare(x)
    assert any(not torch.equal(a, b) for a, b in zip(masks, _masks(ctx2), strict=True))
    assert maxdiff(cell(z, ctx2), out1) > 1e-6

    cell.eval()
    ctx = cell.prepare(x)
    assert _masks(ctx) == []
    reference = make_cell(key, dropout=0.0)
    reference.load_state_dict(cell.state_dict())
    assert maxdiff(cell(z, ctx), apply(reference, z, x)) == 0
    assert maxdiff(out1, apply(reference, z, x)) > 1e-6  # dropout did act in training


def test_dropout_keeps_causality_in_training():
    cell = make_cell("transformer-w5", dropout=0.3).train()
    z, x = rand_zx(cell)
    ctx = cell.prepare(x)
    z2 = z.clone()
    z2[:, 8:] += bump(z2[:, 8:])
    assert maxdiff(cell(z, ctx)[:, :8], cell(z2, ctx)[:, :8]) < EXACT


# 7. weight normalisation


@pytest.mark.parametrize("key", ["transformer-w5", "trellis-k3d2"])
def test_weight_norm(key):
    cell = make_cell(key, weight_norm=True)
    is_transformer = key.startswith("transformer")
    layers = ["inject", "qkv", "proj", "ff1", "ff2"] if is_transformer else ["conv_x", "conv_h"]
    for name in layers:
        assert parametrize.is_parametrized(getattr(cell, name), "weight")
    z, x = rand_zx(cell)
    out = apply(cell, z, x)
    assert torch.isfinite(out).all()
    history = freeze(cell, z[:, :5], x[:, :5], chunk=1)
    assert maxdiff(apply(cell, z[:, 5:], x[:, 5:], history), out[:, 5:]) < EXACT
    out.sum().backward()
    for name in layers:
        assert getattr(cell, name).parametrizations.weight.original0.grad is not None


# 8. an explicit attention mask replaces the causal one


def test_attn_mask_replaces_causal_mask():
    cell = make_cell("transformer-w5")
    z, x = rand_zx(cell)
    z2 = z.clone()
    z2[:, T - 1] += bump(z2[:, T - 1])
    for mask in (torch.ones(T, T, dtype=torch.bool), torch.ones(B, 1, T, T, dtype=torch.bool)):
        out, out2 = apply(cell, z, x, attn_mask=mask), apply(cell, z2, x, attn_mask=mask)
        assert maxdiff(out[:, 0], out2[:, 0]) > 1e-6
    assert maxdiff(apply(cell, z, x)[:, 0], apply(cell, z2, x)[:, 0]) < EXACT
    # a mask equal to the default one gives the same result
    causal = torch.ones(T, T, dtype=torch.bool).tril() & torch.ones(T, T, dtype=torch.bool).triu(-5)
    assert maxdiff(apply(cell, z, x, attn_mask=causal), apply(cell, z, x)) < EXACT
    with pytest.raises(ValueError, match="attn_mask"):
        cell.prepare(x, attn_mask=torch.ones(T, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        make_cell("trellis-k2d1").prepare(x, attn_mask=torch.ones(T, T, dtype=torch.bool))


# 9. factory and history utilities


def test_build_cell_from_the_config():
    trellis = build_cell(ModelConfig(cell="trellis", d_model=4, d_embed=3, kernel_size=3, dilation=2))
    assert isinstance(trellis, TrellisCell) and trellis.state_dim == 8 and trellis.pad == 4
    assert trellis.conv_x.in_channels == 3
    transformer = build_cell(ModelConfig(d_model=8, n_heads=2, d_ff=16, d_embed=3, window=5, norm="post"))
    assert isinstance(transformer, TransformerCell) and transformer.window == 5 and transformer.norm == "post"
    assert transformer.inject.in_features == 3 and transformer.d_ff == 16
    assert sorted(CELLS) == ["transformer", "trellis"]
    with pytest.raises(ValueError, match="unknown cell 'nope'") as err:
        CELLS.entry("nope")
    assert "transformer" in str(err.value) and "trellis" in str(err.value)


@pytest.mark.parametrize("key", ["transformer-w5", "trellis-k3d2"])
def test_history_select_and_detach(key):
    cell = make_cell(key)
    z, x = rand_zx(cell)
    z.requires_grad_(True)
    history = freeze(cell, z[:, :6], x[:, :6], chunk=2)
    assert history.batch_size == B
    detached = history.detach()
    assert detached.offset == 6
    assert all(not t.requires_grad for t in vars(detached).values() if isinstance(t, torch.Tensor))
    flip = torch.tensor([1, 0])
    out = apply(cell, z[:, 6:], x[:, 6:], history)
    out_flip = apply(cell, z[flip, 6:], x[flip, 6:], history.select(flip))
    assert maxdiff(out[flip], out_flip) < EXACT
    one = history.select(torch.tensor([1]))
    assert one.batch_size == 1
    with pytest.raises(ValueError, match="batch size"):
        cell.prepare(x, one)


@pytest.mark.parametrize("key", ["transformer", "trellis-k2d1"])
def test_empty_history(key):
    cell = make_cell(key)
    history = cell.empty_history(3, "cpu", torch.float64)
    assert history.offset == 0 and history.batch_size == 3
    z, x = rand_zx(cell, batch=3, length=4)
    assert maxdiff(apply(cell, z, x, history), apply(cell, z, x)) == 0
