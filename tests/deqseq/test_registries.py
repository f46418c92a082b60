"""Registries that build (cells, heads, inputs, data sources), open to users, and the model's explicit I/O
(`model.io`): what it reads, what its head emits, what a sample feeds back and what its default targets are."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from deqseq import (
    CELLS,
    HEADS,
    INPUTS,
    SOURCES,
    DEQSequenceModel,
    ModelConfig,
    ModelIO,
    SolverSettings,
    generate,
    load_checkpoint,
    register_cell,
    register_head,
    register_input,
    register_source,
    train,
)
from deqseq.cells import Cell, Context, History, TransformerCell, build_cell
from deqseq.config import load_config
from deqseq.data import SCHEME_TOKENIZERS, SCHEMES, Corpus, DataError, IdTokenizer, load_corpus
from deqseq.forecast import continue_series
from deqseq.heads import CategoricalHead, Head, build_head
from deqseq.inputs import TokenEmbedding, build_input
from deqseq.model_io import derive_io
from deqseq.registry import Registry
from solvers import SolverConfig


@pytest.fixture
def registries():
    """Every registry as it was before the test, whatever the test registered or replaced."""
    saved = [(registry, dict(registry)) for registry in (CELLS, HEADS, INPUTS, SOURCES)]
    yield
    for registry, entries in saved:
        for name in [n for n in registry if n not in entries]:
            registry.unregister(name)
        for name, entry in entries.items():
            registry.register(name, entry, replace=True)


def tight() -> SolverSettings:
    return SolverSettings(forward=SolverConfig(method="anderson", max_iter=200, tol=1e-11), batch_dims=2)


# ---------------------------------------------------------------------------------------------- a user's modules


@dataclass
class LagHistory(History):
    u: Tensor  # (B, 1, d): the injection of the last frozen position


@dataclass
class LagContext(Context):
    u_last: Tensor  # (B, 1, d)


class LagCell(Cell):
    """A user's cell: z_t = tanh(W z_t + u_t + u_{t-1}); each position sees its input and the previous one."""

    def __init__(self, d_model: int, d_input: int):
        super().__init__()
        self.state_dim = d_model
        self.inject = nn.Linear(d_input, d_model)
        self.mix = nn.Linear(d_model, d_model, bias=False)
        nn.init.normal_(self.mix.weight, std=0.3 / d_model**0.5)  # a contraction: one fixed point per position

    def empty_history(self, batch_size: int, device, dtype) -> LagHistory:
        return LagHistory(offset=0, u=torch.zeros(batch_size, 1, self.state_dim, device=device, dtype=dtype))

    def prepare(self, x: Tensor, history: LagHistory | None = None, attn_mask=None, window=None) -> LagContext:
        history = self._history_or_empty(x, history)
        u = self.inject(x)
        return LagContext(u=u + torch.cat([history.u, u[:, :-1]], dim=1), history=history, u_last=u[:, -1:])

    def forward(self, z: Tensor, ctx: LagContext) -> Tensor:
        return torch.tanh(self.mix(z) + ctx.u)

    def extend_history(self, ctx: LagContext, z_star: Tensor) -> LagHistory:
        self._check_frozen(ctx, z_star)
        return LagHistory(offset=ctx.history.offset + z_star.shape[1], u=ctx.u_last)


class LaplaceHead(Head):
    """A user's head: independent Laplace distributions over Q values; params (B, T, 2Q) = means, log-scales."""

    emits = "values"
    discrete = False

    def __init__(self, in_dim: int, target_dim: int):
        super().__init__()
        self.target_dim, self.num_params = target_dim, 2 * target_dim
        self.proj = nn.Linear(in_dim, 2 * target_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_b = params.chunk(2, dim=-1)
        return mu, log_b.clamp(min=-5)

    def nll(self, params: Tensor, target: Tensor) -> Tensor:
        mu, log_b = self._split(params)
        target = target if target.dim() == mu.dim() else target[..., None]
        return (math.log(2) + log_b + (target - mu).abs() / log_b.exp()).sum(-1)

    def sample(self, params: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        mu, log_b = self._split(params)
        if temperature == 0:
            return mu
        u = torch.rand(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device) - 0.5
        return mu - temperature * log_b.exp() * u.sign() * torch.log1p(-2 * u.abs())

    def mean(self, params: Tensor) -> Tensor:
        return self._split(params)[0]

    def std(self, params: Tensor) -> Tensor:
        return self._split(params)[1].exp() * math.sqrt(2)


class ScaledEmbedding(TokenEmbedding):
    """A user's ids input: an embedding table scaled by sqrt(dim)."""

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids) * math.sqrt(self.dim)


class SinCos(nn.Module):
    """A user's values input that declares its io: sin/cos features of each value, then a linear map."""

    reads = "values"

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.freq = nn.Parameter(torch.linspace(0.5, 3.0, 4))
        self.proj = nn.Linear(8 * in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        angles = (x[..., None] * self.freq).flatten(-2)
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1))


