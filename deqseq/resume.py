"""Which config keys may change when a run is resumed, and the one-line refusal for the others.

A resumed run continues the saved weights, optimiser state, batch cursor and random state, so everything that
shapes those must stay as saved: the architecture (model.*), the data and its batching (data.source and
data.options, tokenizer, batch_size, seq_len, mem_len), the seed and dtype, and the optimiser's settings. What
only says how long to train, how to solve, where to run, or what to log may change.
"""

from __future__ import annotations

from typing import Any

from .checks import ConfigError

# Dotted keys (or "section." prefixes) that may differ between the saved config and the resumed one.
MAY_CHANGE = (
    "run.name", "run.out_dir", "run.device", "run.compile", "run.amp", "run.threads",
    "data.eval_batch_size",
    "solver.",
    "train.max_steps", "train.eval_every", "train.eval_batches", "train.log_every", "train.save_every",
    "train.max_nonfinite", "train.resume", "train.sample_every", "train.sample_tokens", "train.grad_clip",
    "tracking.",
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not name.endswith("peer_kwargs"):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _may_change(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MAY_CHANGE)


def check_resumable(saved: dict[str, Any], new: dict[str, Any]) -> None:
    """Raise ConfigError naming the first keys whose value differs between the saved config and the new one
    (both as config_to_dict writes them) and may not change on resume. Keys missing from an older saved config
    are not compared."""
    old, now = _flatten(saved), _flatten(new)
    refused = [k for k in now if k in old and old[k] != now[k] and not _may_change(k)]
    if refused:
        shown = ", ".join(f"{k} (saved {old[k]!r}, now {now[k]!r})" for k in refused[:3])
        more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
        raise ConfigError(f"cannot resume with a changed {shown}{more}: these shape the saved weights, optimiser "
                          "or data order; start a new run instead (the keys that may change on resume are "
                          "run.device, solver.*, train.max_steps and the logging, evaluation and tracking keys)")
