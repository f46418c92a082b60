"""Cached generation from frozen equilibria against naive re-solving of the whole prefix, sampling options
end to end, streaming, conditioning, history windows, and scoring against the training loss; the steps
generation is built of (prefill, step, draw) each on its own, and generate as the collected stream."""

from __future__ import annotations

import dataclasses
import importlib
import math

import pytest
import torch
from scipy.stats import chisquare

from deqseq import DEQSequenceModel, ModelConfig, SamplingConfig, SolverSettings, generate, score, stream
from deqseq.generation import as_prompt, draw, log_prob, next_input, prefill, step
from deqseq.sampling import sample_next
from deqseq.training import evaluate
from solvers import SolverConfig

VOCAB = 13
CELLS = {
    "transformer": dict(cell="transformer"),
    "trellis": dict(cell="trellis", kernel_size=3, dilation=2),
}


def make_model(cell: str, dtype=torch.float64, tol: float = 1e-11, seed: int = 0, **extra) -> DEQSequenceModel:
    """A small random model whose logits are spread enough for sampling tests (scaled-up head)."""
    torch.manual_seed(seed)
    settings = SolverSettings(forward=SolverConfig(method="anderson", max_iter=300, tol=tol), batch_dims=2)
    model = DEQSequenceModel(ModelConfig(vocab_size=VOCAB, d_model=16, n_heads=2, d_ff=32, **CELLS[cell], **extra),
                             settings).to(dtype)
    with torch.no_grad():
        model.head.proj.weight.mul_(4.0)
    return model.eval()


def naive_greedy(model: DEQSequenceModel, prompt: torch.Tensor, n: int, cond=None,
                 window: int | None = None) -> tuple[torch.Tensor, list]:
    """Greedy decoding that re-solves the whole prefix for every new token; also the logits of each step."""
    ids, logits = prompt.clone(), []
    with torch.no_grad():
        for _ in range(n):
            c = cond[:, : ids.shape[1]] if cond is not None and cond.dim() == 3 else cond
            last = model(ids, cond=c, window=window).logits[:, -1]
            logits.append(last)
            ids = torch.cat([ids, last.argmax(-1, keepdim=True)], dim=1)
    return ids, logits


@pytest.mark.parametrize("cell", list(CELLS))
def test_cached_greedy_equals_naive_re_solving_in_float64(cell):
    model = make_model(cell)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    out = generate(model, prompt, 24, temperature=0, details=True)
    expected, logits = naive_greedy(model, prompt, 24)
    assert torch.equal(out.ids, expected)
    naive_logprobs = torch.stack([torch.log_softmax(lg, -1).gather(1, t[:, None])[:, 0]
                                  for lg, t in zip(logits, expected[:, 6:].T, strict=True)], dim=1)
    assert (out.logprobs - naive_logprobs).abs().max().item() < 1e-9
    assert out.lengths.tolist() == [24, 24]
    assert all(bool(s.converged.all()) for s in out.steps)
    # One single-position solve per token: far fewer iterations than the prefix re-solves.
    assert 1 <= out.mean_iterations < 40


@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_logits_agree_within_the_solver_tolerance(cell):
    model = make_model(cell, dtype=torch.float32, tol=1e-5)
    prompt = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    out = generate(model, prompt, 16, temperature=0, details=True)
    # Re-solve the finished sequence at once and read the log-probabilities of the generated tokens.
    with torch.no_grad():
        full = model(out.ids).logits[:, 4:-1].double()
    naive = torch.log_softmax(full, -1).gather(2, out.new_ids[..., None])[..., 0]
    # rel tolerance 1e-5 of states of norm ~4 through a head of logit scale ~10: differences of ~1e-4 at most.
    assert (out.logprobs.double() - naive).abs().max().item() < 2e-3
    assert torch.equal(out.new_ids, full.argmax(-1))


