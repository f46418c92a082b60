"""What a training run prints: a progress bar on a terminal, plain log lines otherwise, and one-line events
(start, evaluations, the switch from pretraining to the DEQ) either way."""

from __future__ import annotations

import sys

from tqdm import tqdm

MODES = ("auto", "bar", "lines", "off")


class Progress:
    """mode "bar": a tqdm bar plus event lines; "lines": a plain line every `log_every` steps plus event lines
    (for logs and pipes, where a bar redrawn thousands of times is noise); "off": nothing; "auto": "bar" when
    stdout is a terminal, else "lines"."""

    def __init__(self, mode: str, total: int, initial: int, log_every: int) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r} is unknown; allowed: {', '.join(MODES)}")
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.mode, self.total, self.log_every = mode, total, log_every
        self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True) if mode == "bar" else None

    def event(self, text: str) -> None:
        """One line that stays (above the bar, when there is one)."""
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def step(self, step: int, phase: str, metrics: dict[str, float]) -> None:
        """Advance by one step, showing its loss, solver evaluations and throughput."""
        shown = {"phase": phase, "loss": f"{metrics['loss']:.3f}", "nfe": int(metrics.get("fwd_nfe", 0)),
                 "tok_s": f"{metrics['tokens_per_s']:.0f}"}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(shown)
        elif self.mode == "lines" and (step % self.log_every == 0 or step == self.total):
            print(f"step {step}/{self.total}  " + "  ".join(f"{k} {v}" for k, v in shown.items()), flush=True)

    def close(self) -> None:
        """Close the bar (idempotent)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
