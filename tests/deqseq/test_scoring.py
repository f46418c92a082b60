"""The one segment-scoring loop (deqseq.scoring.score_segments) against NLLs computed by hand, and the three
scorers built on it (training's evaluate / evaluate_series and score) against it."""

from __future__ import annotations

import math

import pytest
import torch

from deqseq.config import ModelConfig, SolverSettings
from deqseq.data import SeriesBatcher, StreamBatcher
from deqseq.model import DEQSequenceModel
from deqseq.scoring import NLLTotal, score, score_segments, text_segments
from deqseq.training import evaluate, evaluate_series
from solvers import SolverConfig

VOCAB = 5
CPU = torch.device("cpu")


def tiny_model(**extra) -> DEQSequenceModel:
    """A float64 transformer DEQ solved to 1e-12 per position, with spread-out head parameters."""
    torch.manual_seed(0)
    settings = SolverSettings(forward=SolverConfig(method="anderson", max_iter=300, tol=1e-12), batch_dims=2)
    cfg = ModelConfig(cell="transformer", vocab_size=VOCAB, d_model=8, n_heads=2, d_ff=16, **extra)
    model = DEQSequenceModel(cfg, settings).double()
    with torch.no_grad():
        for p in model.head.parameters():
            p.mul_(3.0)
    return model


def hand_token_nll(model: DEQSequenceModel, x: torch.Tensor, t: torch.Tensor) -> float:
    """sum over positions of -log softmax(logits)[target], one position and one logit at a time in python."""
    with torch.no_grad():
        logits = model.eval()(x).logits.tolist()
    total = 0.0
    for b, row in enumerate(logits):
        for i, scores in enumerate(row):
            top = max(scores)
            log_z = top + math.log(sum(math.exp(s - top) for s in scores))
            total += log_z - scores[int(t[b, i])]
    return total


def test_score_segments_is_the_hand_computed_nll_of_fresh_segments():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (2, 14), generator=torch.Generator().manual_seed(1))
    segments = list(text_segments(ids, 4))
    assert [s["x"].shape[1] for s in segments] == [4, 4, 4, 1]  # 13 predicted positions per row
    expected = sum(hand_token_nll(model, s["x"], s["t"]) for s in segments)
    total = score_segments(model, segments)
    assert total.count == 2 * 13
    assert total.nats == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert total.mean == pytest.approx(expected / 26, rel=1e-12)
    first_two = score_segments(model, segments, limit=2)
    assert first_two.count == 16
    assert first_two.nats == pytest.approx(sum(hand_token_nll(model, s["x"], s["t"]) for s in segments[:2]),
                                           rel=1e-12)


def test_carried_segments_score_the_text_as_one_sequence():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (1, 17), generator=torch.Generator().manual_seed(2))
    whole = hand_token_nll(model, ids[:, :-1], ids[:, 1:])
    carried = score_segments(model, text_segments(ids, 5), carry_history=True)
    fresh = score_segments(model, text_segments(ids, 5))
    assert carried.count == fresh.count == 16
    assert abs(carried.nats - whole) < 1e-9  # one sequence-level solve, up to the solver tolerance
    assert abs(fresh.nats - whole) > 1e-4  # without history the later segments lose their context


def test_score_segments_restores_the_mode_and_keeps_no_graph():
    model = tiny_model().train()
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    total = score_segments(model, text_segments(ids, 4))
    assert model.training and isinstance(total, NLLTotal) and isinstance(total.nats, float)
    assert score_segments(model, []) == NLLTotal(0.0, 0) and NLLTotal(0.0, 0).mean == 0.0


def test_a_conditioned_mixture_model_scores_what_torch_distributions_give():
    model = tiny_model(input="linear", in_dim=1, head="mog", mixtures=2, cond_dim=3)
    gen = torch.Generator().manual_seed(4)
    values = torch.randn(5, 7, 1, generator=gen, dtype=torch.float64)
    classes = torch.randint(0, 3, (5,), generator=gen)
    batches = list(SeriesBatcher(values, classes, 2, 6, shuffle=False, drop_last=False))
    expected = 0.0
    with torch.no_grad():
        for batch in batches:
            log_pi, mu, std = model.head.components(model.eval()(batch["x"], cond=batch["c"]).params)
            mixture = torch.distributions.MixtureSameFamily(
                torch.distributions.Categorical(logits=log_pi),
                torch.distributions.Independent(torch.distributions.Normal(mu, std), 1))
            expected -= float(mixture.log_prob(batch["t"]).sum())
    total = score_segments(model, batches)
    assert total.count == 5 * 6
    assert total.nats == pytest.approx(expected, rel=1e-12)
    metrics = evaluate_series(model, values, classes, 2, 6, 0, CPU)
    assert metrics == {"nll": total.mean, "nll_per_dim": total.mean, "bits_per_dim": total.mean / math.log(2),
                       "steps": 30}


def test_evaluate_and_score_are_the_shared_loop():
    model = tiny_model()
    ids = torch.randint(0, VOCAB, (41,), generator=torch.Generator().manual_seed(5))
    for carry in (False, True):
        total = score_segments(model, StreamBatcher(ids, 2, 6), carry_history=carry, limit=3)
        metrics = evaluate(model, ids, 2, 6, carry, 3, CPU, "char")
        assert metrics == {"nll": total.mean, "ppl": math.exp(total.mean), "bits_per_char": total.mean / math.log(2),
                           "tokens": total.count}
        text = score_segments(model, text_segments(ids[None], 6), carry_history=carry, window=model.default_window)
        result = score(model, ids, 6, carry_history=carry)
        assert (result.nll, result.tokens) == (text.mean, text.count) and text.count == 40


def test_perplexity_is_one_rule_for_training_and_scoring_and_never_a_capped_number():
    import math

    from deqseq.scoring import NLLTotal, perplexity
    from deqseq.training import token_metrics

    assert perplexity(2.0) == math.exp(2.0) and perplexity(60.0) == math.exp(60.0)  # training used to cap at e^50
    assert perplexity(800.0) == math.inf and math.isnan(perplexity(math.nan))
    assert token_metrics(NLLTotal(nats=120.0, count=2), "byte")["ppl"] == perplexity(60.0)
