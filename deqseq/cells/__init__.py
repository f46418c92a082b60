"""Weight-tied causal cells f_θ(z, ctx) for DEQ sequence models, and the registry that builds them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry
from .base import Cell, Context, History
from .transformer import (
    TransformerCell,
    TransformerContext,
    TransformerHistory,
    TransformerSpec,
    apply_rope,
    causal_window_mask,
    rope_tables,
)
from .trellis import TrellisCell, TrellisContext, TrellisHistory, TrellisSpec


@dataclass(frozen=True)
class CellEntry:
    """A registered cell: build(cfg) makes the Cell a model config (ModelConfig.cell = its name) describes,
    taking cfg.embed_dim input features per position; check(cfg), when given, raises ValueError
    ("ModelConfig.field=... ...") for a config it cannot build, so a bad config fails when it is loaded."""

    build: Callable[[Any], Cell]
    check: Callable[[Any], None] | None = None


CELLS: Registry[CellEntry] = Registry("cell")


def register_cell(name: str, build: Callable[[Any], Cell], *, check: Callable[[Any], None] | None = None,
                  replace: bool = False) -> CellEntry:
    """Make `name` a valid ModelConfig.cell whose cell is build(cfg) (a deqseq.cells.Cell reading cfg.embed_dim
    input features); check(cfg) validates a config early (see CellEntry). ValueError for a name already
    registered unless replace=True."""
    return CELLS.register(name, CellEntry(build, check), replace=replace)


def build_cell(cfg: Any) -> Cell:
    """The cell cfg.cell names, built from the model config cfg."""
    cell = CELLS.entry(cfg.cell).build(cfg)
    if not isinstance(cell, Cell):
        raise TypeError(f"the builder of cell {cfg.cell!r} returned {type(cell).__name__}, not a deqseq.cells.Cell")
    return cell


register_cell("transformer", TransformerCell.from_config, check=TransformerCell.check_config)
register_cell("trellis", TrellisCell.from_config)


__all__ = [
    "CELLS",
    "Cell",
    "CellEntry",
    "Context",
    "History",
    "TransformerCell",
    "TransformerContext",
    "TransformerHistory",
    "TransformerSpec",
    "TrellisCell",
    "TrellisContext",
    "TrellisHistory",
    "TrellisSpec",
    "apply_rope",
    "build_cell",
    "causal_window_mask",
    "register_cell",
    "rope_tables",
]
