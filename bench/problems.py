"""Reference fixed-point problems shared by the solver benchmark and the solver tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def tanh_map(systems: int, size: int, radius: float, dtype: torch.dtype = torch.float64, seed: int = 0,
             input_scale: float = 1.0,
             spectrum: str = "orthogonal") -> tuple[Callable[[Tensor], Tensor], Tensor, dict[str, Tensor]]:
    """f(z) = tanh(W z + U x + b), one W per system, with spectral norm and radius `radius`:
    spectrum="orthogonal" is radius * Q (every eigenvalue on the circle of that radius, the hard case for
    quasi-Newton methods), "symmetric" is Q diag(linspace(-radius, radius)) Q^T (a real spectrum).
    The Jacobian's spectral radius at the fixed point is below `radius` and approaches it as
    input_scale -> 0 (tanh' -> 1). Returns (f, z0, tensors) with the leaves W, U, x, b."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(systems, size, size, generator=gen, dtype=torch.float64))
    if spectrum == "orthogonal":
        w = radius * q
    else:
        w = q @ torch.diag(torch.linspace(-radius, radius, size, dtype=torch.float64)) @ q.mT
    tensors = {
        "W": w.to(dtype),
        "U": (torch.randn(systems, size, size, generator=gen, dtype=torch.float64) / math.sqrt(size)).to(dtype),
        "x": (input_scale * torch.randn(systems, size, generator=gen, dtype=torch.float64)).to(dtype),
        "b": (0.1 * input_scale * torch.randn(systems, size, generator=gen, dtype=torch.float64)).to(dtype),
    }

    def f(z: Tensor) -> Tensor:
        t = tensors
        return torch.tanh(torch.bmm(t["W"], z.unsqueeze(2)).squeeze(2)
                          + torch.bmm(t["U"], t["x"].unsqueeze(2)).squeeze(2) + t["b"])

    return f, torch.zeros(systems, size, dtype=dtype), tensors


class CausalAttentionCell(nn.Module):
    """f(z) = LayerNorm(z + gain * W_o CausalSelfAttention(LN(z)) + u): a small weight-tied causal
    attention + LayerNorm map on (B, T, D). Position t's output depends only on positions <= t."""

    def __init__(self, d_model: int, n_heads: int, gain: float = 1.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.gain = gain
        self.norm_in = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        """One application of the cell with injection u (B, T, D)."""
        b, t, d = z.shape
        q, k, v = self.qkv(self.norm_in(z)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.norm_out(z + self.gain * self.out(att.transpose(1, 2).reshape(b, t, d)) + u)


def nan_beyond(limit: float) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """(f, z0) of two float64 systems: system 0 a contraction; system 1 f = z + 1 (no fixed point), which turns
    NaN once |f| > limit (a failure the solvers must flag while keeping a finite iterate)."""
    f0, z0, _ = tanh_map(systems=2, size=6, radius=0.5)

    def f(z: Tensor) -> Tensor:
        out = f0(z).clone()
        out[1] = z[1] + 1
        return torch.where((out.abs() > limit).any(dim=1, keepdim=True) & (torch.arange(2)[:, None] == 1),
                           torch.full_like(out, math.nan), out)

    return f, z0


def attention_problem(batch: int, length: int, d_model: int, n_heads: int = 4, gain: float = 1.0,
                      dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> tuple[Callable[[Tensor], Tensor], Tensor, CausalAttentionCell, Tensor]:
    """A causal attention + LayerNorm fixed point z = cell(z, u); returns (f, z0, cell, u)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cell = CausalAttentionCell(d_model, n_heads, gain).to(dtype)
    u = torch.randn(batch, length, d_model, generator=gen, dtype=torch.float64).to(dtype)
    return (lambda z: cell(z, u)), torch.zeros(batch, length, d_model, dtype=dtype), cell, u
