"""Checkpoints: atomic writes, safe loads (weights_only), and rebuilding a model from one."""

from __future__ import annotations

import errno
import hashlib
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


def weights_checksum(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in key order."""
    digest = hashlib.sha256()
    for name, t in weights.items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, then rename, so a
    crash or Ctrl-C mid-write leaves the previous checkpoint intact. The model weights' checksum is stored
    beside them and checked by `read_checkpoint`. A full disk is a CheckpointError (the old file is kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(state.get("model"), dict):
        state = {**state, "checksum": weights_checksum(state["model"])}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"cannot save {path}: no space left on device; the previous {path.name} "
                                  "is kept") from None
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
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in weights.items()):
        raise CheckpointError(f"{path} is not a deqseq checkpoint: its 'model' entry is not a state dict of tensors")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is not a deqseq checkpoint: its 'config' entry is not a mapping")
    if "checksum" in state and state["checksum"] != weights_checksum(weights):
        raise CheckpointError(f"checkpoint {path} is corrupt: its weights do not match the checksum saved with them")
    return state


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[DEQSequenceModel, Tokenizer | None, Config]:
    """The model (in eval mode, on `device`, in the run's dtype), tokenizer and config saved in a checkpoint
    (a .pt file, or a run directory for its last.pt); CheckpointError with one line when it cannot be used.
    The tokenizer is None for a model of real-valued inputs."""
    from .config import ConfigError, config_from_dict
    from .data import DataError, tokenizer_from_state
    from .inputs import INPUTS
    from .model import DEQSequenceModel

    state = read_checkpoint(path, map_location=device)
    try:
        config = config_from_dict(state["config"])
        saved_tokenizer = state.get("tokenizer") or {"name": "id", "vocab_size": config.model.vocab_size}
        reads_values = INPUTS[config.model.input].reads == "values"
        tokenizer = None if reads_values else tokenizer_from_state(saved_tokenizer)
    except (ConfigError, DataError) as err:
        raise CheckpointError(f"checkpoint {path} has an unusable config or tokenizer: {err}") from None
    if tokenizer is not None and tokenizer.vocab_size > config.model.vocab_size:
        raise CheckpointError(f"checkpoint {path} is inconsistent: its tokenizer has {tokenizer.vocab_size} symbols "
                              f"but the model only {config.model.vocab_size}")
    config = _with_trained_len(config)
    dtype = torch.float64 if config.run.dtype == "float64" else torch.float32
    _check_shapes(path, config, state["model"])
    model = DEQSequenceModel(config.model, config.solver).to(device=device, dtype=dtype)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as err:
        reason = " ".join(" ".join(str(err).splitlines()[:2]).split())
        raise CheckpointError(f"checkpoint {path} does not match its own config: {reason}") from None
    return model.eval(), tokenizer, config


def _with_trained_len(config: Config) -> Config:
    """Checkpoints written before ModelConfig.trained_len existed: the training segment length from data."""
    from dataclasses import replace

    if config.model.trained_len is not None:
        return config
    return replace(config, model=replace(config.model, trained_len=config.data.seq_len))


def _check_shapes(path: str | Path, config: Config, weights: dict[str, torch.Tensor]) -> None:
    """Build the config's model on the meta device (no memory) and compare its parameter shapes with the
    saved ones, so a config asking for an absurd size is refused before anything is allocated."""
    from .model import DEQSequenceModel

    try:
        with torch.device("meta"):
            expected = DEQSequenceModel(config.model, config.solver).state_dict()
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} has an unusable model config: {err}") from None
    for name, tensor in expected.items():
        saved = weights.get(name)
        if saved is None or tuple(saved.shape) != tuple(tensor.shape):
            shown = "missing" if saved is None else f"saved {tuple(saved.shape)}"
            raise CheckpointError(f"checkpoint {path} does not match its own config: {name} should be "
                                  f"{tuple(tensor.shape)}, {shown}")
