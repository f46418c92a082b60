"""A plain pre-LN GPT: the untied explicit transformer a user would train instead of a DEQ.

Token and learned position embeddings, `n_layers` untied blocks x += Attn(LN(x)); x += MLP(LN(x)) with causal
scaled-dot-product attention, a final LayerNorm and a linear head. It is the baseline of
`bench/time_to_quality.py`; the package never imports it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """One pre-LN transformer block with causal self-attention and a GELU MLP."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, d_model) -> the same shape."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class GPT(nn.Module):
    """Untied `n_layers`-layer causal transformer language model over `vocab_size` ids, up to `max_len` positions."""

    def __init__(self, vocab_size: int, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
                 d_ff: int = 512, max_len: int = 1024) -> None:
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, T, vocab_size) of ids x (B, T), T <= max_len."""
        T = x.shape[1]
        if T > self.max_len:
            raise ValueError(f"sequence of {T} positions is longer than max_len={self.max_len}")
        h = self.tok(x) + self.pos(torch.arange(T, device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))

    def loss(self, x: Tensor, t: Tensor) -> Tensor:
        """Mean next-token cross-entropy (nats) of targets t (B, T)."""
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), t.reshape(-1))
