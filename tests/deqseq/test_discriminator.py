"""Next-token discriminator (2T layout, mask, leakage) and adversarial training (relaxations, losses, steps)."""

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

from deqseq import DEQSequenceModel, ModelConfig, SolverSettings
from deqseq.adversarial import (
    ADVERSARIAL_MODES,
    AdversarialTraining,
    gumbel_noise,
    relaxed_one_hot,
    token_embeddings,
)
from deqseq.discriminator import (
    NextTokenDiscriminator,
    default_discriminator_settings,
    layout_positions,
    next_token_mask,
)
from deqseq.heads import MixtureOfGaussiansHead

B, T, C = 2, 5, 8
VOCAB = 8

# Hand-written masks: rows are queries, columns keys; layout [init, prev_0 .. prev_{T-2}, curr_0 .. curr_{T-1}].
EXPECTED_MASKS = {
    1: [[1, 0],
        [1, 1]],
    2: [[1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 0, 1, 0],
        [1, 1, 0, 1]],
    3: [[1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [1, 1, 1, 0, 0, 1]],
    4: [[1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 0],
        [1, 1, 1, 1, 0, 0, 0, 1]],
}


def settings(tol: float = 1e-10, max_iter: int = 100, batch_dims: int = 2, method: str = "anderson") -> SolverSettings:
    """The default discriminator settings with another tolerance, iteration limit, layout or method."""
    base = default_discriminator_settings()
    cfg = dataclasses.replace(base.forward, method=method, max_iter=max_iter, tol=tol)
    return dataclasses.replace(base, forward=cfg, backward=cfg, batch_dims=batch_dims)


def make_disc(s: SolverSettings | None = None, dtype=torch.float64, seed: int = 0) -> NextTokenDiscriminator:
    torch.manual_seed(seed)
    return NextTokenDiscriminator(C, max_len=6, d_model=16, n_heads=2, d_ff=32, settings=s).to(dtype)


def inputs(seed: int = 1, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, C, generator=g, dtype=dtype), torch.randn(B, T, C, generator=g, dtype=dtype)


def perturbed(x: torch.Tensor, positions, seed: int) -> torch.Tensor:
    """x with fresh noise added at the given time positions."""
    g = torch.Generator().manual_seed(seed)
    out = x.clone()
    for p in positions:
        out[:, p] += torch.randn(x.shape[0], x.shape[2], generator=g, dtype=x.dtype)
    return out


def max_leak(D: NextTokenDiscriminator, prev: torch.Tensor, curr: torch.Tensor) -> float:
    """Largest change of score[:, i] over all i when prev[:, i:] or curr[:, j != i] change."""
    with torch.no_grad():
        base = D(prev, curr)
        worst = 0.0
        for i in range(T):
            s = D(perturbed(prev, range(i, T), seed=10 + i), curr)
            worst = max(worst, (s[:, i] - base[:, i]).abs().max().item())
            s = D(prev, perturbed(curr, [j for j in range(T) if j != i], seed=20 + i))
            worst = max(worst, (s[:, i] - base[:, i]).abs().max().item())
    return worst


# mask and layout


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_mask_pattern(length):
    expected = torch.tensor(EXPECTED_MASKS[length], dtype=torch.bool)
    mask = next_token_mask(length)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    assert torch.equal(NextTokenDiscriminator.attention_mask(length), expected)
    assert torch.equal(make_disc().attention_mask(length, device="cpu"), expected)


def test_mask_rejects_empty_sequences():
    with pytest.raises(ValueError, match="T must be >= 1"):
        next_token_mask(0)


def test_layout_positions_match_the_tokens():
    # first half: init -> 0, prev_j -> j+1; prediction i -> i+1 (the position prev_i has)
    assert layout_positions(3).tolist() == [0, 1, 2, 1, 2, 3]


def test_a_real_prediction_is_processed_like_its_ground_truth_slot():
    # With curr = prev, prediction i holds prev_i at position i+1 and sees positions 0..i and itself, exactly
    # like first-half position i+1: equal equilibria check the positions (learned and rotary) and the mask.
    D = make_disc(settings())
    prev, _ = inputs()
    with torch.no_grad():
        z = D.states(prev, prev)
    assert z.shape == (B, 2 * T, 16)
    assert (z[:, T:-1] - z[:, 1:T]).abs().max() < 1e-9
    assert (z[:, T:-1] - z[:, :T - 1]).abs().max() > 1e-2


def test_layout():
    D = make_disc()
    prev, curr = inputs()
    x = D.layout(prev, curr)
    assert x.shape == (B, 2 * T, C)
    assert torch.equal(x[:, 0], D.init.detach().expand(B, C))
    assert torch.equal(x[:, 1:T], prev[:, :-1])
    assert torch.equal(x[:, T:], curr)
    assert D(prev, curr).shape == (B, T)


def test_layout_errors():
    D = make_disc()
    with pytest.raises(ValueError, match="max_len=6"):
        D.layout(torch.zeros(B, 7, C, dtype=torch.float64), torch.zeros(B, 7, C, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        D.layout(torch.zeros(B, 3, C), torch.zeros(B, 4, C))
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        D.layout(torch.zeros(B, 3, 5), torch.zeros(B, 3, 5))


def test_default_settings_converge_per_position():
    s = default_discriminator_settings()
    assert (s.forward.method, s.forward.tol, s.forward.max_iter, s.batch_dims, s.grad) == (
        "anderson", 1e-4, 30, 2, "implicit")
    D = make_disc(dtype=torch.float32)
    prev, curr = inputs(dtype=torch.float32)
    D(prev, curr).sum().backward()
    stats = D.last_stats
    assert stats.nstep.shape == (B, 2 * T)
    assert bool(stats.converged.all()) and bool(stats.backward.converged.all())
    assert stats.nfe < 31


# leakage


def test_scores_do_not_leak_across_the_mask():
    D = make_disc(settings())
    assert max_leak(D, *inputs()) < 1e-12


def test_gradients_do_not_leak_across_the_mask():
    D = make_disc()  # the default settings
    assert D.settings == default_discriminator_settings()
    prev, curr = (t.requires_grad_() for t in inputs())
    scores = D(prev, curr)
    for i in range(T):
        g_prev, g_curr = torch.autograd.grad(scores[:, i].sum(), [prev, curr], retain_graph=True)
        others = [j for j in range(T) if j != i]
        assert g_prev[:, i:].abs().max() == 0 and g_curr[:, others].abs().max() == 0
        assert g_curr[:, i].abs().min(dim=-1).values.min() > 0  # the prediction itself matters
        if i > 0:
            assert g_prev[:, :i].abs().amax(dim=(0, 2)).min() > 0  # and every ground-truth token before it


def test_per_position_solves_are_leak_free_at_every_iterate():
    # Truncated solves (an unreachable tol, 3 iterations): with one system per position every iterate is a
    # function of the positions the mask allows; one Anderson system per sequence mixes all residuals, so its
    # scores change with inputs behind the mask (the reason for batch_dims=2 by default).
    truncated = dict(tol=1e-300, max_iter=3)
    assert max_leak(make_disc(settings(**truncated)), *inputs()) < 1e-14
    with pytest.warns(UserWarning, match="leak"):
        leaky = make_disc(settings(batch_dims=1, **truncated))
    assert max_leak(leaky, *inputs()) > 1e-9


def test_picard_and_per_position_settings_do_not_warn(recwarn):
    make_disc(settings(batch_dims=1, method="picard"))
    make_disc(settings(batch_dims=2, method="broyden"))
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


# relaxed one-hot samples and embeddings


def test_straight_through_is_one_hot_with_softmax_gradient():
    logits = torch.randn(3, 4, VOCAB, generator=torch.Generator().manual_seed(0)).requires_grad_()
    w = torch.randn(3, 4, VOCAB, generator=torch.Generator().manual_seed(1))
    sample = relaxed_one_hot(logits, "straight-through", generator=torch.Generator().manual_seed(2))
    assert torch.equal(sample.detach(), F.one_hot(sample.detach().argmax(-1), VOCAB).float())
    (grad,) = torch.autograd.grad((sample * w).sum(), logits)
    (expected,) = torch.autograd.grad((torch.softmax(logits, -1) * w).sum(), logits)
    assert torch.equal(grad, expected)


def test_straight_through_samples_follow_the_softmax():
    logits = torch.tensor([[[2.0, 0.0, -1.0, 1.0]]]).expand(1, 20000, 4)
    sample = relaxed_one_hot(logits, "straight-through", generator=torch.Generator().manual_seed(0))
    freq = sample.detach().mean(dim=(0, 1))
    assert (freq - torch.softmax(logits[0, 0], -1)).abs().max() < 0.01


def test_gumbel_softmax_rows_sum_to_one_and_reproduce():
    logits = torch.randn(2, 3, VOCAB, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = relaxed_one_hot(logits, "gumbel", tau=0.5, generator=torch.Generator().manual_seed(3))
    b = relaxed_one_hot(logits, "gumbel", tau=0.5, generator=torch.Generator().manual_seed(3))
    c = relaxed_one_hot(logits, "gumbel", tau=0.5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a.sum(-1) - 1).abs().max() < 1e-12 and a.min() > 0  # soft, not hard
    noise = gumbel_noise(logits.shape, torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(a, torch.softmax((logits + noise) / 0.5, -1))


def test_relaxed_one_hot_errors():
    logits = torch.zeros(1, 2, VOCAB)
    with pytest.raises(ValueError, match="straight-through, gumbel"):
        relaxed_one_hot(logits, "off")
    with pytest.raises(ValueError, match="tau"):
        relaxed_one_hot(logits, "gumbel", tau=0.0)
    assert ADVERSARIAL_MODES == ("off", "straight-through", "gumbel")


def tiny_model(seed: int = 0, **overrides) -> DEQSequenceModel:
    torch.manual_seed(seed)
    kwargs = dict(cell="transformer", vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32)
    return DEQSequenceModel(ModelConfig(**{**kwargs, **overrides}))


def ids(seed: int, batch: int = B, length: int = T) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("input_kind", ["embedding", "onehot"])
def test_token_embeddings_of_hard_one_hots_equal_the_input_transform(input_kind):
    model = tiny_model(input=input_kind)
    x = ids(0)
    assert torch.equal(token_embeddings(model, F.one_hot(x, VOCAB).float()), model.input(x))


def test_token_embeddings_errors():
    with pytest.raises(ValueError, match="token-id inputs"):
        token_embeddings(tiny_model(input="linear", in_dim=3), torch.zeros(1, 2, VOCAB))
    with pytest.raises(ValueError, match="categorical head"):  # its io: emits values
        token_embeddings(tiny_model(head="mog", out_dim=1), torch.zeros(1, 2, VOCAB))
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        token_embeddings(tiny_model(), torch.zeros(1, 2, VOCAB + 1))


# adversarial training


def adversarial(model: DEQSequenceModel, mode: str = "gumbel", **kwargs) -> AdversarialTraining:
    torch.manual_seed(1)
    kwargs = {"max_len": 8, "d_model": 16, "n_heads": 2, "d_ff": 32, "seed": 0, **kwargs}
    return AdversarialTraining(model, mode, weight=0.5, **kwargs)


def test_adversarial_training_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="straight-through, gumbel"):
        AdversarialTraining(model, "off", 0.1, max_len=8)
    with pytest.raises(ValueError, match="weight"):
        AdversarialTraining(model, "gumbel", -1.0, max_len=8)
    with pytest.raises(ValueError, match="categorical head"):
        bad = tiny_model()
        bad.head = MixtureOfGaussiansHead(16, 1)  # swapped in: model.io follows it (emits values)
        AdversarialTraining(bad, "gumbel", 0.1, max_len=8)


@pytest.mark.parametrize("mode", ["straight-through", "gumbel"])
def test_generator_loss_reaches_the_model_not_the_discriminator(mode):
    model = tiny_model()
    adv = adversarial(model, mode)
    x, t = ids(0), ids(1)
    loss, metrics = adv.generator_loss(model(x).logits, t)
    assert loss.dim() == 0 and abs(loss.item() - 0.5 * metrics["adv_g_loss"]) < 1e-6
    loss.backward()
    for name in ("input.table.weight", "head.proj.weight", "deq.cell.qkv.weight", "deq.cell.inject.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().max() > 0, name
    assert all(p.grad is None for p in adv.discriminator.parameters())
    assert all(p.requires_grad for p in adv.discriminator.parameters())


def test_discriminator_step_changes_only_the_discriminator():
    model = tiny_model()
    adv = adversarial(model)
    model_before = {k: v.clone() for k, v in model.state_dict().items()}
    disc_before = {k: v.clone() for k, v in adv.discriminator.state_dict().items()}
    metrics = adv.discriminator_step(model(ids(0)).logits, ids(1))
    assert all(torch.equal(v, model_before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    changed = [k for k, v in adv.discriminator.state_dict().items() if not torch.equal(v, disc_before[k])]
    assert len(changed) == len(disc_before)
    for key in ("adv_d_loss", "adv_d_acc", "adv_d_real_acc", "adv_d_fake_acc", "adv_d_fwd_nstep_mean"):
        assert isinstance(metrics[key], float), key
    assert metrics["adv_d_acc"] == (metrics["adv_d_real_acc"] + metrics["adv_d_fake_acc"]) / 2


@pytest.mark.parametrize("mode", ["straight-through", "gumbel"])
def test_discriminator_learns_a_fixed_batch(mode):
    model = tiny_model()
    adv = adversarial(model, mode, disc_lr=3e-3)
    with torch.no_grad():
        logits = model(ids(0, batch=4)).logits
    t = ids(1, batch=4)
    history = [adv.discriminator_step(logits, t) for _ in range(30)]
    # Each step draws fresh fakes, so single-step accuracies are noisy: compare the means of 5 steps.
    first = sum(m["adv_d_acc"] for m in history[:5]) / 5
    last = sum(m["adv_d_acc"] for m in history[-5:]) / 5
    assert last > 0.65 and last > first + 0.15 and history[-1]["adv_d_loss"] < history[0]["adv_d_loss"]


def test_state_dict_round_trip():
    model = tiny_model()
    logits, t = model(ids(0)).logits.detach(), ids(1)
    a = adversarial(model)
    a.discriminator_step(logits, t)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)  # as a checkpoint would
    buffer.seek(0)
    b = adversarial(model, seed=5)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    for (k, v), w in zip(a.discriminator.state_dict().items(), b.discriminator.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    ma, mb = a.discriminator_step(logits, t), b.discriminator_step(logits, t)
    assert ma == mb  # same weights, optimizer moments and sampling noise
    assert all(torch.equal(v, w) for v, w in zip(a.discriminator.parameters(), b.discriminator.parameters(),
                                                  strict=True))


def test_discriminator_is_built_like_the_model():
    model = tiny_model(d_embed=12).double()
    adv = adversarial(model, settings=dataclasses.replace(default_discriminator_settings()))
    p = next(adv.discriminator.parameters())
    assert adv.discriminator.emb_dim == 12 and p.dtype == torch.float64


def test_discriminator_runs_in_its_own_dtype_under_autocast_and_may_step_first():
    model = tiny_model()
    adv = adversarial(model, "straight-through")
    logits, t = model(ids(0)).logits, ids(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = adv.generator_loss(logits, t)
        metrics = adv.discriminator_step(logits, t)  # stepping D before the generator's backward is allowed
    loss.backward()
    assert loss.dtype == torch.float32 and model.input.weight.grad.abs().max() > 0
    assert all(p.dtype == torch.float32 for p in adv.discriminator.parameters())
    assert metrics["adv_d_fwd_rel_max"] < 1e-3
