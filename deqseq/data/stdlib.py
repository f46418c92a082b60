"""The Python standard library's own source files as a corpus: file selection and a hash-based split."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from .corpus import SPLITS, TRAIN_PERCENT, VALID_PERCENT, split_sizes

# Third-party packages, test suites (which include lib2to3/tests/data) and IDLE are not "the library itself".
SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})
MAX_FILE_BYTES = 1_000_000


def stdlib_root() -> Path:
    """The directory of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[str]:
    """Relative POSIX paths of the .py files under root, sorted, without skipped folders or files over 1 MB."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            path = Path(folder, name)
            if name.endswith(".py") and path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def split_of(relpath: str) -> str:
    """The split ("train" / "valid" / "test", about 90/5/5) of a file, from the SHA-1 of its relative path."""
    bucket = int.from_bytes(hashlib.sha1(relpath.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < TRAIN_PERCENT:
        return "train"
    return "valid" if bucket < TRAIN_PERCENT + VALID_PERCENT else "test"


def assign_splits(relpaths: Iterable[str]) -> dict[str, list[str]]:
    """The files of each split in sorted order; the result does not depend on the order of relpaths."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for rel in sorted(relpaths):
        out[split_of(rel)].append(rel)
    return out


def read_stdlib(root: Path | None = None, max_bytes: int | None = None) -> dict[str, bytes]:
    """The concatenated bytes of each split's files, in sorted relative-path order.

    With max_bytes, each split gets its 90/5/5 share of the budget: files are taken in order until the share is
    used up, and the last one is cut at the share, so the sizes are exact.
    """
    root = stdlib_root() if root is None else Path(root)
    budgets = dict(zip(SPLITS, split_sizes(max_bytes), strict=True)) if max_bytes is not None else {}
    out = {}
    for name, files in assign_splits(stdlib_files(root)).items():
        left = budgets.get(name)
        chunks = []
        for rel in files:
            if left is not None and left <= 0:
                break
            data = (root / rel).read_bytes()
            if left is not None:
                data = data[:left]
                left -= len(data)
            chunks.append(data)
        out[name] = b"".join(chunks)
    return out
