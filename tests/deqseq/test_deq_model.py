"""DEQ layer and sequence model: configs, loss, gradients (implicit vs unrolled), causality, weight-norm caching."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import solvers
from deqseq import DEQLayer, DEQSequenceModel, ModelConfig, SolverSettings
from deqseq.cells import TrellisCell
from deqseq.heads import CategoricalHead
from deqseq.inputs import TokenEmbedding, build_input
from solvers import SolverConfig

VOCAB, B, T = 30, 2, 12


def make_model(cell: str = "transformer", settings: SolverSettings | None = None, dtype=torch.float64,
               seed: int = 0, **overrides) -> DEQSequenceModel:
    """A small random model (d_model 16) in training mode."""
    torch.manual_seed(seed)
    kwargs = dict(cell=cell, vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32)
    return DEQSequenceModel(ModelConfig(**{**kwargs, **overrides}), settings).to(dtype)


def tight(tol: float = 1e-10, batch_dims: int = 1, grad: str = "implicit") -> SolverSettings:
    cfg = SolverConfig(max_iter=400, tol=tol)
    return SolverSettings(forward=cfg, backward=cfg, batch_dims=batch_dims, grad=grad)


def tokens(batch: int = B, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# configs


@pytest.mark.parametrize("kwargs,field,allowed", [
    (dict(cell="lstm"), "ModelConfig.cell", "transformer, trellis"),
    (dict(norm="mid"), "ModelConfig.norm", "post, pre"),
    (dict(input="audio"), "ModelConfig.input", "embedding, linear, mlp, onehot"),
    (dict(in_dim=3), "ModelConfig.in_dim", "only for real-valued inputs"),
    (dict(head="gaussian"), "ModelConfig.head", "categorical"),
    (dict(out_dim=2), "ModelConfig.out_dim", "real-valued heads"),
    (dict(min_std=0.0), "ModelConfig.min_std", "(0, 1000)"),
    (dict(input="onehot", tie_embeddings=True), "ModelConfig.tie_embeddings", "input='embedding'"),
    (dict(d_model=0), "ModelConfig.d_model", ">= 1"),
    (dict(vocab_size=2.5), "ModelConfig.vocab_size", "integer"),
    (dict(dropout=1.0), "ModelConfig.dropout", "[0, 1)"),
    (dict(window=-1), "ModelConfig.window", ">= 0"),
    (dict(cond_dim=-2), "ModelConfig.cond_dim", ">= 0"),
    (dict(d_model=16, n_heads=3), "ModelConfig.d_model", "n_heads"),
    (dict(d_model=16, d_embed=8, tie_embeddings=True), "ModelConfig.tie_embeddings", "d_embed == d_model"),
])
def test_model_config_errors_name_the_field(kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        ModelConfig(**kwargs)
    assert field in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize("kwargs,field,allowed", [
    (dict(grad="unrolled"), "SolverSettings.grad", "implicit"),
    (dict(batch_dims=3), "SolverSettings.batch_dims", "1, 2"),
    (dict(jac_weight=-1.0), "SolverSettings.jac_weight", ">= 0"),
    (dict(jac_prob=1.5), "SolverSettings.jac_prob", "[0, 1]"),
    (dict(forward={"tol": 1e-3}), "SolverSettings.forward", "SolverConfig"),
])
def test_solver_settings_errors_name_the_field(kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        SolverSettings(**kwargs)
    assert field in str(err.value) and allowed in str(err.value)


def test_defaults():
    cfg, s = ModelConfig(), SolverSettings()
    assert (cfg.cell, cfg.vocab_size, cfg.d_model, cfg.embed_dim, cfg.cond_dim) == ("transformer", 256, 128, 128, 0)
    assert (s.forward.method, s.forward.max_iter, s.forward.tol, s.forward.stop) == ("broyden", 30, 1e-4, "rel")
    assert (s.backward.method, s.backward.max_iter, s.backward.tol) == ("broyden", 30, 1e-5)
    assert (s.grad, s.batch_dims, s.jac_weight, s.jac_prob) == ("implicit", 1, 0.0, 1.0)
    assert ModelConfig(d_model=16, d_embed=8).embed_dim == 8
    assert isinstance(build_input(ModelConfig()), TokenEmbedding)


# shapes, readout, tying


@pytest.mark.parametrize("cell,state_dim", [("transformer", 16), ("trellis", 32)])
def test_forward_shapes_and_readout(cell, state_dim):
    model = make_model(cell, d_embed=8)
    out = model(tokens())
    assert out.z.shape == (B, T, state_dim) and out.logits.shape == (B, T, VOCAB)
    assert model.deq.cell.readout_dim == 16 and out.history.offset == T
    assert out.stats.nstep.shape == (B,) and out.jac_penalty is None
    assert model.last_stats is out.stats
    assert all(not t.requires_grad for t in vars(out.history).values() if isinstance(t, torch.Tensor))
    expected = model.head(out.z[..., :16])  # the trellis head reads h = z[..., :hidden]
    assert (out.logits - expected).abs().max() == 0


def test_tied_embeddings_share_one_matrix():
    model = make_model(tie_embeddings=True)
    assert model.head.proj.weight is model.input.weight
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in make_model().parameters()) - 16 * VOCAB
    with pytest.raises(ValueError, match="tie"):
        CategoricalHead(8, VOCAB).tie(model.input.weight)


# loss and metrics


def test_loss_uses_targets_when_given():
    model = make_model(settings=tight(1e-8)).eval()
    x, t = tokens(), tokens(seed=2)
    logits = model(x).logits
    by_hand = -logits.log_softmax(-1).gather(-1, t[..., None]).mean()
    loss, metrics = model.loss({"x": x, "t": t})
    assert abs(loss.item() - by_hand.item()) < 1e-12 and abs(metrics["nll"] - by_hand.item()) < 1e-12


def test_loss_defaults_to_next_step_targets():
    model = make_model(settings=tight(1e-8)).eval()
    x = tokens()
    logits = model(x).logits
    by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    loss, metrics = model.loss({"x": x})
    assert abs(loss.item() - by_hand.item()) < 1e-12
    assert {"nll", "loss", "fwd_nfe", "fwd_rel_max", "fwd_not_converged"} <= set(metrics)
    assert "jac" not in metrics and all(isinstance(v, float) for v in metrics.values())
    assert metrics["fwd_nfe"] == float(model.last_stats.nfe) > 1
    # with a history the batch continues a sequence: the same nll as those positions scored at once
    history = model(x[:, :6]).history
    rest, _ = model.loss({"x": x[:, 6:], "history": history})
    by_hand = F.cross_entropy(logits[:, 6:-1].reshape(-1, VOCAB), x[:, 7:].reshape(-1))
    assert abs(rest.item() - by_hand.item()) < 1e-7


def test_backward_stats_after_loss_backward():
    model = make_model()
    loss, _ = model.loss({"x": tokens()})
    assert model.last_stats.backward is None
    loss.backward()
    assert model.last_stats.backward is not None and model.last_stats.backward.nfe > 1
    assert "fwd_bwd_nfe" in model.last_stats.summary("fwd_")


def test_jacobian_penalty_is_in_the_loss_and_differentiable():
    model = make_model("trellis", tight(1e-8))
    model.settings.jac_weight = 0.5
    torch.manual_seed(3)
    loss, metrics = model.loss({"x": tokens()})
    assert metrics["jac"] > 0 and abs(metrics["loss"] - (metrics["nll"] + 0.5 * metrics["jac"])) < 1e-12
    loss.backward()
    with_jac = grads(model)
    model.zero_grad()
    model.settings.jac_weight = 0.0
    torch.manual_seed(3)
    model.loss({"x": tokens()})[0].backward()
    without = grads(model)
    assert (with_jac["deq.cell.conv_h.weight"] - without["deq.cell.conv_h.weight"]).abs().max() > 1e-6
    # the penalty alone has a gradient
    model.zero_grad()
    model(tokens(), jacobian=True).jac_penalty.backward()
    assert model.deq.cell.conv_h.weight.grad.abs().max() > 0
    # it is drawn with probability jac_prob, and only in training
    model.settings.jac_weight, model.settings.jac_prob = 0.5, 0.0
    assert "jac" not in model.loss({"x": tokens()})[1]
    model.settings.jac_prob = 1.0
    assert "jac" not in model.eval().loss({"x": tokens()})[1]


# gradients


@pytest.mark.parametrize("cell", ["transformer", "trellis"])
def test_implicit_gradient_matches_long_unroll(cell):
    """The cell is a contraction at this init (spectral radius < 0.9), so 400 weight-tied layers reach z*."""
    model = make_model(cell, tight(1e-12), cond_dim=3)
    batch = {"x": tokens(batch=1, length=10), "c": torch.randn(1, 3, dtype=torch.float64)}
    with torch.no_grad():
        out = model(batch["x"], cond=batch["c"])
        ctx = model.deq.cell.prepare(model.embed(batch["x"], batch["c"]))
        radius = solvers.spectral_radius(lambda z: model.deq.cell(z, ctx), out.z, iters=40)
    assert radius.max() < 0.9
    loss, _ = model.loss(batch)
    loss.backward()
    implicit = grads(model)
    assert model.last_stats.backward.converged.all()
    model.zero_grad()
    model.settings.grad = "unrolled:400"
    loss_unrolled, _ = model.loss(batch)
    loss_unrolled.backward()
    unrolled = grads(model)
    assert abs(loss.item() - loss_unrolled.item()) < 1e-12
    assert set(implicit) == set(unrolled) == {n for n, _ in model.named_parameters()}
    for name, g in unrolled.items():
        assert g.norm() > 0, name
        assert (implicit[name] - g).norm() / g.norm() < 1e-7, name


def test_unrolled_is_an_explicit_weight_tied_network():
    model = make_model(settings=SolverSettings(grad="unrolled:5"))
    x = tokens()
    out = model(x)
    assert out.stats.method == "unrolled:5" and out.stats.nfe == 5
    ctx = model.deq.cell.prepare(model.embed(x))
    z = torch.zeros(B, T, 16, dtype=torch.float64)
    for _ in range(5):
        z = model.deq.cell(z, ctx)
    assert (out.z - z).abs().max() < 1e-14
    model.loss({"x": x})[0].backward()
    assert all(p.grad is not None for p in model.parameters())
    # a trainer switches to the implicit gradient after pretraining
    model.settings = SolverSettings(grad="implicit")
    assert model.deq.settings.grad == "implicit" and model(x).stats.method == "broyden"
    with pytest.raises(TypeError):
        model.settings = {"grad": "implicit"}


@pytest.mark.parametrize("cell", ["transformer", "trellis"])
def test_batch_dims_2_is_exactly_causal(cell):
    model = make_model(cell, tight(1e-10, batch_dims=2), d_embed=8)
    x = tokens(length=16)
    t = 6
    x2 = x.clone()
    x2[:, t + 1 :] = (x2[:, t + 1 :] + 7) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(x2)
    assert (a.z[:, : t + 1] - b.z[:, : t + 1]).abs().max() < 1e-12
    assert (a.logits[:, : t + 1] - b.logits[:, : t + 1]).abs().max() < 1e-12
    assert (a.z[:, t + 1 :] - b.z[:, t + 1 :]).abs().max() > 1e-3

    # the loss at position t has exactly zero gradient w.r.t. the embedded inputs after t
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["emb"] = output

    handle = model.input.register_forward_hook(keep)
    out = model(x)
    handle.remove()
    model.head.nll(out.logits[:, t], x[:, t + 1]).sum().backward()
    g = captured["emb"].grad
    assert torch.all(g[:, t + 1 :] == 0)
    assert g[:, t].abs().min() > 0


# Adjoint systems before t start at exactly zero residual (no adjoint signal has reached them yet): they
# must not freeze before the later positions they depend on have settled (anticausal coupling).
def test_batch_dims_2_implicit_gradient_of_one_position():
    def gradient(grad: str, batch_dims: int) -> dict[str, torch.Tensor]:
        model = make_model("trellis", tight(1e-12, batch_dims=batch_dims, grad=grad))
        x = tokens(batch=1)
        model.head.nll(model(x).logits[:, 6], x[:, 7]).sum().backward()
        return grads(model)

    unrolled = gradient("unrolled:400", 1)
    for name, g in gradient("implicit", 2).items():
        assert (g - unrolled[name]).norm() <= 1e-7 * unrolled[name].norm(), name


# conditioning


def test_conditioning_global_and_local():
    model = make_model("trellis", tight(1e-8), cond_dim=3)
    x = tokens()
    base = model(x, cond=torch.zeros(B, 3, dtype=torch.float64)).logits
    c_global = torch.randn(B, 3, dtype=torch.float64)
    out = model(x, cond=c_global)
    assert (out.logits - base).abs().max() > 1e-3
    # a global vector equals the same vector at every position
    local_same = model(x, cond=c_global[:, None].expand(B, T, 3)).logits
    assert (local_same - out.logits).abs().max() < 1e-8
    c_local = torch.randn(B, T, 3, dtype=torch.float64)
    loss, _ = model.loss({"x": x, "c": c_local})
    loss.backward()
    assert model.cond.weight.grad.abs().max() > 0 and model.cond.bias.grad.abs().max() > 0
    with pytest.raises(ValueError, match="cond"):
        model(x, cond=torch.randn(B, T + 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="cond_dim"):
        make_model()(x, cond=c_global)


# weight norm: one normalisation per forward, gradients intact


def _count_parametrization_calls(model):
    count = [0]
    handles = [
        m.parametrizations[name][0].register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        for m in model.modules() if torch.nn.utils.parametrize.is_parametrized(m) for name in m.parametrizations
    ]
    return count, handles


@pytest.mark.parametrize("cell,n_weights", [("transformer", 5), ("trellis", 2)])
def test_weight_norm_is_cached_during_the_solve(cell, n_weights, monkeypatch):
    model = make_model(cell, tight(1e-10), weight_norm=True)
    x = tokens()
    count, handles = _count_parametrization_calls(model)
    loss, _ = model.loss({"x": x})
    loss.backward()
    for h in handles:
        h.remove()
    assert model.last_stats.nfe > 10 and count[0] == n_weights  # once per weight, not once per iteration
    cached = grads(model)
    assert any("original0" in n for n in cached) and any("original1" in n for n in cached)
    assert all(g.abs().max() > 0 for g in cached.values())

    model.zero_grad()
    monkeypatch.setattr(torch.nn.utils.parametrize, "cached", contextlib.nullcontext)
    model.loss({"x": x})[0].backward()
    for name, g in grads(model).items():
        assert (cached[name] - g).norm() <= 1e-9 * g.norm(), name


# warm start and the bare layer


def test_warm_start_is_the_z0_argument_and_the_layer_keeps_no_state():
    model = make_model("trellis", tight(1e-8)).eval()
    x = tokens()
    with torch.no_grad():
        first = model(x)
        again = model(x, z0=first.z)
        cold = model(x)
    assert again.stats.nstep.max() == 0 and again.stats.nfe == 1  # started at the equilibrium
    assert (again.z - first.z).abs().max() < 1e-7
    assert cold.stats.nstep.max() > 0 and torch.equal(cold.z, first.z)  # no hidden warm start between calls
    with pytest.raises(ValueError, match="z0 must have shape"):
        model(x, z0=first.z[:, :5])


def test_deq_layer_alone():
    cell = TrellisCell(hidden=8, d_input=4).double()
    layer = DEQLayer(cell)
    x = torch.randn(B, T, 4, dtype=torch.float64)
    out = layer(x)
    assert out.z.shape == (B, T, 16) and out.history.offset == T
    with pytest.raises(ValueError, match="z0"):
        layer(x, z0=torch.zeros(B, T, 8, dtype=torch.float64))
    rest = layer(torch.randn(B, 3, 4, dtype=torch.float64), history=out.history, z0=out.z[:, -3:])
    assert rest.history.offset == T + 3


def test_default_transformer_converges_within_default_solver_budget():
    # Without the identity path from z (state_skip=False) the default cell contracts: a random default
    # model reaches rel 1e-4 within the default 30 Broyden steps; the classic skip block does not.
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 48))
    results = {}
    for skip in (False, True):
        torch.manual_seed(0)
        model = DEQSequenceModel(ModelConfig(state_skip=skip)).eval()
        with torch.no_grad():
            results[skip] = model(x).stats
    assert bool(results[False].converged.all()) and float(results[False].rel_residual.max()) < 1e-4
    assert not bool(results[True].converged.all())


def test_transformer_jacobian_penalty_is_differentiable():
    # The penalty is differentiated twice; CPU flash attention has no double backward, so the layer must
    # evaluate it with the math kernel.
    torch.manual_seed(0)
    model = DEQSequenceModel(ModelConfig(d_model=16, n_heads=2, d_ff=32),
                             SolverSettings(jac_weight=1.0, jac_prob=1.0)).train()
    loss, metrics = model.loss({"x": torch.randint(0, 256, (2, 8))})
    loss.backward()
    assert metrics["jac"] > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
