"""Command-line entry points: `python train.py ...` (and later generate/score). Errors a user can cause end
with one line on stderr and exit code 2; bugs still raise."""

from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError, read_checkpoint
from .config import ConfigError, apply_overrides, config_from_dict, load_config
from .data import DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def train_main(argv: list[str] | None = None) -> int:
    """`train.py [--config FILE] [--resume RUN_DIR] [--no-progress] [key=value ...]`."""
    from .training import TrainingStopped, train

    parser = _Parser(prog="train.py", description="Train a DEQ sequence model.")
    parser.add_argument("--config", help="YAML experiment config (default: built-in defaults)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.max_steps=200")
    args = parser.parse_args(argv)
    try:
        if args.resume is not None and args.config is None:
            # Without --config a resumed run keeps its own saved config (overrides still apply on top), so the
            # printed hint `train.py --resume RUN_DIR` works for any run, not only for one with default settings.
            saved = read_checkpoint(args.resume)["config"]
            cfg = apply_overrides(config_from_dict(saved), args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        result = train(cfg, resume_dir=args.resume, progress=not args.no_progress)
    except USER_ERRORS as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    if result.interrupted:
        print(f"interrupted at step {result.step}; resume with: python train.py --resume {result.run_dir}")
        return 130
    for split, values in (("valid", result.valid), ("test", result.test)):
        if values:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "tokens")
            print(f"{split}: {shown}")
    print(f"run saved in {result.run_dir} (last.pt, best.pt, metrics.jsonl, config.yaml)")
    return 0
