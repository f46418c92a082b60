"""The public API: what the README, bench/ and users need is importable from `deqseq`; eval_mode restores modes."""

import pytest
import torch

import deqseq


def test_every_exported_name_exists_and_the_entry_points_are_exported():
    for name in deqseq.__all__:
        assert getattr(deqseq, name) is not None, name
    assert {"train", "Trainer", "load_config", "load_corpus", "load_checkpoint", "generate", "stream", "score",
            "check_equivalence", "continue_series", "NextTokenLayout", "eval_mode"} <= set(deqseq.__all__)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_also_after_an_error(training):
    module = torch.nn.Sequential(torch.nn.Dropout(0.5)).train(training)
    with deqseq.eval_mode(module) as inside:
        assert inside is module and not module.training and not module[0].training
    assert module.training == training
    with pytest.raises(RuntimeError, match="boom"), deqseq.eval_mode(module):
        raise RuntimeError("boom")
    assert module.training == training and module[0].training == training
