"""Data sources as config keys: data.options merged into the source's spec, key by key, from files and overrides."""

from __future__ import annotations

import pytest

from deqseq.config import ConfigError, load_config
from deqseq.data import DataError, load_corpus, spec_with_options


@pytest.mark.parametrize(("spec", "options", "expected"), [
    ("fourier", {"series": 500, "length": 65}, "fourier:series=500,length=65"),
    ("markov:order=1,vocab=8", {"vocab": 32}, "markov:order=1,vocab=32"),  # options win, order kept
    ("markov", {}, "markov"),
    ("digits", {"cond": "none", "seed": 3}, "digits:cond=none,seed=3"),
    ("text", {"path": "a b/c.txt"}, "text:a b/c.txt"),
    ("stdlib", {"max_bytes": 10_000}, "stdlib:max_bytes=10000"),
])
def test_options_merge_into_the_spec(spec, options, expected):
    assert spec_with_options(spec, options) == expected


def test_a_path_source_takes_only_its_path():
    with pytest.raises(DataError, match="takes one path"):
        spec_with_options("text", {"path": "x", "lines": 3})
    with pytest.raises(DataError, match="takes one path"):
        spec_with_options("text:corpus.txt", {"path": "other.txt"})


def test_loading_with_options_equals_loading_the_spec():
    inline = load_corpus("markov:order=1,vocab=8,length=3000,seed=2")
    keyed = load_corpus("markov", options={"order": 1, "vocab": 8, "length": 3000, "seed": 2})
    assert keyed.spec == inline.spec and keyed.train.equal(inline.train) and keyed.tokenizer.vocab_size == 8
    with pytest.raises(DataError, match="vocab=0"):
        load_corpus("markov", options={"vocab": 0})  # the source's own check names the option


def test_options_are_config_keys_overridable_one_by_one(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  source: fourier\n  options:\n    series: 200\n    length: 33\n", encoding="utf-8")
    cfg = load_config(path, ["data.options.length=65", "data.options.noise=0.1"])
    assert cfg.data.options == {"series": 200, "length": 65, "noise": 0.1}
    assert cfg.data.spec == "fourier:series=200,length=65,noise=0.1"
    series = load_corpus(cfg.data.spec)
    assert series.train.shape[1] == 65
    with pytest.raises(ConfigError, match="'data.options' holds one level of keys"):
        load_config(None, ["data.options.a.b=1"])


def test_resume_refuses_changed_data_options_and_accepts_configs_saved_before_options():
    from deqseq.config import config_to_dict
    from deqseq.resume import check_resumable

    saved = config_to_dict(load_config(None, ["data.source=markov", "data.options.vocab=8"]))
    check_resumable(saved, config_to_dict(load_config(None, ["data.source=markov", "data.options.vocab=8"])))
    with pytest.raises(ConfigError, match="data.options.vocab"):
        check_resumable(saved, config_to_dict(load_config(None, ["data.source=markov", "data.options.vocab=9"])))
    before = config_to_dict(load_config(None, ["data.source=markov:vocab=8"]))
    del before["data"]["options"]  # a checkpoint written before data.options existed
    check_resumable(before, config_to_dict(load_config(None, ["data.source=markov:vocab=8"])))


def test_switching_the_source_drops_the_file_options_but_keeps_the_overrides_own(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("data:\n  source: stdlib\n  options:\n    max_bytes: 4000000\n", encoding="utf-8")
    assert load_config(path, []).data.spec == "stdlib:max_bytes=4000000"
    assert load_config(path, ["data.source=markov:order=1"]).data.spec == "markov:order=1"
    # The options given with the new source stay, before or after it.
    assert load_config(path, ["data.options.vocab=8", "data.source=markov"]).data.spec == "markov:vocab=8"
    assert load_config(path, ["data.source=markov", "data.options.vocab=8"]).data.spec == "markov:vocab=8"
    # The same source keeps them: an option is then overridden key by key.
    assert load_config(path, ["data.source=stdlib", "data.options.max_bytes=10"]).data.spec == "stdlib:max_bytes=10"
    from deqseq.config import apply_overrides
    assert apply_overrides(load_config(path, []), ["data.source=digits"]).data.spec == "digits"
