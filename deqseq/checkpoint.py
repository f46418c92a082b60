"""Checkpoints: atomic writes, safe loads (weights_only), and rebuilding a model from one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .config import Config
    from .data import Tokenizer
    from .model import DEQSequenceModel


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a deqseq checkpoint (a user error: exit code 2)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, then rename, so a
    crash or Ctrl-C mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with `torch.load(weights_only=True)`; raise CheckpointError with one line."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: not a readable torch checkpoint "
                              f"({type(err).__name__})") from None
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        raise CheckpointError(f"{path} is not a deqseq checkpoint (no model weights and config)")
    return state


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[DEQSequenceModel, Tokenizer | None, Config]:
    """The model (in eval mode, on `device`, in the run's dtype), tokenizer and config saved in a checkpoint
    (a .pt file, or a run directory for its last.pt); CheckpointError with one line when it cannot be used.
    The tokenizer is None for a model of real-valued inputs."""
    from .config import REAL_INPUTS, ConfigError, config_from_dict
    from .data import DataError, tokenizer_from_state
    from .model import DEQSequenceModel

    state = read_checkpoint(path, map_location=device)
    try:
        config = config_from_dict(state["config"])
        saved_tokenizer = state.get("tokenizer") or {"name": "id", "vocab_size": config.model.vocab_size}
        tokenizer = None if config.model.input in REAL_INPUTS else tokenizer_from_state(saved_tokenizer)
    except (ConfigError, DataError) as err:
        raise CheckpointError(f"checkpoint {path} has an unusable config or tokenizer: {err}") from None
    dtype = torch.float64 if config.run.dtype == "float64" else torch.float32
    model = DEQSequenceModel(config.model, config.solver).to(device=device, dtype=dtype)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as err:
        reason = " ".join(" ".join(str(err).splitlines()[:2]).split())
        raise CheckpointError(f"checkpoint {path} does not match its own config: {reason}") from None
    return model.eval(), tokenizer, config