def test_warm_start_and_history_select_keep_the_same_tokens():
    # Warm starts reach the same equilibrium only where it is unique; shrink the attention weights so the
    # cell contracts. (Where f has several fixed points a warm start can land on another one: it is off by
    # default, and zeros, which training and the sequence-level solve use, are the reference start.)
    model = make_model("transformer")
    with torch.no_grad():
        model.deq.cell.qkv.weight.mul_(0.5)
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    cold = generate(model, prompt, 12, temperature=0, details=True)
    warm = generate(model, prompt, 12, temperature=0, warm_start=True, details=True)
    assert torch.equal(cold.ids, warm.ids)
    assert (cold.logprobs - warm.logprobs).abs().max().item() < 1e-9
    assert warm.mean_iterations < cold.mean_iterations
    fanned = generate(model, prompt, 12, temperature=0, num_samples=3)  # prefill once, history fanned out
    assert torch.equal(fanned, cold.ids.repeat_interleave(3, dim=0))


def test_same_seed_same_samples_and_seeds_differ():
    model = make_model("transformer", dtype=torch.float32, tol=1e-4)
    prompt = [1, 2, 3]
    a = generate(model, prompt, 30, seed=7, num_samples=4)
    b = generate(model, prompt, 30, seed=7, num_samples=4)
    c = generate(model, prompt, 30, seed=8, num_samples=4)
    assert torch.equal(a, b)
    assert (a[:, 3:] != c[:, 3:]).float().mean().item() > 0.3
    assert a.shape == (4, 33) and torch.equal(a[:, :3], torch.tensor([[1, 2, 3]] * 4))


def test_top_k_generation_stays_inside_the_k_best():
    model = make_model("trellis", dtype=torch.float32, tol=1e-5)
    steps = list(stream(model, [4, 5], 10, top_k=2, seed=0, num_samples=16))
    out = generate(model, [4, 5], 10, top_k=2, seed=0, num_samples=16)
    # Each token is among the 2 largest logits of the equilibrium of its prefix, re-solved from scratch.
    with torch.no_grad():
        logits = model(out[:, :-1]).logits[:, 1:]
    top2 = logits.topk(2, dim=-1).indices
    assert (top2 == out[:, 2:, None]).any(-1).all()
    assert torch.equal(torch.stack([s.ids for s in steps], 1), out[:, 2:])  # streaming = non-streaming


def test_first_token_frequencies_match_the_model_distribution():
    model = make_model("transformer", dtype=torch.float64)
    prompt = torch.tensor([[3, 1, 4]])
    with torch.no_grad():
        probs = torch.softmax(model(prompt).logits[0, -1], -1)
    n = 6000
    first = generate(model, prompt, 1, seed=123, num_samples=n)[:, -1]
    counts = torch.bincount(first, minlength=VOCAB).double()
    # Merge rare tokens so every expected count is >= 5, as the chi-square test needs.
    keep = probs * n >= 5
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    expected = torch.cat([probs[keep], probs[~keep].sum()[None]]) * n
    assert keep.sum() >= 4
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
    # and at temperature 0.5 the frequencies follow softmax(logits / 0.5), not the model's distribution
    cold = generate(model, prompt, 1, temperature=0.5, seed=5, num_samples=n)[:, -1]
    counts = torch.bincount(cold, minlength=VOCAB).double()
    sharp = torch.softmax(model(prompt).logits[0, -1] / 0.5, -1).detach()
    keep = sharp * n >= 5
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]])
    expected = torch.cat([sharp[keep], sharp[~keep].sum()[None]]) * n
    assert chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3


def test_repetition_penalty_lowers_repeated_tokens():
    model = make_model("transformer", dtype=torch.float64)
    prompt = torch.tensor([[2, 2, 2, 2]])
    n = 3000
    plain = generate(model, prompt, 1, seed=1, num_samples=n)[:, -1]
    penalised = generate(model, prompt, 1, seed=1, num_samples=n, repetition_penalty=3.0)[:, -1]
    # token 2 appears in the prompt: its frequency must drop (or stay zero)
    assert (penalised == 2).sum() < (plain == 2).sum() or (plain == 2).sum() == 0
    with torch.no_grad():
        logits = model(prompt).logits[0, -1]
    p_plain = torch.softmax(logits, -1)[2]
    adj = logits.clone()
    adj[2] = adj[2] / 3.0 if adj[2] > 0 else adj[2] * 3.0
    assert torch.softmax(adj, -1)[2] < p_plain


