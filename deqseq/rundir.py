"""A run folder owned by one live writer: lock, refusal to overwrite a finished run, cleanup of killed saves."""

from __future__ import annotations

import os
from pathlib import Path

from .checks import ConfigError

RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml")  # what a run writes into its folder
LOCK_NAME = ".lock"


class RunFolder:
    """runs/<name>/ for one training process.

    `open(fresh, force)` makes the folder, takes an exclusive lock that the operating system releases when
    the process ends (however it ends), so a second live writer is refused; removes temporary checkpoint
    files that a killed save left behind; and, for a fresh run, refuses a folder that already holds a run
    unless `force`, which removes that run's files first.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = None

    def holds_run(self) -> bool:
        """Whether the folder has files of an earlier run (checkpoints or metrics)."""
        return any((self.path / name).exists() for name in RUN_FILES[:3])

    def open(self, fresh: bool, force: bool = False) -> None:
        """Create and lock the folder; see the class docstring. Raises ConfigError with one line."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run folder {self.path} is a file, not a folder; set run.out_dir / run.name elsewhere")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(f"cannot create run folder {self.path}: a parent of it is a file (run.out_dir)") from None
        except OSError as err:
            raise ConfigError(f"cannot create run folder {self.path}: {err.strerror}") from None
        self._take_lock()
        self._remove_orphans()
        if fresh and self.holds_run():
            if not force:
                self.close()
                raise ConfigError(
                    f"run folder {self.path} already holds a run; continue it with --resume {self.path}, "
                    "choose another run.name, or pass --force to start it over")
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: single-writer is the user's responsibility
            return
        handle = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the lifetime of the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(f"run folder {self.path} is in use by another training process; wait for it to end "
                              "or choose another run.name") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _remove_orphans(self) -> None:
        """Temporary files of saves that never finished (the process was killed mid-write)."""
        for tmp in self.path.glob(".*.pt.*.tmp"):
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
