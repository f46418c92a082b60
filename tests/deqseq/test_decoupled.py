"""Decoupled inputs and outputs: input transforms, targets, class conditioning, user modules, and generation of
real-valued sequences from frozen equilibria compared with naive re-solving."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deqseq import DEQSequenceModel, ModelConfig, SolverSettings, generate
from deqseq.forecast import continue_series
from deqseq.heads import CategoricalHead, MixtureOfGaussiansHead
from deqseq.inputs import LinearInput, MLPInput, OneHotLinear, TokenEmbedding, build_input
from solvers import SolverConfig

CELLS = {
    "transformer": dict(cell="transformer", n_heads=2),
    "trellis": dict(cell="trellis", kernel_size=3, dilation=2),
}


def make_model(cell: str = "transformer", tol: float = 1e-11, seed: int = 0, **cfg) -> DEQSequenceModel:
    torch.manual_seed(seed)
    settings = SolverSettings(forward=SolverConfig(method="anderson", max_iter=300, tol=tol), batch_dims=2)
    config = ModelConfig(d_model=16, d_ff=32, **CELLS[cell], **cfg)
    return DEQSequenceModel(config, settings).double().eval()


def real_model(cell: str = "transformer", **cfg) -> DEQSequenceModel:
    return make_model(cell, input="linear", in_dim=2, head="mog", mixtures=3, **cfg)


# ------------------------------------------------------------------------------------------------ input transforms


def test_build_input_makes_each_transform_with_the_embed_width():
    for name, cls, extra in (("embedding", TokenEmbedding, {}), ("onehot", OneHotLinear, {}),
                             ("linear", LinearInput, {"in_dim": 3}), ("mlp", MLPInput, {"in_dim": 3})):
        module = build_input(ModelConfig(vocab_size=11, d_model=16, d_embed=8, input=name, **extra))
        assert type(module) is cls
        x = torch.randn(2, 5, 3) if "in_dim" in extra else torch.randint(0, 11, (2, 5))
        assert module(x).shape == (2, 5, 8)


def test_onehot_input_equals_its_linear_map_of_one_hot_vectors_and_takes_relaxed_inputs():
    module = OneHotLinear(7, 4).double()
    ids = torch.tensor([[0, 3, 6], [2, 2, 5]])
    expected = module.proj.weight.T[ids] + module.proj.bias
    assert torch.allclose(module(ids), expected, atol=1e-14)
    assert torch.allclose(module(F.one_hot(ids, 7).double()), expected, atol=1e-14)


def test_linear_input_needs_in_dim_and_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match="needs in_dim"):
        DEQSequenceModel(ModelConfig(d_model=16, n_heads=2, input="linear", head="mog"))
    model = real_model()
    with pytest.raises(ValueError, match=r"real values of shape \(B, T, 2\)"):
        model(torch.zeros(1, 4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="real values"):
        model(torch.zeros(1, 4, dtype=torch.long))
    ids_model = make_model(vocab_size=5)
    with pytest.raises(ValueError, match=r"integer ids of shape \(B, T\)"):
        ids_model(torch.zeros(1, 4, 5))


# ----------------------------------------------------------------------------------------------------- targets


def test_targets_default_to_the_next_inputs_when_input_and_output_spaces_match():
    x = torch.randn(2, 6, 2, dtype=torch.float64)
    model = real_model()
    loss, metrics = model.loss({"x": x})
    out = model(x)
    direct = model.head.nll(out.params[:, :-1], x[:, 1:]).mean()
    assert abs(loss.item() - direct.item()) < 1e-12 and abs(metrics["nll"] - direct.item()) < 1e-12


def test_alternative_targets_from_batch_t_predict_another_quantity():
    # Two input features, one predicted quantity (their product): the head's width differs from the input's.
    model = make_model(input="mlp", in_dim=2, head="mog", out_dim=1, mixtures=2)
    x = torch.randn(3, 5, 2, dtype=torch.float64)
    t = (x[..., :1] * x[..., 1:])
    loss, _ = model.loss({"x": x, "t": t})
    assert abs(loss.item() - model.head.nll(model(x).params, t).mean().item()) < 1e-12
    with pytest.raises(ValueError, match=r"no targets 't'.*give batch\['t'\]"):
        model.loss({"x": x})


def test_ids_scored_by_a_dmol_head_over_as_many_levels():
    model = make_model(vocab_size=16, head="dmol", levels=16, mixtures=2)
    x = torch.randint(0, 16, (2, 7))
    loss, _ = model.loss({"x": x})
    out = model(x)
    direct = model.head.nll(out.params[:, :-1], x[:, 1:, None]).mean()
    assert abs(loss.item() - direct.item()) < 1e-12
    mismatched = make_model(vocab_size=16, head="dmol", levels=32)
    with pytest.raises(ValueError, match="no targets 't'"):
        mismatched.loss({"x": x})


def test_ids_input_with_a_real_valued_head_needs_targets():
    model = make_model(vocab_size=5, head="mog", out_dim=1)
    with pytest.raises(ValueError, match=r"inputs \(ids \(2, 4\)\) are not in the 'mog' head's output space"):
        model.loss({"x": torch.zeros(2, 4, dtype=torch.long)})


# ------------------------------------------------------------------------------------------------- conditioning


def test_class_conditioning_is_the_one_hot_vector():
    model = make_model(vocab_size=9, cond_dim=4)
    x = torch.randint(0, 9, (3, 5))
    classes = torch.tensor([0, 3, 1])
    as_ids = model(x, cond=classes).params
    as_vectors = model(x, cond=F.one_hot(classes, 4).double()).params
    assert torch.allclose(as_ids, as_vectors, atol=1e-12)
    local = torch.randint(0, 4, (3, 5))
    assert torch.allclose(model(x, cond=local).params, model(x, cond=F.one_hot(local, 4).double()).params,
                          atol=1e-12)
    # The class changes the prediction.
    assert (model(x, cond=torch.tensor([2, 2, 2])).params - as_ids).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"class conditioning must be ids in \[0, 4\)"):
        model(x, cond=torch.tensor([0, 4, 1]))


# ---------------------------------------------------------------------------------------------- user's modules


class FourierFeatures(nn.Module):
    """A user's own input transform: sin/cos features of a scalar series, then a linear map."""

    def __init__(self, dim: int):
        super().__init__()
        self.freq = nn.Parameter(torch.linspace(0.5, 4.0, 8))
        self.proj = nn.Linear(16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = x * self.freq
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1))