def test_stop_tokens_end_sequences_and_pad_with_the_stop_token():
    model = make_model("transformer")
    prompt = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(4))
    free = generate(model, prompt, 20, temperature=0, details=True)
    stop = int(free.new_ids[0, 5])  # greedy row 0 emits this token at step 5 (or earlier)
    out = generate(model, prompt, 20, temperature=0, stop=stop, details=True)
    first = int((free.new_ids[0] == stop).nonzero()[0])
    assert out.lengths[0].item() == first + 1
    assert torch.equal(out.new_ids[0, : first + 1], free.new_ids[0, : first + 1])
    assert (out.new_ids[0, first:] == stop).all()
    for row in range(3):  # rows without the stop token run to the end unchanged
        hits = (free.new_ids[row] == stop).nonzero()
        if len(hits) == 0:
            assert out.lengths[row].item() == out.new_ids.shape[1]
    everyone = generate(model, prompt[:1], 20, temperature=0, stop=stop, details=True)
    assert len(everyone.steps) == first + 1  # generation ends once every sequence stopped


def test_history_window_bounds_memory_and_matches_naive_with_the_same_window():
    model = make_model("transformer")
    prompt = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(5))
    out = generate(model, prompt, 20, temperature=0, mem_len=5, details=True)
    assert model.deq.cell.window is None  # the window is an argument: the cell is never changed
    assert model.last_history.k.shape[2] == 5  # the cache never holds more than the window
    expected, _ = naive_greedy(model, prompt, 20, window=5)
    assert torch.equal(out.ids, expected)
    full = generate(model, prompt, 20, temperature=0, details=True)
    assert full.logprobs[:, 6:].sub(out.logprobs[:, 6:]).abs().max() > 1e-6  # the window does change the model


@pytest.mark.parametrize("local", [False, True])
def test_conditioning_in_generation_equals_naive(local):
    torch.manual_seed(0)
    model = make_model("transformer", cond_dim=3)
    prompt = torch.randint(0, VOCAB, (2, 4), generator=torch.Generator().manual_seed(6))
    cond = torch.randn(2, 4 + 10, 3, dtype=torch.float64) if local else torch.randn(2, 3, dtype=torch.float64)
    out = generate(model, prompt, 10, temperature=0, cond=cond)
    expected, _ = naive_greedy(model, prompt, 10, cond=cond)
    assert torch.equal(out, expected)
    unconditioned = generate(model, prompt, 10, temperature=0, cond=torch.zeros_like(cond))
    assert not torch.equal(out, unconditioned)
    if local:
        with pytest.raises(ValueError, match="local conditioning must cover"):
            generate(model, prompt, 10, temperature=0, cond=cond[:, :8])


