"""NextTokenLayout: the reference next-token module's interface (inputs and a True-means-blocked mask)."""

import pytest
import torch
from torch import nn

from deqseq import NextTokenLayout
from deqseq.discriminator import NextTokenDiscriminator
from deqseq.layout import next_token_mask


def test_the_reference_example():
    """prev [1, 2, 3, 4], curr [5, 6, 7, 8], zero initial embedding: the mask as 0/1 weights sums what each
    position may see."""
    layout = NextTokenLayout(emb_dim=1, max_tsz=8)
    prev = torch.tensor([1.0, 2, 3, 4]).view(1, 4, 1)
    curr = torch.tensor([5.0, 6, 7, 8]).view(1, 4, 1)
    inputs, mask = layout(prev, curr)
    assert inputs.shape == (1, 8, 1) and inputs.flatten().tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert mask.shape == (8, 8) and mask.dtype == torch.bool
    weights = (~mask).float()  # the reference's mask is True where attention is blocked
    assert (weights @ inputs[0]).flatten().tolist() == [0, 1, 3, 6, 5, 7, 10, 14]


def test_the_mask_is_causal_plus_the_diagonal_and_blocks_what_next_token_mask_allows():
    for T in (1, 2, 5):
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = torch.cat([torch.cat([causal, torch.zeros(T, T, dtype=torch.bool)], dim=1),
                             torch.cat([causal, torch.eye(T, dtype=torch.bool)], dim=1)])
        _, mask = NextTokenLayout(3, 5)(torch.randn(2, T, 3), torch.randn(2, T, 3))
        assert torch.equal(mask, ~allowed) and torch.equal(mask, ~next_token_mask(T))


def test_with_multihead_attention_a_prediction_sees_only_the_ground_truth_before_it():
    torch.manual_seed(0)
    T, C = 6, 8
    layout, attn = NextTokenLayout(C, T), nn.MultiheadAttention(C, 2, batch_first=True)
    nn.init.normal_(layout.init_emb)
    prev, curr = torch.randn(2, T, C), torch.randn(2, T, C)

    def outputs(p, c):
        x, mask = layout(p, c)
        return attn(x, x, x, attn_mask=mask, need_weights=False)[0]

    base = outputs(prev, curr)
    i = 3
    moved_prev, moved_curr = prev.clone(), curr.clone()
    moved_prev[:, i:] += 10.0  # the ground truth at i and later
    moved_curr[:, [j for j in range(T) if j != i]] += 10.0  # every other prediction
    assert torch.allclose(outputs(moved_prev, moved_curr)[:, T + i], base[:, T + i], atol=1e-6)
    moved_prev[:, i - 1] += 1.0  # the ground truth just before i is seen
    assert not torch.allclose(outputs(moved_prev, moved_curr)[:, T + i], base[:, T + i], atol=1e-3)


def test_the_initial_embedding_is_learned_and_starts_at_zero():
    layout = NextTokenLayout(4, 3)
    assert layout.init_emb.shape == (1, 1, 4) and layout.init_emb.abs().max() == 0
    assert [name for name, _ in layout.named_parameters()] == ["init_emb"] and not list(layout.buffers())
    inputs, _ = layout(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    inputs.sum().backward()
    assert torch.equal(layout.init_emb.grad, torch.full((1, 1, 4), 2.0))  # position 0 of both rows


def test_the_discriminator_uses_the_same_layout():
    torch.manual_seed(0)
    disc, layout = NextTokenDiscriminator(emb_dim=4, max_len=5), NextTokenLayout(4, 5)
    with torch.no_grad():
        layout.init_emb.copy_(disc.init.view(1, 1, 4))
    prev, curr = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    inputs, mask = layout(prev, curr)
    assert torch.equal(disc.layout(prev, curr), inputs) and torch.equal(disc.attention_mask(5), ~mask)


def test_bad_shapes_and_lengths_are_one_line_errors():
    layout = NextTokenLayout(4, 3)
    with pytest.raises(ValueError, match=r"must both have shape \(B, T, 4\)"):
        layout(torch.randn(2, 3, 4), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match=r"T=4 must be in \[1, max_tsz=3\]"):
        layout(torch.randn(1, 4, 4), torch.randn(1, 4, 4))
    with pytest.raises(ValueError, match="emb_dim and max_tsz"):
        NextTokenLayout(0, 3)
