"""Experiment configs: defaults, YAML files, dotted overrides, round trips and one-line user errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from deqseq.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    SolverSettings,
    TrackingConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_yaml,
    load_config,
)
from solvers import SolverConfig


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _error(overrides: list[str], path: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_build_and_match_the_spec():
    cfg = load_config(None, [])
    assert cfg == Config()
    assert cfg.run == RunConfig(name="default", seed=0, device="auto", out_dir="runs", dtype="float32",
                                compile=False, amp="auto")
    assert cfg.data == DataConfig(source="stdlib", tokenizer=None, batch_size=16, seq_len=64, eval_batch_size=8,
                                  mem_len=0)
    assert cfg.train.betas == (0.9, 0.99) and cfg.train.max_steps == 1000 and cfg.train.pretrain_grad == "unrolled:4"
    assert cfg.tracking == TrackingConfig(mode="offline", project="deqseq", entity=None, run_name=None, tags=[])
    assert cfg.model == ModelConfig() and cfg.solver == SolverSettings()
    assert cfg.solver.forward.tol == 1e-4 and cfg.solver.backward.tol == 1e-5


def test_file_then_overrides_in_order(tmp_path):
    path = _write(tmp_path, """
run: {name: small, seed: 3}
train:
  max_steps: 500
  lr: 3.0e-4
model:
  cell: trellis
