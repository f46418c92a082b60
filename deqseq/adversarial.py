"""Adversarial next-token training: a NextTokenDiscriminator judges the generator's sampled next tokens.

The generator's logits (B, T, V) become (relaxed) one-hot samples whose embeddings, in the model's own input
embedding, are scored against the ground truth by the discriminator. The generator gets the non-saturating loss
-log D(fake) through a straight-through or Gumbel-softmax relaxation; the discriminator trains with its own
optimizer on real (curr = prev) and fake pairs. Per training step:

    out = model(x, ...)                                          # logits (B, T, V); targets t (B, T)
    adv_loss, adv_metrics = adv.generator_loss(out.logits, t)    # before loss.backward()
    (nll + adv_loss).backward(); optimizer.step()
    d_metrics = adv.discriminator_step(out.logits, t)            # after: detached inputs, own optimizer step
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .discriminator import NextTokenDiscriminator
from .model import DEQSequenceModel

ADVERSARIAL_MODES = ("off", "straight-through", "gumbel")  # train.adversarial
RELAXATIONS = ADVERSARIAL_MODES[1:]


def _check_mode(mode: str) -> None:
    if mode not in RELAXATIONS:
        raise ValueError(f"adversarial mode {mode!r} does not relax samples; allowed: {', '.join(RELAXATIONS)}")


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gumbel samples -log(-log U), U ~ uniform[0, 1) drawn from `generator` (seeds reproduce)."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(u.clamp_min(tiny)))


def relaxed_one_hot(logits: Tensor, mode: str, tau: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """A differentiable sample (B, T, V) of the categorical distributions softmax(logits (B, T, V)).

    "straight-through": the exact one-hot of a sample in the forward pass, the softmax's gradient backward.
    "gumbel": the Gumbel-softmax relaxed sample softmax((logits + Gumbel noise) / tau), rows summing to 1.
    Computed in at least float32.
    """
    _check_mode(mode)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    work = torch.promote_types(logits.dtype, torch.float32)
    logits = logits.to(work)
    noise = gumbel_noise(logits.shape, generator, logits.device, work)
    if mode == "gumbel":
        return torch.softmax((logits + noise) / tau, dim=-1)
    soft = torch.softmax(logits, dim=-1)
    # Gumbel-max: argmax(logits + noise) is a sample of softmax(logits).
    hard = F.one_hot((logits.detach() + noise).argmax(dim=-1), logits.shape[-1]).to(work)
    return hard + (soft - soft.detach())  # hard exactly (x + 0 == x), gradient of soft


def check_adversarial_model(model: DEQSequenceModel) -> None:
    """Raise ValueError unless model takes token ids through an embedding or one-hot input and has a
    categorical head (adversarial training embeds sampled tokens with the model's own input transform)."""
    if not model.io.embeds_onehot:
        raise ValueError("adversarial training needs token-id inputs that embed one-hot vectors (model.input "
                         f"'embedding' or 'onehot', or a module with embed_onehot), got {type(model.input).__name__}")
    if not model.io.categorical:
        raise ValueError(f"adversarial training needs a categorical head (one that emits ids), got "
                         f"{type(model.head).__name__} (emits {model.io.emits})")


def token_embeddings(model: DEQSequenceModel, onehot: Tensor) -> Tensor:
    """Embed (relaxed) one-hot vectors (B, T, V) with the model's own input transform: (B, T, C).

    The input's own `embed_onehot`: onehot @ table for the embedding (equal to the lookup for hard one-hots),
    the module itself for the one-hot input.
    """
    check_adversarial_model(model)
    vocab = model.io.vocab
    if onehot.dim() != 3 or onehot.shape[-1] != vocab:
        raise ValueError(f"onehot must have shape (B, T, {vocab}), got {tuple(onehot.shape)}")
    return model.input.embed_onehot(onehot)


def _bce(scores: Tensor, real: bool) -> Tensor:
    """Mean binary cross-entropy of logits against an all-real (True) or all-fake target."""
    target = torch.ones_like(scores) if real else torch.zeros_like(scores)
    return F.binary_cross_entropy_with_logits(scores.float(), target.float())


class AdversarialTraining:
    """The discriminator, its optimizer and the two losses of adversarial next-token training.

    mode:      "straight-through" or "gumbel" (ADVERSARIAL_MODES without "off": with "off" build none).
    weight:    multiplies the generator loss.
    tau:       Gumbel-softmax temperature (mode "gumbel").
    disc_lr:   learning rate of the discriminator's Adam (betas (0.5, 0.999), the usual GAN choice).
    max_len:   longest sequence the discriminator accepts (the training seq_len).
    seed:      seeds the sampling noise (None: torch's global generator).
    disc_kwargs: NextTokenDiscriminator arguments (d_model, n_heads, d_ff, settings).
    The discriminator is built on the model's device and dtype; targets are the (B, T) next-token ids
    (logits[:, i] predicts targets[:, i]).
    """

    def __init__(
        self,
        model: DEQSequenceModel,
        mode: str,
        weight: float,
        tau: float = 1.0,
        disc_lr: float = 1e-4,
        *,
        max_len: int,
        seed: int | None = None,
        **disc_kwargs: Any,
    ):
        _check_mode(mode)
        check_adversarial_model(model)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ValueError(f"weight must be a number >= 0, got {weight!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.model, self.mode, self.weight, self.tau, self.seed = model, mode, float(weight), float(tau), seed
        ref = next(model.input.parameters())
        self.discriminator = NextTokenDiscriminator(model.config.embed_dim, max_len, **disc_kwargs).to(
            ref.device, ref.dtype)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=disc_lr, betas=(0.5, 0.999))
        self._generator: torch.Generator | None = None

    def _rng(self, device: torch.device) -> torch.Generator | None:
        """The seeded generator on `device` (created, or re-created after a device change, from the seed)."""
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def _pair(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(prev, fake) embeddings (B, T, C): the ground truth and the relaxed samples of the logits."""
        if logits.dim() != 3 or targets.shape != logits.shape[:2]:
            raise ValueError(f"logits (B, T, V) and targets (B, T) must agree, got {tuple(logits.shape)} "
                             f"and {tuple(targets.shape)}")
        # Both sides go through the same one-hot product, so a sampled token equal to the target embeds to
        # exactly the ground truth's vector (a lookup could differ in rounding, e.g. under autocast).
        real = F.one_hot(targets.long(), logits.shape[-1])
        prev = token_embeddings(self.model, real)
        fake = token_embeddings(self.model, relaxed_one_hot(logits, self.mode, self.tau, self._rng(logits.device)))
        return prev, fake

    def generator_loss(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, float]]:
        """weight * mean BCE(D(prev, fake), real): the non-saturating generator loss, differentiable w.r.t.
        logits and the model's input embedding; the discriminator's parameters get no gradient (it may be
        stepped before this loss is backpropagated). metrics: adv_g_loss (the unweighted BCE)."""
        prev, fake = self._pair(logits, targets)
        # The discriminator runs on detached copies of its parameters: no gradient reaches them, and a
        # discriminator_step before this loss's backward() cannot modify tensors its graph saved.
        frozen = {name: p.detach().clone() for name, p in self.discriminator.named_parameters()}
        scores = torch.func.functional_call(self.discriminator, frozen, (prev, fake))
        bce = _bce(scores, real=True)
        return self.weight * bce, {"adv_g_loss": bce.item()}

    def discriminator_step(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        """One optimizer step of the discriminator on BCE(D(prev, prev), 1) + BCE(D(prev, fake), 0).

        Inputs are detached (the model gets no gradient); gradients are averaged over ranks when
        torch.distributed is initialised. metrics: adv_d_loss, adv_d_acc, adv_d_real_acc, adv_d_fake_acc
        and the discriminator's solver stats (adv_d_fwd_*, adv_d_fwd_bwd_*).
        """
        with torch.no_grad():
            prev, fake = self._pair(logits.detach(), targets)
        B = prev.shape[0]
        # One solve for both halves: per-position systems keep the batch entries independent.
        scores = self.discriminator(torch.cat([prev, prev]), torch.cat([prev, fake]))
        real_scores, fake_scores = scores[:B], scores[B:]
        loss = _bce(real_scores, real=True) + _bce(fake_scores, real=False)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.discriminator.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        self.optimizer.step()
        with torch.no_grad():
            real_acc = (real_scores > 0).float().mean()
            fake_acc = (fake_scores < 0).float().mean()
            values = torch.stack([loss.detach().float(), real_acc, fake_acc]).tolist()
        metrics = {
            "adv_d_loss": values[0],
            "adv_d_acc": (values[1] + values[2]) / 2,
            "adv_d_real_acc": values[1],
            "adv_d_fake_acc": values[2],
        }
        if self.discriminator.last_stats is not None:
            metrics.update(self.discriminator.last_stats.summary("adv_d_fwd_"))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Discriminator and optimizer state (and the sampling generator's, when seeded) for a checkpoint."""
        state: dict[str, Any] = {
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "generator" in state and self.seed is not None:
            device = next(self.discriminator.parameters()).device
            self._rng(device).set_state(state["generator"])
