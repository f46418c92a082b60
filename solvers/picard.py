"""Damped fixed-point (Picard) iteration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from .registry import register_method

if TYPE_CHECKING:
    from .config import SolverConfig


class Picard:
    """x+ = x + damping * (f(x) - x)."""

    def __init__(self, damping: float) -> None:
        self.damping = damping

    def direction(self, g: Tensor) -> Tensor:
        """Damped residual step."""
        return self.damping * g

    def record(self, dx: Tensor, dg: Tensor, g_new: Tensor) -> None:
        """Picard keeps no memory."""


def build(cfg: SolverConfig, x: Tensor) -> Picard:
    """Picard with step cfg.damping (x is unused: Picard keeps no state)."""
    return Picard(cfg.damping)


register_method("picard", build, default_memory=1)
