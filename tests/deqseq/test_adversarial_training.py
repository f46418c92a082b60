"""train.adversarial end to end on the Markov source: the discriminator's losses and accuracy are logged, its
state is checkpointed and resumed, and models that cannot be token generators are refused with one line."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil

import pytest
import torch

from deqseq.cli import train_main
from deqseq.config import load_config
from deqseq.training import Trainer, train

MARKOV = "markov:order=1,vocab=8,seed=0,length=3000"
TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", f"data.source={MARKOV}", "data.batch_size=4",
        "data.seq_len=8", "data.eval_batch_size=4", "train.eval_batches=1", "run.device=cpu", "tracking.mode=offline",
        "train.warmup_steps=2", "train.pretrain_steps=2", "train.log_every=1", "train.adv_d_model=16",
        "solver.forward.method=anderson", "solver.forward.tol=1e-4"]
ADV_KEYS = {"adv_g_loss", "adv_d_loss", "adv_d_acc", "adv_d_real_acc", "adv_d_fake_acc"}


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["straight-through", "gumbel"])
def test_adversarial_mode_trains_end_to_end_and_logs_its_metrics(tmp_path, mode):
    cfg = load_config(None, [*TINY, f"train.adversarial={mode}", "train.max_steps=6", f"run.out_dir={tmp_path}"])
    result = train(cfg, progress=False)
    assert result.step == 6 and math.isfinite(result.test["nll"])
    steps = {r["step"]: r for r in rows(result.run_dir) if "loss" in r}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    for step, row in steps.items():
        if step <= 2:  # pretraining (unrolled gradient): the plain NLL only
            assert not ADV_KEYS & row.keys()
            continue
        assert ADV_KEYS <= row.keys()
        assert 0 <= row["adv_d_acc"] <= 1 and row["adv_d_acc"] == pytest.approx(
            (row["adv_d_real_acc"] + row["adv_d_fake_acc"]) / 2)
        # The step's loss is the NLL plus the weighted generator loss (weight 0.1 by default).
        assert row["loss"] == pytest.approx(row["nll"] + 0.1 * row["adv_g_loss"] + 2.0 * row.get("jac", 0), rel=1e-5)
        assert row["adv_d_loss"] > 0 and row["adv_d_fwd_not_converged"] == 0
    # The wandb run got the same metrics (offline).
    assert list((result.run_dir / "wandb").glob("offline-run-*"))
    state = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert set(state["adversarial"]) >= {"discriminator", "optimizer"}


def test_adversarial_state_is_resumed_exactly(tmp_path, monkeypatch):
    overrides = [*TINY, "train.adversarial=gumbel", "tracking.mode=disabled", "run.dtype=float64",
                 "train.max_steps=6", "train.save_every=2"]
    cut = tmp_path / "cut"
    original_save = Trainer.save

    def save_and_keep_step_4(self: Trainer, name: str) -> None:
        original_save(self, name)
        if self.step == 4 and name == "last.pt" and not cut.exists():
            cut.mkdir()
            shutil.copy(self.run_dir / name, cut / name)

    monkeypatch.setattr(Trainer, "save", save_and_keep_step_4)
    straight = train(load_config(None, [*overrides, f"run.out_dir={tmp_path / 'a'}"]), progress=False)
    resumed = Trainer(load_config(None, [*overrides, f"run.out_dir={tmp_path / 'b'}"]), resume_dir=cut,
                      progress=False)
    saved = torch.load(cut / "last.pt", weights_only=True)["adversarial"]
    assert all(torch.equal(v, saved["discriminator"][k])
               for k, v in resumed.adversarial.discriminator.state_dict().items())
    resumed.run()
    a = {r["step"]: r for r in rows(straight.run_dir) if "adv_d_loss" in r}
    b = {r["step"]: r for r in rows(resumed.run_dir) if "adv_d_loss" in r}
    assert sorted(b) == [5, 6]
    for step in (5, 6):  # the Gumbel noise continues from the saved generator state too
        for key in ("adv_d_loss", "adv_g_loss", "adv_d_acc", "nll"):
            assert b[step][key] == a[step][key], (step, key)


@pytest.mark.parametrize("extra,message", [
    (["train.adversarial=wgan"], "train.adversarial='wgan' is unknown; allowed: gumbel, off, straight-through"),
    (["train.adversarial=gumbel", "train.adv_tau=0"], "adv_tau"),
    (["train.adversarial=gumbel", "model.head=dmol", "model.levels=8"], "categorical head"),
    (["train.adversarial=gumbel", "data.source=fourier:series=40,length=9", "model.input=linear",
      "model.head=mog"], "needs token-id inputs"),
])
def test_models_that_cannot_be_token_generators_are_refused(tmp_path, capsys, extra, message):
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_main(["--no-progress", *TINY, "tracking.mode=disabled", f"run.out_dir={tmp_path}", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_adversarial_training_asks_model_io_whether_the_input_embeds_one_hot_vectors():
    # A user's id input that can embed (relaxed) one-hot vectors works; one that cannot is refused in one line.
    import pytest as _pytest
    from torch import nn

    from deqseq import DEQSequenceModel, ModelConfig
    from deqseq.adversarial import check_adversarial_model, token_embeddings

    class Ids(nn.Module):
        reads = "ids"

        def __init__(self, embeds: bool):
            super().__init__()
            self.vocab, self.proj = 8, nn.Linear(8, 16)
            if embeds:
                self.embed_onehot = lambda onehot: self.proj(onehot)

        def forward(self, ids):
            return self.proj(torch.nn.functional.one_hot(ids, 8).float())

    cfg = ModelConfig(vocab_size=8, d_model=16, n_heads=2, d_ff=32)
    good = DEQSequenceModel(cfg, input=Ids(True))
    onehot = torch.nn.functional.one_hot(torch.tensor([[1, 2, 3]]), 8).float()
    torch.testing.assert_close(token_embeddings(good, onehot), good.input(torch.tensor([[1, 2, 3]])))
    with _pytest.raises(ValueError, match="embed one-hot vectors"):
        check_adversarial_model(DEQSequenceModel(cfg, input=Ids(False)))
