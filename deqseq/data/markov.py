"""Synthetic order-k Markov chains over a small alphabet, with their exact entropy rate (float64, numpy)."""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from .errors import DataError

# Up to this many states the stationary distribution is solved densely (exact); above it, power iteration.
_DENSE_STATES = 1024
_POWER_TOL = 1e-14
_POWER_MAX_ITER = 100_000


class MarkovChain:
    """A Markov chain of order `order` over symbols 0..vocab-1 given by an explicit transition table.

    `table` has shape (vocab**order, vocab): row s is P(x | s), where the state s of the `order` previous
    symbols (oldest first) is their base-`vocab` number, so the state after s and x is (s*vocab + x) % vocab**order.
    Order 0 is an i.i.d. source with one state.
    """

    def __init__(self, table: np.ndarray, order: int):
        table = np.asarray(table, dtype=np.float64)
        if order < 0 or table.ndim != 2 or table.shape[1] < 1 or table.shape[0] != table.shape[1] ** order:
            raise DataError(f"a transition table of order {order} must have shape (vocab**{order}, vocab); "
                            f"got {table.shape}")
        if not np.isfinite(table).all() or (table < 0).any():
            raise DataError("transition probabilities must be finite and non-negative")
        sums = table.sum(axis=1)
        if np.abs(sums - 1.0).max() > 1e-9:
            raise DataError(f"every row of a transition table must sum to 1 (worst row sums to "
                            f"{sums[np.abs(sums - 1).argmax()]:.6g})")
        self.table = table / sums[:, None]
        self.order = order

    @classmethod
    def random(cls, order: int, vocab: int, seed: int, concentration: float = 0.5) -> MarkovChain:
        """A chain whose rows are independent Dirichlet(concentration) draws, reproducible from seed."""
        rng = np.random.default_rng([seed, 0])
        table = rng.dirichlet(np.full(vocab, float(concentration)), size=vocab**order)
        return cls(table, order)

    @property
    def vocab(self) -> int:
        """Number of symbols."""
        return self.table.shape[1]

    @property
    def num_states(self) -> int:
        """Number of order-k contexts, vocab**order."""
        return self.table.shape[0]

    def _step(self, pi: np.ndarray) -> np.ndarray:
        """One step of the state chain applied to a distribution over states."""
        s, v = self.num_states, self.vocab
        successors = (np.arange(s)[:, None] * v + np.arange(v)[None, :]) % s
        return np.bincount(successors.ravel(), weights=(pi[:, None] * self.table).ravel(), minlength=s)

    def stationary(self) -> np.ndarray:
        """The stationary distribution over the vocab**order states (float64, sums to 1)."""
        s, v = self.num_states, self.vocab
        if s <= _DENSE_STATES:
            successors = (np.arange(s)[:, None] * v + np.arange(v)[None, :]) % s
            m = np.zeros((s, s))
            np.add.at(m, (successors.ravel(), np.repeat(np.arange(s), v)), self.table.ravel())
            # (M - I) pi = 0 with sum(pi) = 1; least squares also gives a valid answer for a reducible chain.
            a = np.vstack([m - np.eye(s), np.ones((1, s))])
            b = np.zeros(s + 1)
            b[-1] = 1.0
            pi = np.linalg.lstsq(a, b, rcond=None)[0]
        else:
            pi = np.full(s, 1.0 / s)
            for _ in range(_POWER_MAX_ITER):
                # The lazy chain (I + P) / 2 has the same stationary distribution and is never periodic.
                nxt = 0.5 * (pi + self._step(pi))
                if np.abs(nxt - pi).sum() < _POWER_TOL:
                    pi = nxt
                    break
                pi = nxt
            else:
                raise DataError(f"the stationary distribution of a {s}-state chain did not converge; "
                                f"use a larger concentration or a smaller order")
        pi = np.clip(pi, 0.0, None)
        return pi / pi.sum()

    def entropy_rate(self) -> float:
        """Exact entropy rate in nats per symbol: -sum_s pi(s) sum_x P(x|s) log P(x|s)."""
        p = self.table
        plogp = p * np.log(p, out=np.zeros_like(p), where=p > 0)
        return max(0.0, float(-(self.stationary() @ plogp.sum(axis=1))))  # max: no -0.0 for a deterministic chain

    def contexts(self, ids: np.ndarray) -> np.ndarray:
        """The state before each position t >= order of a symbol sequence (length len(ids) - order)."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids) - self.order
        states = np.zeros(max(n, 0), dtype=np.int64)
        for j in range(self.order):
            states = states * self.vocab + ids[j : j + n]
        return states

    def log_probs(self, ids: np.ndarray) -> np.ndarray:
        """log P(x_t | the previous `order` symbols) for every position t >= order."""
        ids = np.asarray(ids, dtype=np.int64)
        return np.log(self.table[self.contexts(ids), ids[self.order :]])

    def sample(self, length: int, seed: int) -> np.ndarray:
        """`length` symbols (int64) of the chain, started from its stationary distribution."""
        rng = np.random.default_rng([seed, 1])
        s, v, k = self.num_states, self.vocab, self.order
        pi_cdf = np.cumsum(self.stationary())
        first = min(int(np.searchsorted(pi_cdf, rng.random() * pi_cdf[-1], side="right")), s - 1)
        out = [(first // v ** (k - 1 - j)) % v for j in range(k)][:length]
        cdf = np.cumsum(self.table, axis=1).tolist()
        state = first
        for u in rng.random(max(length - k, 0)).tolist():
            row = cdf[state]
            # Scaling u by the row total keeps the draw inside the row despite rounding in the cumulative sum.
            x = bisect_right(row, u * row[-1])
            out.append(x)
            state = (state * v + x) % s
        return np.asarray(out, dtype=np.int64)
