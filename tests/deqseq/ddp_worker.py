"""Helper for test_training.py (not a test): train a tiny config under torchrun, then compare ranks.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_worker.py OUT_DIR [key=value ...]

Every rank trains with gloo, all-gathers its flat parameter vector and checks that all ranks hold the same
parameters; each rank writes OUT_DIR/rank<R>.json with what it saw, and rank 0 saves the parameters to
OUT_DIR/params.pt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from deqseq.config import load_config
from deqseq.training import Trainer


def main(out_dir: Path, overrides: list[str]) -> None:
    """Train, gather the parameters of every rank and record the result."""
    torch.set_num_threads(1)
    cfg = load_config(None, [*overrides, f"run.out_dir={out_dir}"])
    trainer = Trainer(cfg, progress=False)
    assert trainer.distributed and dist.is_initialized() and dist.get_backend() == "gloo"
    rank, world = dist.get_rank(), dist.get_world_size()
    losses: list[float] = []
    original = trainer.train_step

    def train_step(batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
        metrics = original(batch)
        losses.append(metrics["loss"] if metrics is not None else float("nan"))
        return metrics

    trainer.train_step = train_step  # type: ignore[method-assign]
    result = trainer.run()
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    max_diff = max(float((g - gathered[0]).abs().max()) for g in gathered)
    assert max_diff == 0.0, f"rank {rank}: parameters differ across ranks by {max_diff}"
    # Only rank 0 owns the run: the others never open a metrics file or a wandb run.
    assert (trainer.tracker.run_dir is not None) == (rank == 0), f"rank {rank} has tracker {trainer.tracker.run_dir}"
    report = {"rank": rank, "world": world, "step": result.step, "losses": losses, "max_diff": max_diff,
              "valid_nll": result.valid["nll"] if result.valid else None}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    if rank == 0:
        torch.save(flat, out_dir / "params.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
