"""Next-token sampling: config checks, seeding, top-k, top-p, repetition penalty, greedy and draw frequencies."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from deqseq.sampling import (
    SAMPLING_OPTIONS,
    SamplingConfig,
    apply_repetition_penalty,
    processed_logits,
    sample_next,
    sampling_config,
    top_k_filter,
    top_p_filter,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kept(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


# --- config -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("temperature", -1.0), ("temperature", math.nan), ("temperature", math.inf),
    ("top_k", 0), ("top_k", -3), ("top_k", 2.5),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", math.nan),
    ("seed", 1.5), ("seed", True), ("seed", "3"),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field) as info:
        SamplingConfig(**{field: value})
    assert "\n" not in str(info.value)


def test_config_defaults_and_greedy():
    assert SamplingConfig() == SamplingConfig(temperature=1.0, top_k=None, top_p=1.0, repetition_penalty=1.0)
    assert not SamplingConfig().greedy
    assert SamplingConfig(temperature=0).greedy
    assert SamplingConfig(top_k=1, top_p=1.0, repetition_penalty=0.5).top_k == 1
    assert SamplingConfig().seed is None and SamplingConfig(seed=-3).seed == -3
    assert not SamplingConfig(temperature=0.3, seed=1).filters
    assert all(SamplingConfig(**{k: v}).filters for k, v in (("top_k", 5), ("top_p", 0.9),
                                                               ("repetition_penalty", 1.1)))


def test_the_config_seeds_its_generator():
    flat = torch.zeros(4, 50)
    draws = [sample_next(flat, SamplingConfig(), SamplingConfig(seed=s).generator()) for s in (3, 3, 4)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(draws[0], sample_next(flat, SamplingConfig(), _gen(3)))
    unseeded = SamplingConfig().generator()
    assert unseeded.initial_seed() != SamplingConfig().generator().initial_seed()  # fresh entropy each time


def test_sampling_config_merges_keyword_shortcuts_into_one_config():
    assert SAMPLING_OPTIONS == ("temperature", "top_k", "top_p", "repetition_penalty", "seed")
    assert sampling_config(None, {}) == SamplingConfig()
    base = SamplingConfig(temperature=0.5, top_k=3, seed=1)
    assert sampling_config(base, {}) is base
    assert sampling_config(base, {"seed": 7, "top_p": 0.9}) == SamplingConfig(0.5, 3, 0.9, seed=7)
    assert sampling_config(None, {"temperature": 0}).greedy
    with pytest.raises(ValueError, match="top_k"):  # the merged values are checked like any config's
        sampling_config(base, {"top_k": 0})


def test_sampling_config_refuses_unknown_names_and_non_configs_in_one_line():
    with pytest.raises(TypeError) as info:
        sampling_config(None, {"temp": 0.5}, others=("num_samples", "stop"))
    message = str(info.value)
    assert "\n" not in message and "'temp'" in message
    assert message.endswith("the options are temperature, top_k, top_p, repetition_penalty, seed, num_samples, stop")
    with pytest.raises(TypeError, match="unknown options 'a', 'b'"):
        sampling_config(None, {"a": 1, "b": 2, "seed": 0})
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig or None, got 0.8"):
        sampling_config(0.8, {})


# --- seeding ------------------------------------------------------------------------------------------------------


def test_same_seed_same_samples_different_seed_different_samples():
    flat = torch.zeros(1000, 50)
    config = SamplingConfig()
    a = sample_next(flat, config, _gen(0))
    b = sample_next(flat, config, _gen(0))
    c = sample_next(flat, config, _gen(1))
    assert a.dtype == torch.int64 and a.shape == (1000,)
    assert torch.equal(a, b)
    # Two independent uniform draws over 50 tokens agree with probability 1/50: ~20 of 1000, far from all.
    assert (a == c).sum().item() < 100
    assert int(a.min()) >= 0 and int(a.max()) < 50


def test_sample_next_requires_2d_logits():
    with pytest.raises(ValueError, match=r"\(N, V\)"):
        sample_next(torch.zeros(5), SamplingConfig())
    with pytest.raises(ValueError, match=r"\(N, V\)"):
        sample_next(torch.zeros(2, 3, 5), SamplingConfig(), _gen(0))


# --- top-k --------------------------------------------------------------------------------------------------------


def test_top_k_draws_stay_in_the_k_best():
    base = torch.randn(8, 50, generator=_gen(3))
    k = 5
    logits = base.repeat(2500, 1)  # 20000 rows
    ids = sample_next(logits, SamplingConfig(top_k=k), _gen(4))
    allowed = torch.topk(logits, k, dim=-1).indices
    assert bool((allowed == ids[:, None]).any(dim=-1).all())
    # Not degenerate: every one of the k best tokens of every base row is drawn at some point.
    for row in range(8):
        assert set(ids[row::8].tolist()) == set(allowed[row].tolist())


def test_top_k_filter_keeps_exactly_k_without_ties():
    logits = torch.randn(16, 100, generator=_gen(5))
    filtered = top_k_filter(logits, 7)
    assert torch.isfinite(filtered).sum(dim=-1).tolist() == [7] * 16
    kept = torch.isfinite(filtered)
    assert torch.equal(filtered[kept], logits[kept])
    assert bool((filtered[~kept] == -math.inf).all())
    top = torch.topk(logits, 7, dim=-1).indices
    assert bool(kept.gather(1, top).all())


def test_top_k_filter_ties_and_no_ops():
    logits = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    # The 2nd largest value is 1.0, shared by two tokens: both are kept.
    assert _kept(top_k_filter(logits, 2)[0]) == {0, 1, 2}
    assert _kept(top_k_filter(logits, 1)[0]) == {0}
    assert top_k_filter(logits, None) is logits
    assert top_k_filter(logits, 4) is logits
    assert top_k_filter(logits, 10) is logits


# --- top-p --------------------------------------------------------------------------------------------------------

# probs [0.5, 0.2, 0.15, 0.1, 0.05] in shuffled positions.
NUCLEUS_PROBS = torch.tensor([0.1, 0.5, 0.05, 0.2, 0.15], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p, expected", [
    (0.3, {1}),              # 0.5 alone already covers it
    (0.5, {1}),              # mass exactly 0.5
    (0.6, {1, 3}),           # 0.5 + 0.2
    (0.7, {1, 3}),           # mass exactly 0.7: not extended despite float rounding
    (0.71, {1, 3, 4}),
    (0.85, {1, 3, 4}),       # mass exactly 0.85
    (0.9, {1, 3, 4, 0}),
    (0.96, {1, 3, 4, 0, 2}),
    (1.0, {0, 1, 2, 3, 4}),
])
def test_top_p_filter_against_hand_computed_nucleus(p, expected, dtype):
    logits = NUCLEUS_PROBS.log().to(dtype)[None]
    filtered = top_p_filter(logits, p)
    kept = _kept(filtered[0])
    assert kept == expected
    # The smallest set with mass >= p: its mass reaches p, and without its least likely member it does not.
    mass = sum(NUCLEUS_PROBS[i].item() for i in kept)
    smallest = min(NUCLEUS_PROBS[i].item() for i in kept)
    assert mass >= p - 1e-9
    assert mass - smallest < p - 1e-9 or len(kept) == 1
    keep = torch.isfinite(filtered)
    assert torch.equal(filtered[keep], logits[keep])
    assert bool((filtered[~keep] == -math.inf).all())


def test_top_p_filter_rows_are_independent_and_p1_is_a_no_op():
    logits = torch.stack([NUCLEUS_PROBS.log(), NUCLEUS_PROBS.flip(0).log()]).float()
    filtered = top_p_filter(logits, 0.6)
    assert _kept(filtered[0]) == {1, 3}
    assert _kept(filtered[1]) == {3, 1}  # flipped: 0.5 at index 3, 0.2 at index 1
    assert top_p_filter(logits, 1.0) is logits
    # The most likely token is kept even for a tiny p.
    assert torch.isfinite(top_p_filter(logits, 1e-6)).sum(dim=-1).tolist() == [1, 1]


def test_top_p_draws_stay_in_the_nucleus():
    logits = NUCLEUS_PROBS.log().float()[None].repeat(20000, 1)
    ids = sample_next(logits, SamplingConfig(top_p=0.85), _gen(6))
    counts = torch.bincount(ids, minlength=5)
    assert counts[[0, 2]].tolist() == [0, 0]
    # Renormalised nucleus: 0.5, 0.2, 0.15 over 0.85.
    expected = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.15], dtype=torch.float64) / 0.85 * 20000
    assert chisquare(counts[[1, 3, 4]].numpy(), expected[[1, 3, 4]].numpy()).pvalue > 0.001


# --- repetition penalty -------------------------------------------------------------------------------------------


def test_repetition_penalty_lowers_repeated_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 1.0]])
    original = logits.clone()
    previous = torch.tensor([[0, 1, 0]])  # token 0 twice: penalised once
    out = apply_repetition_penalty(logits, previous, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 0.0, 1.0]]
    assert torch.equal(logits, original)
    before, after = logits.softmax(-1)[0], out.softmax(-1)[0]
    assert after[0] < before[0]  # positive logit
    assert after[1] < before[1]  # negative logit
    assert torch.equal(out[0, 2:], logits[0, 2:])


def test_repetition_penalty_per_row_and_identities():
    logits = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    out = apply_repetition_penalty(logits, torch.tensor([[0], [2]]), 4.0)
    assert out.tolist() == [[0.25, 1.0, 1.0], [-1.0, -1.0, -4.0]]
    for previous, penalty in [(torch.tensor([[0], [1]]), 1.0), (None, 3.0), (torch.zeros(2, 0, dtype=torch.long), 3.0)]:
        same = apply_repetition_penalty(logits, previous, penalty)
        assert torch.equal(same, logits) and same is not logits
    # A penalty below 1 rewards repeats instead.
    assert apply_repetition_penalty(logits, torch.tensor([[1], [1]]), 0.5).tolist() == [[1.0, 2.0, 1.0],
                                                                                        [-1.0, -0.5, -1.0]]
    with pytest.raises(ValueError, match=r"\(N, L\)"):
        apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)


# --- greedy -------------------------------------------------------------------------------------------------------


def test_greedy_returns_the_argmax():
    logits = torch.randn(32, 20, generator=_gen(7))
    ids = sample_next(logits, SamplingConfig(temperature=0))
    assert ids.dtype == torch.int64
    assert torch.equal(ids, logits.argmax(dim=-1))
    # top-k / top-p never remove the argmax.
    assert torch.equal(sample_next(logits, SamplingConfig(temperature=0, top_k=3, top_p=0.1)), ids)


def test_greedy_with_repetition_penalty_takes_the_penalised_argmax():
    logits = torch.tensor([[3.0, 2.0, -1.0], [3.0, 2.0, -1.0]])
    previous = torch.tensor([[0, 2], [1, 2]])
    ids = sample_next(logits, SamplingConfig(temperature=0, repetition_penalty=2.0), previous=previous)
    assert ids.tolist() == [1, 0]  # row 0: 3 / 2 = 1.5 < 2; row 1: token 1 drops to 1.0


# --- frequencies --------------------------------------------------------------------------------------------------

SIX_PROBS = torch.tensor([0.3, 0.25, 0.2, 0.12, 0.08, 0.05])


def _counts(logits: torch.Tensor, config: SamplingConfig, seed: int, draws: int = 20000) -> torch.Tensor:
    ids = sample_next(logits[None].repeat(draws, 1), config, _gen(seed))
    return torch.bincount(ids, minlength=logits.numel())


def test_sampling_frequencies_match_the_distribution():
    counts = _counts(SIX_PROBS.log(), SamplingConfig(), seed=8)
    assert counts.sum().item() == 20000
    assert chisquare(counts.numpy(), (SIX_PROBS.double() * 20000).numpy()).pvalue > 0.001


def test_sampling_frequencies_after_temperature():
    logits = SIX_PROBS.log() + 2.0  # the offset must not matter
    expected = torch.softmax(logits.double() / 0.5, dim=-1)
    counts = _counts(logits, SamplingConfig(temperature=0.5), seed=9)
    assert chisquare(counts.numpy(), (expected * 20000).numpy()).pvalue > 0.001
    # And it is a different distribution from temperature 1: the test has power.
    assert chisquare(counts.numpy(), (SIX_PROBS.double() * 20000).numpy()).pvalue < 1e-6


# --- processing pipeline ------------------------------------------------------------------------------------------


def test_top_k_then_top_p_on_a_hand_computed_example():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    config = SamplingConfig(top_k=3, top_p=0.75)
    out = processed_logits(logits, config)
    # top-k leaves 0.4, 0.3, 0.2 -> renormalised 4/9, 3/9, 2/9; 4/9 < 0.75 <= 7/9, so two tokens stay.
    # (top-p first would keep three: 0.4 + 0.3 = 0.7 < 0.75.)
    assert _kept(out[0]) == {0, 1}
    assert _kept(top_k_filter(top_p_filter(logits, 0.75), 3)[0]) == {0, 1, 2}
    assert torch.allclose(out[0, :2], logits[0, :2])
    counts = _counts(logits[0], config, seed=10)
    assert counts[2:].tolist() == [0, 0]
    assert chisquare(counts[:2].numpy(), [20000 * 4 / 7, 20000 * 3 / 7]).pvalue > 0.001


def test_top_p_sees_the_tempered_logits():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # Temperature 0.5 squares and renormalises: 16/30, 9/30, 4/30, 1/30, so top_p 0.8 keeps two (25/30 >= 0.8).
    assert _kept(processed_logits(logits, SamplingConfig(temperature=0.5, top_p=0.8))[0]) == {0, 1}
    assert _kept(processed_logits(logits, SamplingConfig(temperature=1.0, top_p=0.8))[0]) == {0, 1, 2}


def test_processed_logits_dtype_and_no_mutation():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    original = logits.clone()
    config = SamplingConfig(temperature=0.5, repetition_penalty=2.0, top_k=2)
    out = processed_logits(logits, config, previous=torch.tensor([[0, 1]]))
    assert torch.equal(logits, original)
    assert out.dtype == torch.float32 and out.shape == (1, 3)
    assert out.tolist() == [[2.0, -math.inf, 1.0]]
    assert processed_logits(logits.half(), config).dtype == torch.float32
    assert processed_logits(logits.bfloat16(), config).dtype == torch.float32
    assert processed_logits(logits.double(), config).dtype == torch.float64