def load_counting(spec: str, options: str, tokenizer: str | None, max_vocab: int | None, min_count: int) -> Corpus:
    """A user's source "counting:V": the ids 0, 1, ..., V-1 over and over, with one random id in ten."""
    vocab = int(options or 6)
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(4000) % vocab
    noisy = torch.rand(4000, generator=g) < 0.1
    ids = torch.where(noisy, torch.randint(0, vocab, (4000,), generator=g), ids)
    return Corpus(ids[:3600], ids[3600:3800], ids[3800:], IdTokenizer(vocab), "token", spec=spec,
                  description=f"counting mod {vocab}")


TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "data.batch_size=2", "data.seq_len=8",
        "data.eval_batch_size=2", "train.eval_batches=1", "train.max_steps=2", "train.warmup_steps=1",
        "train.pretrain_steps=0", "run.device=cpu", "tracking.mode=disabled", "solver.forward.method=anderson",
        "solver.forward.tol=1e-4", "solver.forward.max_iter=40"]


def run_training(tmp_path: Path, *overrides: str):
    return train(load_config(None, [*TINY, f"run.out_dir={tmp_path}", "run.name=user", *overrides]), progress=False)


# ------------------------------------------------------------------------------------------------ registering


def test_a_registry_refuses_duplicates_and_bad_names_and_lists_the_allowed_ones():
    registry: Registry[int] = Registry("widget")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="widget 'a' is already registered; pass replace=True"):
        registry.register("a", 2)
    assert registry.register("a", 2, replace=True) == 2 and registry["a"] == 2 and list(registry) == ["a"]
    for bad in ("", " a", 3):
        with pytest.raises(ValueError, match="non-empty string"):
            registry.register(bad, 1)
    registry.register("b", 3)
    with pytest.raises(ValueError, match="unknown widget 'c'; allowed: a, b"):
        registry.entry("c")
    assert registry.unregister("b") == 3 and "b" not in registry and len(registry) == 1


def test_built_in_names_are_refused_and_replace_true_replaces(registries):
    with pytest.raises(ValueError, match="cell 'transformer' is already registered"):
        register_cell("transformer", TransformerCell.from_config)
    with pytest.raises(ValueError, match="head 'categorical' is already registered"):
        register_head("categorical", CategoricalHead.from_config, emits="ids")
    with pytest.raises(ValueError, match="input 'embedding' is already registered"):
        register_input("embedding", TokenEmbedding.from_config, reads="ids")
    with pytest.raises(ValueError, match="data source 'markov' is already registered"):
        register_source("markov", load_counting)
    with pytest.raises(ValueError, match="emits='logits' must be one of ids, values, levels"):
        register_head("mine", CategoricalHead.from_config, emits="logits")
    with pytest.raises(ValueError, match="reads='floats' must be one of ids, values"):
        register_input("mine", TokenEmbedding.from_config, reads="floats")
    with pytest.raises(ValueError, match="cannot contain ':'"):
        register_source("a:b", load_counting)
    assert "mine" not in HEADS and "mine" not in INPUTS
    register_input("embedding", lambda cfg: ScaledEmbedding(cfg.vocab_size, cfg.embed_dim), reads="ids",
                   replace=True)
    assert type(build_input(ModelConfig(vocab_size=5, d_model=8, n_heads=2))) is ScaledEmbedding


def test_the_fixture_restores_what_a_test_replaced():
    assert INPUTS["embedding"].build.__func__ is TokenEmbedding.from_config.__func__
    assert "lag" not in CELLS and "laplace" not in HEADS and "counting" not in SOURCES


