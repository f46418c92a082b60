"""Experiment tracking: wandb (offline unless asked) and a metrics.jsonl file beside the checkpoints."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class Tracker:
    """Logs scalar metrics per step to `run_dir/metrics.jsonl` and, unless mode is "disabled", to wandb.

    Only the process that owns the run (rank 0) should create a real tracker; other ranks use
    `Tracker.disabled()`, which does nothing.
    """

    def __init__(self, run_dir: str | Path | None, mode: str = "offline", project: str = "deqseq",
                 name: str | None = None, config: dict[str, Any] | None = None, entity: str | None = None,
                 tags: list[str] | None = None, resume_id: str | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.metrics_file = None
        self.wandb_run = None
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            if mode == "offline":  # no crash reports either: offline means nothing leaves the machine
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
            import wandb

            self.wandb_run = wandb.init(mode=mode, project=project, entity=entity, name=name, config=config,
                                        tags=tags, dir=str(self.run_dir), id=resume_id,
                                        resume="allow" if resume_id else None)

    @classmethod
    def disabled(cls) -> Tracker:
        """A tracker that records nothing (non-zero ranks, tests)."""
        return cls(None)

    @property
    def run_id(self) -> str | None:
        """The wandb run id (stored in checkpoints so a resumed run continues the same wandb run)."""
        return self.wandb_run.id if self.wandb_run is not None else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record one step's metrics (non-finite values are written as null in the JSON file)."""
        if self.metrics_file is None:
            return
        clean = {k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in metrics.items()}
        self.metrics_file.write(json.dumps({"step": step, **clean}) + "\n")
        self.metrics_file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_text(self, name: str, text: str, step: int) -> None:
        """Record a piece of text (e.g. a generated sample): a JSON line and, in wandb, a preformatted block."""
        if self.metrics_file is None:
            return
        self.metrics_file.write(json.dumps({"step": step, name: text}) + "\n")
        self.metrics_file.flush()
        if self.wandb_run is not None:
            import html

            import wandb

            self.wandb_run.log({name: wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)

    def finish(self) -> None:
        """Close the metrics file and the wandb run."""
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
