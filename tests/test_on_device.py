"""Device-marked tests: the numerics that differ between devices, run on DEQSEQ_TEST_DEVICE (default cpu).

CI runs them on CPU with the rest of the suite; `bench/device_check.sh` runs `pytest -m device` with
DEQSEQ_TEST_DEVICE=cuda on a CUDA machine. Each compares the device's result with an independent one (a float64
CPU reference, or naive re-solving on the same device), so a device-specific kernel or dtype bug fails here.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import solvers
from deqseq import DEQSequenceModel, ModelConfig, SolverSettings, check_equivalence, generate
from solvers import SolverConfig

DEVICE = torch.device(os.environ.get("DEQSEQ_TEST_DEVICE", "cpu"))
pytestmark = pytest.mark.device
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip(f"DEQSEQ_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)

VOCAB = 13


def tanh_system(dtype: torch.dtype, device: torch.device) -> tuple:
    """z = tanh(W z + x) for 4 systems of size 32, W of spectral norm 0.8: (f, z0)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 32, 32, generator=gen, dtype=torch.float64)
    w = 0.8 * w / torch.linalg.matrix_norm(w, ord=2)[:, None, None]
    x = torch.randn(4, 32, generator=gen, dtype=torch.float64)
    w, x = w.to(device, dtype), x.to(device, dtype)
    return (lambda z: torch.tanh(torch.bmm(w, z[..., None])[..., 0] + x)), torch.zeros(4, 32, dtype=dtype,
                                                                                      device=device)


def picard_reference() -> torch.Tensor:
    """The fixed point by 400 plain iterations in float64 on CPU (a contraction by <= 0.8: error < 1e-35)."""
    f, z = tanh_system(torch.float64, torch.device("cpu"))
    for _ in range(400):
        z = f(z)
    return z


@pytest.mark.parametrize("method", ["anderson", "broyden"])
def test_solves_on_the_device_reach_the_float64_fixed_point(method):
    f, z0 = tanh_system(torch.float32, DEVICE)
    z, stats = solvers.solve(f, z0, SolverConfig(method=method, max_iter=60, tol=1e-5))
    assert z.device.type == DEVICE.type and bool(stats.converged.all())
    assert (z.cpu().double() - picard_reference()).abs().max().item() < 1e-4


def make_model(cell: str = "transformer", dtype: torch.dtype = torch.float32) -> DEQSequenceModel:
    torch.manual_seed(0)
    cfg = SolverConfig(method="anderson", max_iter=60, tol=1e-6)
    settings = SolverSettings(forward=cfg, backward=cfg, grad="implicit")
    extra = {"kernel_size": 3, "dilation": 2} if cell == "trellis" else {}
    config = ModelConfig(vocab_size=VOCAB, cell=cell, d_model=32, n_heads=2, d_ff=64, **extra)
    return DEQSequenceModel(config, settings).to(device=DEVICE, dtype=dtype)


def flat_grad(model: DEQSequenceModel, x: torch.Tensor, autocast: bool = False) -> tuple[torch.Tensor, float]:
    model.zero_grad()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
        loss, _ = model.loss({"x": x})
    loss.backward()
    return torch.cat([p.grad.flatten().cpu().double() for p in model.parameters() if p.grad is not None]), loss.item()


def ids(batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1)).to(DEVICE)


@pytest.mark.parametrize("cell", ["transformer", "trellis"])
def test_implicit_gradients_on_the_device_match_float64(cell):
    """The device's float32 implicit gradient against the same model in float64 (implicit, tol 1e-6)."""
    mixed, loss = flat_grad(make_model(cell), ids())
    exact, loss64 = flat_grad(make_model(cell, torch.float64), ids())
    assert abs(loss - loss64) < 1e-4
    assert torch.nn.functional.cosine_similarity(mixed, exact, dim=0).item() > 0.9999
    assert (mixed - exact).norm().item() < 1e-3 * exact.norm().item()


@pytest.mark.parametrize("cell", ["transformer", "trellis"])
def test_bf16_autocast_training_step_on_the_device(cell):
    model = make_model(cell)
    exact, loss = flat_grad(model, ids())
    mixed, loss_bf16 = flat_grad(model, ids(), autocast=True)
    assert math.isfinite(loss_bf16) and abs(loss_bf16 - loss) < 0.05 * loss
    assert torch.nn.functional.cosine_similarity(mixed, exact, dim=0).item() > 0.98


@pytest.mark.parametrize("cell", ["transformer", "trellis"])
def test_cached_generation_on_the_device_equals_naive_re_solving(cell):
    """Greedy tokens from frozen history equal re-solving the whole prefix for every token, on the device."""
    model = make_model(cell).eval()
    prompt = ids(batch=2, length=6)
    cached = generate(model, prompt, 12, temperature=0)
    seq = prompt
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert cached.device.type == DEVICE.type and torch.equal(cached, seq)


def test_the_equivalence_check_passes_on_the_device():
    """As `generate.py --check-equivalence` runs it: random starts and the re-solve at tolerance / 100 (1e-6 here,
    reachable in float32), up to 200 iterations."""
    model = make_model()
    cfg = SolverConfig(method="anderson", max_iter=200, tol=1e-4)
    model.settings = SolverSettings(forward=cfg, backward=cfg)
    report = check_equivalence(model, ids(batch=1, length=16), chunk_sizes=(1, 4), tighten=100)
    assert report.ok, str(report)
    assert report.modes["token"]["max_state_diff"] < 1e-2 and report.modes["token"]["tight"]["max_state_diff"] < 1e-4