def test_unknown_names_are_one_line_errors_that_list_the_registered_ones(registries):
    register_head("laplace", lambda cfg, in_dim: LaplaceHead(in_dim, cfg.target_dim), emits="values")
    with pytest.raises(ValueError, match="unknown head 'nope'; allowed: categorical, dmol, laplace, mog"):
        HEADS.entry("nope")
    with pytest.raises(ValueError, match="ModelConfig.head='nope' is unknown; allowed: categorical, dmol, laplace"):
        ModelConfig(head="nope")
    with pytest.raises(DataError, match="unknown data spec 'nope'"):
        load_corpus("nope")


# -------------------------------------------------------------------------------- user entries, end to end


def test_a_user_cell_is_built_from_the_config_and_generates_what_re_solving_gives(registries):
    register_cell("lag", lambda cfg: LagCell(cfg.d_model, cfg.embed_dim))
    cfg = ModelConfig(cell="lag", vocab_size=7, d_model=12, d_embed=6)
    torch.manual_seed(0)
    model = DEQSequenceModel(cfg, tight()).double()
    assert isinstance(model.deq.cell, LagCell) and model.deq.cell.inject.in_features == 6
    assert isinstance(build_cell(cfg), LagCell)
    loss, _ = model.loss({"x": torch.randint(0, 7, (2, 9))})
    loss.backward()
    assert model.deq.cell.mix.weight.grad.abs().sum() > 0
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(model, prompt, 5, temperature=0)
    x = prompt
    with torch.no_grad():
        for _ in range(5):  # greedy, re-solving the whole sequence every step
            x = torch.cat([x, model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, x)


def test_a_cell_builder_must_return_a_cell(registries):
    register_cell("not-a-cell", lambda cfg: nn.Linear(2, 2))
    with pytest.raises(TypeError, match="returned Linear, not a deqseq.cells.Cell"):
        DEQSequenceModel(ModelConfig(cell="not-a-cell"))


def test_a_user_source_cell_input_and_head_train_from_a_config_and_sample(registries, tmp_path):
    register_source("counting", load_counting, usage="counting[:VOCAB]", tokenizers=("id",))
    register_cell("lag", lambda cfg: LagCell(cfg.d_model, cfg.embed_dim))
    register_input("scaled", lambda cfg: ScaledEmbedding(cfg.vocab_size, cfg.embed_dim), reads="ids")
    register_head("cat2", lambda cfg, in_dim: CategoricalHead(in_dim, cfg.vocab_size), emits="ids")
    assert SCHEMES["counting"] == "counting[:VOCAB]" and SCHEME_TOKENIZERS["counting"] == ("id",)
    corpus = load_corpus("counting:5")
    assert corpus.tokenizer.vocab_size == 5 and (corpus.train == torch.arange(3600) % 5).float().mean() > 0.9
    with pytest.raises(DataError, match="tokenizer 'byte' is not available for counting data; allowed: id"):
        load_corpus("counting:5", "byte")
    result = run_training(tmp_path, "data.source=counting:5", "model.cell=lag", "model.input=scaled",
                          "model.head=cat2")
    assert result.step == 2 and math.isfinite(result.valid["nll"])
    model, tokenizer, config = load_checkpoint(result.run_dir)
    assert (config.model.cell, config.model.input, config.model.head) == ("lag", "scaled", "cat2")
    assert isinstance(model.deq.cell, LagCell) and isinstance(model.input, ScaledEmbedding)
    assert tokenizer.vocab_size == 5 and model.io.feedback == "ids" and model.io.categorical
    out = generate(model, [0, 1, 2], 1, top_k=2, seed=0)
    assert out.shape == (1, 4) and 0 <= int(out[0, -1]) < 5


def test_a_user_head_trains_on_series_from_a_config_and_continues_them(registries, tmp_path):
    register_head("laplace", lambda cfg, in_dim: LaplaceHead(in_dim, cfg.target_dim), emits="values")
    fourier = "data.source=fourier:series=40,length=9,terms=1,periods=4-6,noise=0.05,seed=0"
    result = run_training(tmp_path, fourier, "model.input=linear", "model.head=laplace")
    assert result.step == 2 and math.isfinite(result.valid["nll"])
    model, tokenizer, config = load_checkpoint(result.run_dir)
    assert tokenizer is None and isinstance(model.head, LaplaceHead)
    assert model.io == ModelIO(reads="values", emits="values", target_dim=1, in_dim=1)
    cont = continue_series(model, torch.sin(torch.arange(6.0)), 1, num_samples=3, seed=0)
    assert cont.samples.shape == (3, 1, 1) and torch.isfinite(cont.samples).all()
    with pytest.raises(Exception, match="gives token ids; use input embedding or onehot and head categorical"):
        run_training(tmp_path / "ids", "data.source=markov:order=1,vocab=4,length=2000", "model.head=laplace")


def test_a_user_values_input_is_built_from_a_config(registries):
    register_input("sincos", lambda cfg: SinCos(cfg.in_dim, cfg.embed_dim), reads="values")
    model = DEQSequenceModel(ModelConfig(d_model=16, n_heads=2, input="sincos", in_dim=1, head="mog"))
    assert isinstance(model.input, SinCos) and model.io.reads == "values" and model.io.feedback == "values"


# ------------------------------------------------------------------------------------------------- model.io

ID_INPUTS = {"embedding": {}, "onehot": {}}
VALUE_INPUTS = {"linear": {"in_dim": 2}, "mlp": {"in_dim": 2}}


@pytest.mark.parametrize("input_name", [*ID_INPUTS, *VALUE_INPUTS])
@pytest.mark.parametrize("head_name", ["categorical", "mog", "dmol"])
def test_model_io_of_every_built_in_input_and_head(input_name, head_name):
    reads = "ids" if input_name in ID_INPUTS else "values"
    extra = {**ID_INPUTS, **VALUE_INPUTS}[input_name]
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32, vocab_size=8, levels=8, input=input_name, head=head_name,
                      **extra)
    model = DEQSequenceModel(cfg)
    io = model.io
    emits = {"categorical": "ids", "mog": "values", "dmol": "levels"}[head_name]
    assert (io.reads, io.emits) == (reads, emits) == (INPUTS[input_name].reads, HEADS[head_name].emits)
    assert io.target_dim == cfg.target_dim and io.categorical == (head_name == "categorical")
    assert io.relaxed == (input_name == "onehot")
    assert (io.vocab, io.in_dim) == ((8, None) if reads == "ids" else (None, 2))
    assert io.out_vocab == (8 if emits == "ids" else None) and io.levels == (8 if emits == "levels" else None)
    expected = {("ids", "ids"): "ids", ("ids", "levels"): "levels", ("values", "values"): "values",
                ("values", "levels"): "values"}.get((reads, emits))
    assert io.feedback == expected
    x = torch.randint(0, 8, (2, 5)) if reads == "ids" else torch.rand(2, 5, 2) * 2 - 1
    targets = io.next_step_targets(x)
    if expected is None:
        assert targets is None
        with pytest.raises(ValueError, match="no targets 't'"):
            model.loss({"x": x})
        return
    assert torch.equal(targets, x[:, 1:, None] if expected == "levels" else x[:, 1:])
    model.loss({"x": x})  # the default targets are scored
    sample = model.head.sample(model(x[:, :1]).params[:, -1])
    step = io.as_input(sample, model.head)
    assert step.shape == ((2, 1) if reads == "ids" else (2, 1, 2)) and step.dtype == x.dtype


