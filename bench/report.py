"""Writing a benchmark's results: one JSON file per script under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def write_json(path: str | Path, results: dict[str, Any]) -> None:
    """Write `results` as indented JSON to `path` (creating its folder) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
