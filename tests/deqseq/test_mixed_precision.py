"""bf16 autocast on CPU, where CI runs: the model's loss and gradients (implicit, phantom, Jacobian penalty, both
cells), generation, and the trainer's run.amp=bf16 switch."""

from __future__ import annotations

import math

import pytest
import torch

from deqseq import DEQSequenceModel, ModelConfig, SolverSettings, generate
from deqseq.config import load_config
from deqseq.training import Trainer
from solvers import SolverConfig

CELLS = {"transformer": dict(cell="transformer"), "trellis": dict(cell="trellis", kernel_size=3, dilation=2)}


def make_model(cell: str, grad: str, method: str) -> DEQSequenceModel:
    torch.manual_seed(0)
    cfg = SolverConfig(method=method, max_iter=30, tol=1e-2)
    settings = SolverSettings(forward=cfg, backward=cfg, grad=grad, jac_weight=1.0, jac_prob=1.0)
    return DEQSequenceModel(ModelConfig(vocab_size=11, d_model=32, n_heads=2, d_ff=64, **CELLS[cell]), settings)


def flat_grad(model: DEQSequenceModel, x: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, float]:
    model.zero_grad()
    torch.manual_seed(2)  # the same Hutchinson probe for the Jacobian penalty in both runs
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, metrics = model.loss({"x": x})
    loss.backward()
    assert math.isfinite(loss.item()) and "jac" in metrics
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), loss.item()


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize(("grad", "method"), [("implicit", "anderson"), ("implicit", "broyden"),
                                              ("phantom:2", "anderson")])
def test_bf16_autocast_training_step_matches_float32(cell, grad, method):
    model = make_model(cell, grad, method)
    x = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(1))
    exact, loss_exact = flat_grad(model, x, autocast=False)
    mixed, loss_mixed = flat_grad(model, x, autocast=True)
    assert abs(loss_mixed - loss_exact) < 0.05 * abs(loss_exact)
    cosine = torch.nn.functional.cosine_similarity(exact, mixed, dim=0).item()
    assert cosine > 0.98, cosine
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_generation_under_bf16_autocast():
    model = make_model("transformer", "implicit", "anderson").eval()
    prompts = [[1, 2, 3], [4, 5]]
    plain = generate(model, prompts, 10, temperature=0, details=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = generate(model, prompts, 10, temperature=0, details=True)
    assert mixed.new_ids.shape == (2, 10) and torch.isfinite(mixed.logprobs).all()
    assert mixed.logprobs.dtype == torch.float32
    # bf16 logits can flip near-ties; most greedy tokens agree with float32.
    assert (mixed.new_ids == plain.new_ids).float().mean().item() >= 0.5


def test_run_amp_bf16_trains_on_cpu(tmp_path):
    overrides = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "data.batch_size=2", "data.seq_len=8",
                 "data.eval_batch_size=2", "train.eval_batches=1", "run.device=cpu", "tracking.mode=disabled",
                 "train.eval_every=0", "data.source=markov:order=1,vocab=8,seed=0,length=3000",
                 f"run.out_dir={tmp_path}", "run.name=bf16", "train.max_steps=6", "run.amp=bf16",
                 "solver.forward.tol=1e-2", "solver.jac_prob=1"]
    trainer = Trainer(load_config("configs/default.yaml", overrides), progress=False)
    assert trainer.autocast
    result = trainer.run()
    assert trainer.step == 6 and trainer.nonfinite == 0
    assert math.isfinite(result.test["nll"])
    off = Trainer(load_config("configs/default.yaml", [*overrides[:-3], "run.name=off", "run.amp=auto"]),
                  progress=False)
    assert not off.autocast  # auto: only on CUDA