@pytest.mark.parametrize("cell", list(CELLS))
def test_score_equals_the_training_loss_on_the_same_text(cell):
    model = make_model(cell, tol=1e-11)
    ids = torch.randint(0, VOCAB, (61,), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        loss, _ = model.loss({"x": ids[None]})
    carried = score(model, ids, segment_len=8)  # 8 segments of 7.5 on average, history carried
    assert carried.tokens == 60
    assert abs(carried.nll - loss.item()) < 1e-9
    assert carried.ppl == pytest.approx(math.exp(carried.nll))
    assert carried.bits == pytest.approx(carried.nll / math.log(2))
    # Without history each segment starts afresh, exactly as training evaluation scores with data.mem_len=0.
    fresh = score(model, ids, segment_len=8, carry_history=False)
    reference = evaluate(model, ids, batch_size=1, seq_len=8, carry_history=False, max_batches=0,
                         device=torch.device("cpu"), unit="token")
    assert abs(fresh.nll - reference["nll"]) < 1e-12 and fresh.tokens == reference["tokens"]
    assert abs(fresh.nll - carried.nll) > 1e-4


def test_bad_arguments_raise_one_line_errors():
    model = make_model("transformer", dtype=torch.float32, tol=1e-4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], 0)
    with pytest.raises(ValueError, match="num_samples"):
        generate(model, [1], 3, num_samples=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [1], 3, top_p=0.0)
    with pytest.raises(ValueError, match="empty"):
        as_prompt([], torch.device("cpu"))
    with pytest.raises(ValueError, match="same length"):
        as_prompt([[1, 2], [3]], torch.device("cpu"))
    with pytest.raises(ValueError, match="integer ids"):
        as_prompt(torch.zeros(2, 3), torch.device("cpu"))
    assert model.training is False


def test_branching_from_one_history_never_corrupts_it():
    # Solves write the current keys/values into a per-solve buffer in place; a history, once returned, must
    # never change, so several continuations can branch from the same prefix (samples, beams, the check).
    model = make_model("transformer")
    prefix = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        history = model(prefix).history
        saved_k, saved_v = history.k.clone(), history.v.clone()
        a = model(torch.tensor([[1], [2]]), history=history)
        a_k = a.history.k.clone()
        model(torch.tensor([[3], [4]]), history=history)  # a second branch from the same prefix
        model(torch.tensor([[5], [6]]), history=a.history)  # and a continuation of the first
        again = model(torch.tensor([[1], [2]]), history=history)
    assert torch.equal(history.k, saved_k) and torch.equal(history.v, saved_v)
    assert torch.equal(a.history.k, a_k)
    assert torch.equal(again.z, a.z) and torch.equal(again.history.k, a.history.k)


@pytest.mark.parametrize("cell", list(CELLS))
def test_ragged_prompts_give_each_row_what_generating_it_alone_gives(cell):
    model = make_model(cell)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, VOCAB, (n,), generator=gen) for n in (3, 7, 1, 5)]
    out = generate(model, prompts, 9, temperature=0, repetition_penalty=1.3, mem_len=6, details=True)
    assert out.prompt_lengths.tolist() == [3, 7, 1, 5] and out.new_ids.shape == (4, 9)
    assert len(out.steps) == 7 - 1 + 9
    for i, prompt in enumerate(prompts):
        alone = generate(model, prompt, 9, temperature=0, repetition_penalty=1.3, mem_len=6, details=True)
        assert torch.equal(out.sequences[i], alone.ids[0])
        assert torch.equal(out.new_ids[i], alone.new_ids[0])
        assert (out.logprobs[i] - alone.logprobs[0]).abs().max().item() < 1e-9
        assert torch.equal(out.ids[i, : len(prompt) + 9], alone.ids[0])
        assert (out.ids[i, len(prompt) + 9 :] == -1).all()
    plain = generate(model, prompts, 9, temperature=0, repetition_penalty=1.3, mem_len=6)
    assert [p.tolist() for p in plain] == [s.tolist() for s in out.sequences]
    # The stream says which rows sampled: row 1 feeds its prompt for its first 6 steps, row 2 samples at once.
    assert [bool(s.sampled[1]) for s in out.steps[:7]] == [False] * 6 + [True]
    assert all(bool(s.sampled[2]) for s in out.steps[:9]) and not any(bool(s.sampled[2]) for s in out.steps[9:])


