"""Weight-tied causal cells f_θ(z, ctx) for DEQ sequence models, and a factory to build them by name."""

from .base import Cell, Context, History
from .transformer import (
    TransformerCell,
    TransformerContext,
    TransformerHistory,
    apply_rope,
    causal_window_mask,
    rope_tables,
)
from .trellis import TrellisCell, TrellisContext, TrellisHistory

CELLS: dict[str, type[Cell]] = {"transformer": TransformerCell, "trellis": TrellisCell}


def build_cell(name: str, **kwargs) -> Cell:
    """Build the cell called `name` ("transformer" or "trellis") with the constructor arguments `kwargs`."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; allowed values: {', '.join(sorted(CELLS))}")
    return CELLS[name](**kwargs)


__all__ = [
    "CELLS",
    "Cell",
    "Context",
    "History",
    "TransformerCell",
    "TransformerContext",
    "TransformerHistory",
    "TrellisCell",
    "TrellisContext",
    "TrellisHistory",
    "apply_rope",
    "build_cell",
    "causal_window_mask",
    "rope_tables",
]