def test_user_supplied_input_and_head_modules_train():
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, input="linear", in_dim=1, head="mog")
    head = MixtureOfGaussiansHead(16, 1, mixtures=2, min_std=1e-2)
    model = DEQSequenceModel(cfg, input=FourierFeatures(16), head=head)
    assert model.head is head and isinstance(model.input, FourierFeatures)
    x = torch.sin(torch.arange(20.0) / 3)[None, :, None]
    loss, _ = model.loss({"x": x})
    loss.backward()
    assert model.input.freq.grad is not None and model.input.freq.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------- real-valued generation


def naive_sampling(model: DEQSequenceModel, prompt: torch.Tensor, n: int, seed: int, cond=None):
    """Sampling that re-solves the whole prefix for every new step, drawing with the same seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    x, logprobs = prompt.clone(), []
    with torch.no_grad():
        for _ in range(n):
            params = model(x, cond=cond).params[:, -1:]
            value = model.head.sample(params, 1.0, generator)
            logprobs.append(-model.head.nll(params, value)[:, 0])
            x = torch.cat([x, value], dim=1)
    return x, torch.stack(logprobs, dim=1)


@pytest.mark.parametrize("cell", list(CELLS))
def test_frozen_history_sampling_equals_naive_re_solving_for_real_values(cell):
    model = real_model(cell, cond_dim=3)
    prompt = torch.randn(2, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(2, 3, dtype=torch.float64)
    out = generate(model, prompt, 16, seed=7, cond=cond, details=True)
    expected, logprobs = naive_sampling(model, prompt, 16, seed=7, cond=cond)
    assert out.ids.shape == (2, 21, 2)
    assert (out.ids - expected).abs().max().item() < 1e-9
    assert (out.logprobs - logprobs).abs().max().item() < 1e-9
    assert torch.equal(out.ids[:, :5], prompt)


def test_dmol_over_ids_generates_level_ids_equal_to_naive():
    model = make_model(vocab_size=16, head="dmol", levels=16, mixtures=2)
    prompt = torch.randint(0, 16, (1, 4), generator=torch.Generator().manual_seed(0))
    out = generate(model, prompt, 10, seed=3)
    generator = torch.Generator().manual_seed(3)
    x = prompt.clone()
    with torch.no_grad():
        for _ in range(10):
            value = model.head.sample(model(x).params[:, -1:], 1.0, generator)
            x = torch.cat([x, model.head.to_levels(value)[..., 0]], dim=1)
    assert out.dtype == torch.long and torch.equal(out, x)


def test_real_valued_generation_rejects_token_only_options():
    model = real_model()
    prompt = torch.zeros(1, 3, 2, dtype=torch.float64)
    for option in (dict(top_k=3), dict(top_p=0.5), dict(repetition_penalty=1.2), dict(stop=0)):
        with pytest.raises(ValueError, match="categorical heads only"):
            generate(model, prompt, 2, **option)


def test_continue_series_summarises_samples_and_the_one_step_predictive():
    model = make_model(input="linear", in_dim=1, head="mog", mixtures=2, cond_dim=2)
    prefix = torch.sin(torch.arange(12, dtype=torch.float64) / 2)
    result = continue_series(model, prefix, 6, num_samples=40, seed=0, cond=torch.tensor(1),
                             truth=torch.zeros(6, dtype=torch.float64))
    assert result.samples.shape == (40, 6, 1) and result.truth.shape == (6, 1)
    assert torch.allclose(result.mean, result.samples.mean(0)) and torch.allclose(result.std, result.samples.std(0))
    # The exact one-step predictive agrees with the spread of the 40 first samples (loose: 40 draws).
    first = result.samples[:, 0, 0]
    assert abs(first.mean() - result.first_mean[0]) < 4 * result.first_std[0] / 40 ** 0.5
    assert 0.5 < (first.std() / result.first_std[0]).item() < 1.6
    # The same as generate's first step with a class id as conditioning.
    params = model(prefix[None, :, None], cond=torch.tensor([1])).params[:, -1:]
    assert torch.allclose(result.first_mean, model.head.mean(params)[0, 0])
    assert len(result.table().splitlines()) == 7


def test_categorical_head_still_generates_with_the_token_path():
    model = make_model(vocab_size=7, input="onehot", seed=1)  # seed 0's prompt solve does not reach 1e-11
    assert isinstance(model.head, CategoricalHead)
    details = generate(model, torch.tensor([[1, 2, 3]]), 5, temperature=0, details=True)
    assert all(bool(s.converged.all()) for s in details.steps)
    out = details.ids
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        for _ in range(5):
            x = torch.cat([x, model(x).params[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, x)