def test_dmol_over_ids_feeds_back_level_ids_only_with_as_many_levels_as_ids():
    same = DEQSequenceModel(ModelConfig(d_model=16, n_heads=2, vocab_size=6, head="dmol", levels=6))
    other = DEQSequenceModel(ModelConfig(d_model=16, n_heads=2, vocab_size=6, head="dmol", levels=12))
    assert same.io.feedback == "levels" and other.io.feedback is None
    value = torch.tensor([[0.2]])  # level 3 of 6: 2 * 3 / 5 - 1
    assert same.io.as_input(value, same.head).tolist() == [[3]] and other.io.as_input(value, other.head) is None
    with pytest.raises(ValueError, match="cannot feed the 'dmol' head's samples"):
        generate(other, [1, 2], 2)


def test_the_io_checks_what_the_model_reads():
    ids = ModelIO(reads="ids", emits="ids", vocab=5, out_vocab=5)
    ids.check_input(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer ids of shape \(B, T\)"):
        ids.check_input(torch.zeros(2, 3, 5))
    ModelIO(reads="ids", emits="ids", vocab=5, relaxed=True).check_input(torch.zeros(2, 3, 5))  # relaxed one-hots
    with pytest.raises(ValueError, match=r"ids must have shape \(B, T\)"):
        ids.check_input(torch.zeros(2, 3, 1, dtype=torch.long))
    values = ModelIO(reads="values", emits="values", target_dim=2, in_dim=2)
    values.check_input(torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match=r"real values of shape \(B, T, 2\)"):
        values.check_input(torch.zeros(1, 3, 3))
    ModelIO(reads="values", emits="values").check_input(torch.zeros(1, 3, 7))  # in_dim unknown: any width
    assert ModelIO(reads="ids", emits="ids", vocab=5, out_vocab=6).feedback is None
    assert ModelIO(reads="values", emits="values", target_dim=1, in_dim=2).feedback is None
    with pytest.raises(ValueError, match="ModelIO.reads='text'"):
        ModelIO(reads="text", emits="ids")
    with pytest.raises(ValueError, match="needs levels"):
        ModelIO(reads="ids", emits="levels")


def test_derive_io_reads_the_registry_for_built_modules_and_declarations_for_the_users():
    cfg = ModelConfig(d_model=16, n_heads=2, vocab_size=9)  # embedding + categorical
    built = derive_io(cfg, build_input(cfg), build_head(cfg, 16), user_input=False, user_head=False)
    assert built == ModelIO(reads="ids", emits="ids", vocab=9, out_vocab=9, embeds_onehot=True)
    # A user's modules declare reads / emits and their sizes: the config's names do not matter then.
    users = derive_io(cfg, SinCos(3, 16), LaplaceHead(16, 3), user_input=True, user_head=True)
    assert users == ModelIO(reads="values", emits="values", target_dim=3, in_dim=3)
    # Modules that declare nothing stand in for what the config names.
    plain = derive_io(cfg, nn.Embedding(9, 16), nn.Linear(16, 9), user_input=True, user_head=True)
    assert plain == ModelIO(reads="ids", emits="ids", vocab=9, out_vocab=9)  # no embed_onehot of its own


def test_user_modules_with_declared_io_generate_what_re_solving_gives():
    cfg = ModelConfig(d_model=16, n_heads=2, d_ff=32)  # names an embedding and a categorical head
    torch.manual_seed(0)
    model = DEQSequenceModel(cfg, tight(), input=SinCos(1, 16), head=LaplaceHead(16, 1)).double()
    assert model.io == ModelIO(reads="values", emits="values", target_dim=1, in_dim=1)
    prompt = torch.sin(torch.arange(5, dtype=torch.float64))[None, :, None]
    out = generate(model, prompt, 4, seed=3, details=True)
    g = torch.Generator().manual_seed(3)
    x = prompt
    with torch.no_grad():
        for _ in range(4):  # the same draws, re-solving the whole sequence every step
            x = torch.cat([x, model.head.sample(model(x).params[:, -1:], 1.0, g)], dim=1)
    assert out.ids.shape == (1, 9, 1) and (out.ids - x).abs().max() < 1e-9
    with pytest.raises(ValueError, match="categorical heads only"):
        generate(model, prompt, 2, top_k=3)


def test_an_explicit_io_states_what_undeclared_modules_read_and_emit():
    class Plain(nn.Module):  # declares nothing
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(2, 16)

        def forward(self, x: Tensor) -> Tensor:
            return self.proj(x)

    io = ModelIO(reads="values", emits="values", target_dim=2, in_dim=2)
    model = DEQSequenceModel(ModelConfig(d_model=16, n_heads=2, d_ff=32), input=Plain(),
                             head=LaplaceHead(16, 2), io=io)
    assert model.io is io
    out = generate(model, torch.zeros(1, 3, 2), 2, seed=0)
    assert out.shape == (1, 5, 2)
    model.head = LaplaceHead(16, 2)  # an explicit io stays as given
    assert model.io is io


def test_the_io_follows_a_module_swapped_in_after_construction():
    model = DEQSequenceModel(ModelConfig(d_model=16, n_heads=2, vocab_size=5))
    assert model.io.categorical
    model.head = LaplaceHead(16, 1)
    assert model.io.emits == "values" and model.io.feedback is None and not model.io.categorical