def test_ragged_prompts_with_samples_and_a_stop_token():
    model = make_model("transformer")
    prompts = [[1, 2, 3, 4, 5], [6, 7]]
    free = generate(model, prompts, 12, temperature=0, num_samples=2, details=True)
    stop = int(free.new_ids[1, 3])  # row 1 (prompt 0, sample 2) emits this at step 3 or earlier
    out = generate(model, prompts, 12, temperature=0, num_samples=2, stop=stop, details=True)
    for row in range(4):
        alone = generate(model, prompts[row // 2], 12, temperature=0, stop=stop, details=True)
        n = int(alone.lengths[0])
        assert out.lengths[row].item() == n
        assert torch.equal(out.sequences[row], alone.sequences[0])
        assert torch.isfinite(out.logprobs[row, :n]).all()
        assert (out.new_ids[row, n - 1 :] == stop).all() if n < 12 else True
    assert out.lengths[1].item() <= 4


# ------------------------------------------------------------------------------------- the steps, one at a time


def _tensors(history) -> dict[str, torch.Tensor]:
    return {f.name: getattr(history, f.name) for f in dataclasses.fields(history)
            if isinstance(getattr(history, f.name), torch.Tensor)}


@pytest.mark.parametrize("cell", list(CELLS))
def test_prefill_gives_the_sequence_level_solve_of_the_prompt(cell):
    model = make_model(cell)
    prompt = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        state = prefill(model, prompt)
        full = model(prompt)
    assert state.history.offset == 7 and state.history.batch_size == 3
    expected = _tensors(full.history)
    assert expected and all(torch.equal(t, expected[name]) for name, t in _tensors(state.history).items())
    assert torch.equal(state.params, full.logits[:, -1]) and torch.equal(state.z, full.z[:, -1:])
    assert state.params.shape == (3, VOCAB) and state.iterations.shape == (3,) and bool(state.converged.all())
    assert (state.residual < 1e-10).all()
    fanned = state.select(torch.tensor([2, 2, 0]))  # samples fanned out of one prompt's solve
    assert torch.equal(fanned.params, state.params[[2, 2, 0]]) and fanned.history.batch_size == 3


@pytest.mark.parametrize("cell", list(CELLS))
def test_steps_after_prefill_equal_re_solving_the_whole_sequence(cell):
    model = make_model(cell)
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        state = prefill(model, ids[:, :4])
        for t in range(4, 10):
            before = {name: x.clone() for name, x in _tensors(state.history).items()}
            frozen = state.history
            state = step(model, ids[:, t : t + 1], frozen)
            full = model(ids[:, : t + 1])
            assert state.history.offset == t + 1
            assert (state.params - full.logits[:, -1]).abs().max().item() < 1e-9
            assert (state.z - full.z[:, -1:]).abs().max().item() < 1e-9
            # the history a step solves against stays as it was (branches from it stay valid)
            assert all(torch.equal(x, before[name]) for name, x in _tensors(frozen).items())


def test_a_step_starts_from_z0_and_reaches_the_same_equilibrium():
    model = make_model("transformer")
    with torch.no_grad():
        model.deq.cell.qkv.weight.mul_(0.5)  # a contraction: one fixed point, whatever the start
        ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(13))
        state = prefill(model, ids[:, :7])
        cold = step(model, ids[:, 7:], state.history)
        warm = step(model, ids[:, 7:], state.history, z0=state.z)  # the previous position's equilibrium
        settled = step(model, ids[:, 7:], state.history, z0=cold.z)  # its own: already the fixed point
    assert (cold.z - warm.z).abs().max().item() < 1e-9
    assert (cold.params - warm.params).abs().max().item() < 1e-9
    assert (settled.iterations <= 2).all() and (cold.iterations >= 5).all()
    assert (settled.z - cold.z).abs().max().item() < 1e-10


def test_draw_at_temperature_zero_is_the_argmax_and_seeded_draws_are_sample_next():
    model = make_model("transformer")
    params = torch.randn(6, VOCAB, dtype=torch.float64, generator=torch.Generator().manual_seed(14)) * 3
    greedy = draw(model, params, SamplingConfig(temperature=0), torch.Generator())
    assert torch.equal(greedy, params.argmax(-1))
    config = SamplingConfig(temperature=0.7, top_k=4, seed=5)
    drawn = draw(model, params, config, config.generator())
    assert torch.equal(drawn, sample_next(params, config, torch.Generator().manual_seed(5)))
    assert not torch.equal(drawn, greedy)  # 6 draws at temperature 0.7 from logits of scale 3
    # previous: the ids so far, penalised; at a huge penalty the argmax moves off every seen id
    penalised = draw(model, params, SamplingConfig(temperature=0, repetition_penalty=1e6), torch.Generator(),
                     previous=greedy[:, None])
    assert (penalised != greedy).all()
    assert torch.allclose(log_prob(model, params, greedy), torch.log_softmax(params, -1).max(-1).values)
    assert torch.equal(next_input(model, greedy), greedy[:, None])


def test_draw_for_real_values_and_levels_uses_the_head_and_feeds_back_what_model_io_says():
    mog = make_model("transformer", input="linear", in_dim=2, head="mog", mixtures=3)
    with torch.no_grad():
        params = mog(torch.randn(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(15))).params
    params = params[:, -1]
    mode = draw(mog, params, SamplingConfig(temperature=0), torch.Generator().manual_seed(0))
    assert torch.equal(mode, draw(mog, params, SamplingConfig(temperature=0), torch.Generator().manual_seed(1)))
    assert torch.equal(mode, mog.head.sample(params[:, None], 0.0)[:, 0]) and mode.shape == (4, 2)
    value = draw(mog, params, SamplingConfig(seed=2), SamplingConfig(seed=2).generator())
    assert torch.equal(value, mog.head.sample(params[:, None], 1.0, torch.Generator().manual_seed(2))[:, 0])
    assert torch.equal(log_prob(mog, params, value), -mog.head.nll(params[:, None], value[:, None])[:, 0])
    assert torch.equal(next_input(mog, value), value[:, None, :])  # values are fed back as they are
    dmol = make_model("transformer", head="dmol", levels=VOCAB, mixtures=2)
    with torch.no_grad():
        params = dmol(torch.tensor([[1, 5, 9]])).params[:, -1]
    level = draw(dmol, params, SamplingConfig(seed=3), SamplingConfig(seed=3).generator())
    assert level.dtype == torch.float64 and level.shape == (1, 1)  # a value on the level grid ...
    fed = next_input(dmol, level)  # ... fed back as its level id
    assert fed.dtype == torch.long and torch.equal(fed, dmol.head.to_levels(level))


# ------------------------------------------------------------------------------- generate, stream and options


def _same_steps(a, b) -> bool:
    """Whether two lists of TokenSteps agree exactly in everything but their timings."""
    def same(x, y) -> bool:
        return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y

    names = ("index", "ids", "logprobs", "iterations", "residual", "converged", "finished", "params", "sampled")
    return len(a) == len(b) and all(same(getattr(x, n), getattr(y, n))
                                    for x, y in zip(a, b, strict=True) for n in names)


def test_generate_is_the_collected_stream():
    model = make_model("transformer", dtype=torch.float32, tol=1e-5)
    prompts = [[1, 2, 3, 4], [5, 6]]
    options = dict(temperature=0.9, top_p=0.9, repetition_penalty=1.2, seed=4, num_samples=2, stop=[3, 7],
                   mem_len=5)
    out = generate(model, prompts, 9, details=True, **options)
    steps = list(stream(model, prompts, 9, **options))
    assert _same_steps(out.steps, steps)
    new = torch.stack([s.ids for s in steps], 1)
    for row, sequence in enumerate(out.sequences):
        sampled = torch.stack([s.sampled for s in steps], 1)[row]
        assert torch.equal(sequence, torch.tensor(prompts[row // 2] + new[row][sampled].tolist())[: len(sequence)])
    real = make_model("transformer", input="linear", in_dim=2, head="mog", mixtures=3)
    prompt = torch.randn(2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    values = generate(real, prompt, 5, temperature=0.5, seed=1, details=True)
    assert _same_steps(values.steps, list(stream(real, prompt, 5, temperature=0.5, seed=1)))
    assert torch.equal(values.ids[:, 3:], torch.stack([s.ids for s in values.steps], 1))


def test_a_sampling_config_and_its_keyword_shortcuts_give_the_same_tokens():
    model = make_model("transformer", dtype=torch.float32, tol=1e-5)
    config = SamplingConfig(temperature=0.8, top_k=5, top_p=0.95, repetition_penalty=1.1, seed=3)
    by_config = generate(model, [1, 2, 3], 12, config, num_samples=3)
    by_name = generate(model, [1, 2, 3], 12, temperature=0.8, top_k=5, top_p=0.95, repetition_penalty=1.1, seed=3,
                       num_samples=3)
    assert torch.equal(by_config, by_name)
    # a shortcut replaces the config's field
    assert torch.equal(generate(model, [1, 2, 3], 12, dataclasses.replace(config, seed=9), seed=3, num_samples=3),
                       by_name)
    assert not torch.equal(generate(model, [1, 2, 3], 12, config, seed=9, num_samples=3), by_name)


def test_unknown_options_raise_one_line_errors_naming_them_and_the_allowed_ones():
    model = make_model("transformer", dtype=torch.float32, tol=1e-4)
    with pytest.raises(TypeError, match="unknown option 'temprature'") as info:
        generate(model, [1, 2], 3, temprature=0.5)
    message = str(info.value)
    assert "\n" not in message
    for allowed in ("temperature", "top_k", "top_p", "repetition_penalty", "seed", "num_samples", "stop", "cond",
                    "mem_len", "warm_start"):
        assert allowed in message.split("options are")[1]
    with pytest.raises(TypeError, match="unknown options 'beams', 'top_q'"):
        next(stream(model, [1, 2], 3, beams=2, top_q=0.5))
    with pytest.raises(TypeError, match="sampling must be a SamplingConfig"):
        generate(model, [1, 2], 3, 0.8)  # the old positional temperature
    with pytest.raises(ValueError, match="temperature"):
        generate(model, [1, 2], 3, temperature=-1.0)


@pytest.mark.parametrize("cell", list(CELLS))
def test_fused_decoding_equals_naive_re_solving(cell, monkeypatch):
    # fused=True solves every position after the prompt with fused solver iterations (uncompiled here, to test
    # the functions on both cells quickly; a compiled stream is tested below): the tokens of naive re-solving,
    # the eager steps' iteration counts, log-probabilities to rounding.
    monkeypatch.setattr(importlib.import_module("solvers.fused"), "COMPILE", False)
    # The transformer's steps run its pure decode step (f inside the fused graphs), also with a window.
    model = make_model(cell)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    for window in (None, 4):
        eager = generate(model, prompt, 12, temperature=0, details=True, mem_len=window)
        out = generate(model, prompt, 12, temperature=0, details=True, fused=True, mem_len=window)
        assert torch.equal(out.ids, naive_greedy(model, prompt, 12, window=window)[0])
        assert [s.iterations.tolist() for s in out.steps] == [s.iterations.tolist() for s in eager.steps]
        assert (out.logprobs - eager.logprobs).abs().max().item() < 1e-9


def test_a_compiled_fused_stream_samples_what_the_eager_one_samples():
    model = make_model("transformer", dtype=torch.float32, tol=1e-5)
    prompt = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(2))
    eager = list(stream(model, prompt, 8, temperature=0.8, seed=3))
    out = list(stream(model, prompt, 8, temperature=0.8, seed=3, fused=True))
    assert [s.ids.tolist() for s in out] == [s.ids.tolist() for s in eager]
    assert all(bool(s.converged.all()) for s in out)


def test_fused_decoding_refuses_a_solver_it_cannot_run():
    model = make_model("transformer")
    model.settings = dataclasses.replace(model.settings, forward=SolverConfig(method="broyden", line_search=True))
    with pytest.raises(ValueError, match="^fused=True: SolverConfig.fused=True runs the built-in methods"):
        list(stream(model, [1, 2], 2, fused=True))