tracking:          # an empty section heading is allowed
""")
    cfg = load_config(path, ["train.max_steps=200", "run.seed=7", "run.seed=8"])
    assert cfg.run.name == "small" and cfg.run.seed == 8          # the last override wins
    assert cfg.train.max_steps == 200 and cfg.train.lr == 3e-4   # overrides beat the file, the file beats defaults
    assert cfg.model.cell == "trellis" and cfg.model.d_model == 128
    assert cfg.tracking == TrackingConfig()


def test_nested_solver_overrides_keep_the_other_fields(tmp_path):
    path = _write(tmp_path, "solver:\n  forward: {max_iter: 40}\n  batch_dims: 2\n")
    cfg = load_config(path, ["solver.forward.method=anderson", "solver.backward.max_iter=50",
                             "solver.forward.tol=1e-5", "solver.backward={memory: 8}"])
    fwd, bwd = cfg.solver.forward, cfg.solver.backward
    assert isinstance(fwd, SolverConfig) and isinstance(bwd, SolverConfig)
    assert (fwd.method, fwd.max_iter, fwd.tol, fwd.stop) == ("anderson", 40, 1e-5, "rel")
    assert (bwd.method, bwd.max_iter, bwd.tol, bwd.memory) == ("broyden", 50, 1e-5, 8)
    assert cfg.solver.batch_dims == 2


def test_value_types_are_parsed_and_coerced():
    cfg = load_config(None, ["model.window=16", "train.lr=1", "train.max_steps=1e3", "train.betas=[0.8, 0.95]",
                             "tracking.tags=[a, 2]", "run.name=2024", "data.source=markov:order=2,vocab=16",
                             "train.resume=true", "solver.forward.peer_kwargs={m: 6}"])
    assert cfg.model.window == 16
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.betas == (0.8, 0.95)
    assert cfg.tracking.tags == ["a", "2"]
    assert cfg.run.name == "2024"
    assert cfg.data.source == "markov:order=2,vocab=16"
    assert cfg.train.resume is True
    assert cfg.solver.forward.peer_kwargs == {"m": 6}
    nulled = apply_overrides(cfg, ["model.window=null", "data.tokenizer=null", "solver.forward.memory=null"])
    assert nulled.model.window is None and nulled.data.tokenizer is None and nulled.solver.forward.memory is None
    assert cfg.model.window == 16  # apply_overrides copies


def test_dict_and_yaml_round_trips(tmp_path):
    cfg = load_config(None, ["run.name=rt", "train.betas=[0.8, 0.9]", "tracking.tags=[x]", "model.window=8",
                             "solver.forward.method=anderson", "solver.forward.peer_kwargs={lam: 0.001}",
                             "solver.grad=phantom:5:0.5"])
    d = config_to_dict(cfg)
    assert d["train"]["betas"] == [0.8, 0.9] and d["solver"]["forward"]["method"] == "anderson"
    assert yaml.safe_load(yaml.safe_dump(d)) == d  # plain types only
    assert config_from_dict(d) == cfg
    assert load_config(_write(tmp_path, dump_yaml(cfg)), []) == cfg
    assert config_from_dict({"train": {"lr": 0.5}}).train == dataclasses.replace(TrainConfig(), lr=0.5)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["train.max_step=3"], "unknown key 'train.max_step'; did you mean 'train.max_steps'?"),
    (["trian.lr=1"], "unknown key 'trian.lr'; did you mean 'train.lr'?"),
    (["train.seed=1"], "unknown key 'train.seed'; did you mean 'run.seed'?"),
    (["solver.forward.tols=1"], "did you mean 'solver.forward.tol'?"),
    (["bogus=1"], "unknown key 'bogus'; allowed sections: run, data, model, solver, train, tracking"),
    (["train.lr.x=1"], "'train.lr' is a single value"),
    (["train.max_steps=abc"], "train.max_steps=abc: expected an integer"),
    (["train.max_steps=1.5"], "train.max_steps=1.5: expected an integer"),
    (["train.max_steps=true"], "train.max_steps=true: expected an integer"),
    (["train.lr=fast"], "train.lr=fast: expected a number"),
    (["train.resume=1"], "train.resume=1: expected true or false"),
    (["train.betas=[0.9]"], "train.betas=[0.9]: expected a list of 2 numbers"),
    (["model.window=abc"], "model.window=abc: expected an integer or null"),
    (["run.name=null"], "run.name=null: expected a string"),
    (["solver.forward=3"], "solver.forward=3: expected a mapping of SolverConfig keys"),
    (["tracking.tags=[a, b"], "tracking.tags=[a, b: cannot parse the value"),
    (["train.max_steps"], "override 'train.max_steps' is not key=value"),
    (["=3"], "has no key before '='"),
])
def test_user_errors_are_one_line_and_name_the_key(overrides, expected):
    assert expected in _error(overrides)


@pytest.mark.parametrize(("override", "expected"), [
    ("model.cell=lstm", ["model.cell='lstm' is unknown", "transformer", "trellis"]),
    ("solver.forward.method=newton", ["solver.forward.method='newton' is unknown", "anderson", "broyden", "picard"]),
    ("solver.backward.tol=-1", ["solver.backward.tol=-1.0 must be > 0"]),
    ("solver.grad=explicit", ["solver.grad='explicit'", "unrolled:K"]),
    ("solver.batch_dims=3", ["solver.batch_dims=3", "allowed: 1, 2"]),
    ("tracking.mode=sometimes", ["tracking.mode='sometimes' is unknown", "disabled, offline, online"]),
    ("run.device=gpu", ["run.device='gpu'", "auto, cpu, cuda, cuda:N"]),
    ("run.dtype=float16", ["run.dtype='float16'", "float32, float64"]),
    ("run.amp=fp16", ["run.amp='fp16'", "auto, bf16, off"]),
    ("run.name=a/b", ["run.name='a/b'", "single directory name"]),
    ("data.tokenizer=bpe", ["data.tokenizer='bpe'", "byte, char, id, word"]),
    ("data.batch_size=0", ["data.batch_size=0 must be an integer >= 1"]),
    ("data.mem_len=-1", ["data.mem_len=-1 must be an integer >= 0"]),
    ("train.lr=0", ["train.lr=0.0 must be a number > 0"]),
    ("train.min_lr_ratio=1.5", ["train.min_lr_ratio=1.5 must be a number in [0, 1]"]),
    ("train.betas=[0.9, 1.0]", ["train.betas", "two numbers in [0, 1)"]),
    ("train.pretrain_grad=unrolled:0", ["train.pretrain_grad='unrolled:0'", "unrolled:K"]),
])
def test_invalid_values_get_the_field_message_under_the_dotted_key(override, expected):
    message = _error([override])
    for part in expected:
        assert part in message


def test_cross_field_checks_see_all_overrides_at_once():
    # d_model=36 with the default 4 heads is invalid on its own; only the final combination is checked.
    assert load_config(None, ["model.d_model=36", "model.n_heads=3"]).model.d_model == 36
    assert "model.d_model=36 must split into n_heads=4" in _error(["model.d_model=36"])


def test_file_errors(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert _error([], missing) == f"config file not found: {missing}"
    bad_yaml = _write(tmp_path, "train:\n  lr: [1, 2\n")
    message = _error([], bad_yaml)
    assert message.startswith(f"{bad_yaml}: invalid YAML at line")
    unknown = _write(tmp_path, "train:\n  max_step: 3\n")
    assert _error([], unknown) == f"{unknown}: unknown key 'train.max_step'; did you mean 'train.max_steps'?"
    bad_value = _write(tmp_path, "train:\n  max_steps: abc\n")
    assert "train.max_steps=abc: expected an integer" in _error([], bad_value)
    not_mapping = _write(tmp_path, "- 1\n- 2\n")
    assert "expected a mapping of sections" in _error([], not_mapping)
    section_scalar = _write(tmp_path, "train: 5\n")
    assert "train=5: expected a mapping of TrainConfig keys" in _error([], section_scalar)


def test_sections_validate_when_built_directly():
    with pytest.raises(ValueError, match=r"TrainConfig\.warmup_steps=-1"):
        TrainConfig(warmup_steps=-1)
    with pytest.raises(ValueError, match=r"TrackingConfig\.tags"):
        TrackingConfig(tags=["ok", 3])
    with pytest.raises(ValueError, match=r"Config\.train must be a TrainConfig"):
        Config(train=RunConfig())
    assert TrainConfig(betas=[0.5, 0.6]).betas == (0.5, 0.6)


def test_the_schema_is_an_omegaconf_structured_config():
    from omegaconf import OmegaConf

    from deqseq.config.loader import _defaults

    node = _defaults()
    assert OmegaConf.get_type(node.solver.forward) is SolverConfig
    assert node.train.max_steps == 1000 and node.model.cell == "transformer"
    assert yaml.safe_load(dump_yaml(Config())) == config_to_dict(Config())


@pytest.mark.parametrize(("override", "expected"), [
    ("train.lr=.inf", "train.lr=.inf: expected a number"),
    ("solver.forward.tol=.nan", "solver.forward.tol=.nan: expected a number"),
    ("train.resume=yes please", "train.resume=yes please: expected true or false"),
    ("solver.warm_start=true", "'solver.warm_start' is no longer a config key"),
])
def test_values_omegaconf_would_accept_are_still_refused(override, expected):
    assert expected in _error([override])


def test_integral_numbers_fill_integer_fields_and_text_fills_strings():
    cfg = load_config(None, ["train.max_steps=2e3", "data.seq_len=32.0", "run.name=007", "tracking.project=1e3"])
    assert cfg.train.max_steps == 2000 and isinstance(cfg.train.max_steps, int) and cfg.data.seq_len == 32
    assert cfg.run.name == "007" and cfg.tracking.project == "1e3"


def test_configs_saved_by_earlier_versions_still_load():
    saved = config_to_dict(Config())
    saved["solver"]["warm_start"] = False  # a key this version retired
    assert config_from_dict(saved) == Config()
