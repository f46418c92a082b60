"""Writing a benchmark's results: one JSON file per script under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path, results: dict[str, Any]) -> None:
    """Write `results` as indented JSON to `path` (creating its folder) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
