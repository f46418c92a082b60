"""The 2T next-token layout: ground truth and predictions in one sequence, and the mask that keeps them apart.

For ground truth prev and predictions curr (B, T, C), the layout is

    position  0        1        ..  T-1          T        T+1      ..  2T-1
    content   init     prev_0   ..  prev_{T-2}   curr_0   curr_1   ..  curr_{T-1}

The first half is causal over itself; prediction i (position T+i) sees positions 0..i (the initial embedding and
the ground truth before token i) and itself. `NextTokenDiscriminator` builds its DEQ on this layout;
`NextTokenLayout` is the layout alone, with the call signature of the reference next-token-discriminator module
(`forward(prev_embs, curr_embs) -> (inputs, mask)`), for code written against that module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def next_token_mask(T: int, device: torch.device | str | None = None) -> Tensor:
    """Bool attention mask (2T, 2T) of the layout, True = may attend.

    Rows/columns 0..T-1 (init, prev_0..prev_{T-2}) are causal over themselves; row T+i (prediction i) sees
    columns 0..i and T+i only.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    idx = torch.arange(T, device=device)
    first = idx[None, :] <= idx[:, None]  # (T, T) causal
    mask = torch.zeros(2 * T, 2 * T, dtype=torch.bool, device=device)
    mask[:T, :T] = first
    mask[T:, :T] = first  # prediction i sees init and prev_0..prev_{i-1}: first-half columns 0..i
    mask[T:, T:] = torch.eye(T, dtype=torch.bool, device=device)
    return mask


def layout_positions(T: int, device: torch.device | str | None = None) -> Tensor:
    """Position ids (2T,) of the layout: first-half position j -> j, prediction i -> i+1 (the token it stands for)."""
    return torch.cat([torch.arange(T, device=device), torch.arange(1, T + 1, device=device)])


def concat_layout(init: Tensor, prev: Tensor, curr: Tensor) -> Tensor:
    """[init, prev[:, :-1], curr] (B, 2T, C) from an initial embedding with C values and prev, curr (B, T, C),
    in prev's dtype."""
    B, _, C = prev.shape
    first = init.reshape(1, 1, C).to(prev.dtype).expand(B, 1, C)
    return torch.cat([first, prev[:, :-1], curr.to(prev.dtype)], dim=1)


class NextTokenLayout(nn.Module):
    """The layout with the reference module's interface: `NextTokenLayout(emb_dim, max_tsz)(prev_embs, curr_embs)`
    returns (inputs (B, 2T, C), mask (2T, 2T)).

    As in the reference, the initial embedding `init_emb` (1, 1, emb_dim) is learned and starts at zero, and the
    mask is a bool mask where True means "may NOT attend" (the convention of `nn.MultiheadAttention` and
    `nn.Transformer`), i.e. `~next_token_mask(T)`. `torch.nn.functional.scaled_dot_product_attention` uses the
    opposite convention: pass it `~mask`.
    """

    def __init__(self, emb_dim: int, max_tsz: int) -> None:
        super().__init__()
        if emb_dim < 1 or max_tsz < 1:
            raise ValueError(f"emb_dim and max_tsz must be >= 1, got {emb_dim} and {max_tsz}")
        self.emb_dim, self.max_tsz = emb_dim, max_tsz
        self.init_emb = nn.Parameter(torch.zeros(1, 1, emb_dim))

    def reset_parameters(self) -> None:
        """Zero the initial embedding."""
        nn.init.zeros_(self.init_emb)

    def mask(self, T: int) -> Tensor:
        """The (2T, 2T) bool mask of a layout of T tokens, True = may not attend."""
        if not 1 <= T <= self.max_tsz:
            raise ValueError(f"sequence length T={T} must be in [1, max_tsz={self.max_tsz}]")
        return ~next_token_mask(T, device=self.init_emb.device)

    def forward(self, prev_embs: Tensor, curr_embs: Tensor) -> tuple[Tensor, Tensor]:
        """(inputs, mask): inputs [init_emb, prev_embs[:, :-1], curr_embs] (B, 2T, C) and the (2T, 2T) mask.

        prev_embs: ground-truth embeddings (B, T, C); curr_embs: predictions (B, T, C), where curr_embs[:, i]
        stands for token i and may see only prev_embs[:, :i].
        """
        if prev_embs.dim() != 3 or prev_embs.shape != curr_embs.shape or prev_embs.shape[-1] != self.emb_dim:
            raise ValueError(f"prev_embs and curr_embs must both have shape (B, T, {self.emb_dim}), "
                             f"got {tuple(prev_embs.shape)} and {tuple(curr_embs.shape)}")
        mask = self.mask(prev_embs.shape[1])
        return concat_layout(self.init_emb, prev_embs, curr_embs), mask
