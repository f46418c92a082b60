"""Sampling images from a pixel-sequence model: class-conditional samples and completions of held-out images
whose top half is given, with a PNG grid of both.

Every image is generated from frozen equilibria like text: the prompt (the start token, plus the given pixels
for a completion) is solved once, then one position per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .data import ImageData
from .generation import generate
from .model import DEQSequenceModel, eval_mode
from .sampling import SamplingConfig


@dataclass
class ImageSamples:
    """What `sample_images` drew.

    samples:     (C, S, H, W) S samples for each of C classes (C = 1 for a model without class conditioning).
    originals:   (K, H, W) held-out test images; completed: (K, H, W) the same with the rows below `given_rows`
                 sampled; labels: (K,) their classes.
    start_drawn: how many sampled pixels were the start token (which is never a pixel; shown as level 0). A
                 trained model gives it ~zero probability, so a count above zero says the model is not trained.
    bits_per_dim: the model's NLL of the K completed originals' sampled halves (bits per pixel), under the
                 same frozen-history solves.
    """

    samples: Tensor
    originals: Tensor
    completed: Tensor
    labels: Tensor
    given_rows: int
    start_drawn: int
    bits_per_dim: float


def _as_pixels(ids: Tensor, data: ImageData) -> tuple[Tensor, int]:
    """Pixel levels (N, H, W) of generated id rows (N, H W); start tokens become 0 and are counted."""
    drawn = int((ids >= data.levels).sum())
    return ids.clamp(max=data.levels - 1).reshape(-1, data.height, data.width), drawn


def sample_images(model: DEQSequenceModel, data: ImageData, per_class: int = 8, completions: int = 8,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                  seed: int | None = None) -> ImageSamples:
    """Draw per_class samples of every class (of the model, if conditioned) and complete the bottom halves of
    the first `completions` test images given their top halves (and classes)."""
    if per_class < 1 or completions < 0:
        raise ValueError(f"per_class must be >= 1 and completions >= 0, got {per_class}, {completions}")
    pixels = data.height * data.width
    device = next(model.parameters()).device
    conditioned = model.cond is not None
    classes = data.classes if conditioned else 1
    start = torch.full((classes, 1), data.vocab_size - 1, dtype=torch.long)
    cond = torch.arange(classes, device=device) if conditioned else None
    sampling = SamplingConfig(temperature, top_k, top_p, seed=seed)
    out = generate(model, start, pixels, sampling, num_samples=per_class, cond=cond)
    samples, drawn = _as_pixels(out[:, 1:], data)

    given_rows = data.height // 2
    test, labels = data.split("test")[:completions], data.labels("test")[:completions]
    given = 1 + given_rows * data.width
    completed = test.clone()
    bits = float("nan")
    if completions:
        c = labels.to(device) if conditioned else None
        completing = replace(sampling, seed=None if seed is None else seed + 1)
        done = generate(model, test[:, :given], pixels + 1 - given, completing, cond=c)
        completed, more = _as_pixels(done[:, 1:].cpu(), data)
        drawn += more
        bits = _bits_of_halves(model, test.to(device), c, given)
    return ImageSamples(samples.reshape(classes, per_class, data.height, data.width).cpu(),
                        data.pixels("test")[:completions], completed, labels, given_rows, drawn, bits)


@torch.no_grad()
def _bits_of_halves(model: DEQSequenceModel, seqs: Tensor, cond: Tensor | None, given: int) -> float:
    """Bits per pixel of the pixels after the first `given` ids of seqs (N, 1 + H W) under the model."""
    with eval_mode(model):
        out = model(seqs[:, :-1], cond=cond)
        nll = model.head.nll(out.logits, seqs[:, 1:])[:, given - 1 :]
    return float(nll.double().mean()) / 0.6931471805599453


def _mosaic(tiles: Tensor, gap: int = 1) -> Tensor:
    """(R, C, H, W) tiles as one (R (H + gap) - gap, C (W + gap) - gap) image; gaps are NaN (drawn blank)."""
    rows, cols, h, w = tiles.shape
    canvas = torch.full((rows * (h + gap) - gap, cols * (w + gap) - gap), float("nan"))
    for r in range(rows):
        for c in range(cols):
            canvas[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[r, c]
    return canvas


def save_image_grid(result: ImageSamples, path: str, title: str = "") -> None:
    """A PNG: the samples, one row per class; below, held-out test images over their completions (the rows
    under the red lines sampled). Needs matplotlib (`pip install deqseq[plot]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("image grids need matplotlib: pip install matplotlib (or pip install deqseq[plot])") from None
    classes, per_class, h, w = result.samples.shape
    k = len(result.originals)
    panels = [(_mosaic(result.samples.float()), "samples, one row per class" if classes > 1 else "samples")]
    if k:
        pairs = torch.stack([result.originals, result.completed]).float()
        panels.append((_mosaic(pairs), "test images (top) and completions (below each red line sampled)"))
    heights = [p.shape[0] for p, _ in panels]
    width = max(p.shape[1] for p, _ in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width / 14 + 0.4, sum(heights) / 14 + 0.6), dpi=150,
                             gridspec_kw={"height_ratios": heights}, squeeze=False, layout="constrained")
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="white")
    vmax = float(max(result.samples.max(), result.originals.max() if k else 1, 1))
    for i, (ax, (image, name)) in enumerate(zip(axes[:, 0], panels, strict=True)):
        ax.imshow(image.numpy(), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{title}\n{name}" if title and i == 0 else name, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        if classes > 1 and name.startswith("samples"):
            ax.set_yticks([c * (h + 1) + h / 2 - 0.5 for c in range(classes)], [str(c) for c in range(classes)],
                          fontsize=6)
    if k:
        line = h + 1 + result.given_rows - 0.5
        for i in range(k):
            axes[1, 0].plot([i * (w + 1) - 0.5, i * (w + 1) + w - 0.5], [line, line], color="red", lw=0.8)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
