"""Damped fixed-point (Picard) iteration."""

from __future__ import annotations

from torch import Tensor


class Picard:
    """x+ = x + damping * (f(x) - x)."""

    def __init__(self, damping: float) -> None:
        self.damping = damping

    def direction(self, g: Tensor) -> Tensor:
        """Damped residual step."""
        return self.damping * g

    def record(self, dx: Tensor, dg: Tensor, g_new: Tensor) -> None:
        """Picard keeps no memory."""
