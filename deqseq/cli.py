"""Command-line entry points: `python train.py ...` and `python generate.py ...` (generate and score).

Errors a user can cause end with one line on stderr and exit code 2; bugs still raise."""

from __future__ import annotations

import argparse
import sys

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from .config import ConfigError, apply_overrides, config_from_dict, load_config
from .data import DataError, UnknownSymbolError

USER_ERRORS = (ConfigError, DataError, CheckpointError, FileNotFoundError)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def train_main(argv: list[str] | None = None, default_config: str | None = None) -> int:
    """`train.py [--config FILE] [--resume RUN_DIR] [--no-progress] [key=value ...]`.

    default_config: the YAML used when neither --config nor --resume is given (train.py passes
    configs/default.yaml); None means the built-in dataclass defaults.
    """
    from .training import TrainingStopped, train

    parser = _Parser(prog="train.py", description="Train a DEQ sequence model.")
    parser.add_argument("--config", help=f"YAML experiment config (default: {default_config or 'built-in defaults'})")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run saved in RUN_DIR/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.max_steps=200")
    args = parser.parse_args(argv)
    try:
        if args.resume is not None and args.config is None:
            # Without --config a resumed run keeps its own saved config (overrides still apply on top), so the
            # printed hint `train.py --resume RUN_DIR` works for any run, not only for one with default settings.
            saved = read_checkpoint(args.resume)["config"]
            cfg = apply_overrides(config_from_dict(saved), args.overrides)
        else:
            cfg = load_config(args.config or default_config, args.overrides)
        result = train(cfg, resume_dir=args.resume, progress=not args.no_progress)
    except USER_ERRORS as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    if result.interrupted:
        print(f"interrupted at step {result.step}; resume with: python train.py --resume {result.run_dir}")
        return 130
    for split, values in (("valid", result.valid), ("test", result.test)):
        if values:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "tokens")
            print(f"{split}: {shown}")
    print(f"run saved in {result.run_dir} (last.pt, best.pt, metrics.jsonl, config.yaml)")
    return 0


class UsageError(ValueError):
    """A command-line value outside its allowed range (exit code 2)."""


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _mem_len(value: str) -> int | str:
    if value in ("auto", "all"):
        return value
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be auto, all or an integer >= 0, got {value}")
    return n


def _read_text(spec: str, what: str) -> str:
    """TEXT as is, @FILE's contents, or stdin for '-'."""
    if spec == "-":
        return sys.stdin.read()
    if spec.startswith("@"):
        path = spec[1:]
        try:
            return open(path, encoding="utf-8").read()  # noqa: SIM115
        except FileNotFoundError:
            raise UsageError(f"{what} file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read {what} file {path}: {err}") from None
    return spec


def _history_len(mem_len: int | str, model, config, total: int) -> int | None:
    """The transformer history window to generate or score with (None = the model's own).

    auto: the model's window, else the context it was trained on (each query sees at most seq_len positions,
    as in training). all: no window beyond the model's own, so the whole sequence must fit that context.
    """
    cell = model.deq.cell
    if not hasattr(cell, "window") or cell.window is not None:
        return mem_len if isinstance(mem_len, int) else None
    if isinstance(mem_len, int):
        return mem_len
    context = config.data.seq_len
    if mem_len == "auto":
        return context - 1
    if total > context:
        raise UsageError(f"{total} positions exceed the {context} this model was trained on and it has no "
                         f"history window; pass --mem-len N to attend to the last N positions only")
    return None


def _generate_parser() -> _Parser:
    parser = _Parser(prog="generate.py", description="Generate from or score with a trained DEQ sequence model.")
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/last.pt (or a run directory)")
    parser.add_argument("--prompt", default=None,
                        help="prompt TEXT, @FILE for a file's contents, - for stdin (default: a line break)")
    parser.add_argument("--max-new-tokens", type=_positive, default=200)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--num-samples", type=_positive, default=1)
    parser.add_argument("--seed", type=int, default=None, help="same seed, same samples (default: random)")
    parser.add_argument("--mem-len", type=_mem_len, default="auto",
                        help="transformer history kept per position: N, auto (the model's window, else its "
                             "training context) or all (the whole sequence must fit the training context)")
    parser.add_argument("--warm-start", action="store_true", help="start each solve from the previous z*")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are produced")
    parser.add_argument("--stats", action="store_true", help="solver iterations and residual per token, tokens/s")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--check-equivalence", action="store_true",
                        help="re-solve prompt + output at sequence level, token by token and in chunks; exit 1 "
                             "if they differ by more than the solver tolerance allows")
    parser.add_argument("--score", metavar="FILE", help="print NLL, perplexity and bits/token of FILE instead")
    return parser


def generate_main(argv: list[str] | None = None) -> int:
    """`generate.py --checkpoint CKPT [--prompt TEXT|@FILE|-] [sampling options] [--score FILE]`."""
    from .sampling import SamplingConfig
    from .training import resolve_device

    args = _generate_parser().parse_args(argv)
    try:
        SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    except ValueError as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        return 2
    try:
        device = _device(args.device, resolve_device)
        model, tokenizer, config = load_checkpoint(args.checkpoint, device)
        if args.score is not None:
            return _score_command(args, model, tokenizer, config)
        prompt = tokenizer.encode_prompt(_read_text(args.prompt if args.prompt is not None else "\n", "prompt"))
        if not prompt:
            raise UsageError("the prompt is empty: give --prompt with at least one symbol to continue from")
        # The last sampled token is only solved for by --check-equivalence.
        solved = len(prompt) + args.max_new_tokens - (0 if args.check_equivalence else 1)
        mem_len = _history_len(args.mem_len, model, config, solved)
        return _generate_command(args, model, tokenizer, prompt, mem_len)
    except (*USER_ERRORS, UsageError, UnknownSymbolError) as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _device(name: str, resolve):
    import torch

    try:
        device = resolve(name)
    except RuntimeError as err:
        raise UsageError(f"bad --device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for CUDA but no CUDA device is available")
    return device


def _score_command(args, model, tokenizer, config) -> int:
    import torch

    from .scoring import score

    ids = torch.tensor(tokenizer.encode(_read_text("@" + args.score, "score")), dtype=torch.long)
    if ids.numel() < 2:
        raise UsageError(f"{args.score} has {ids.numel()} tokens; scoring needs at least 2")
    mem_len = _history_len(args.mem_len, model, config, ids.numel() - 1)  # the last token is only a target
    result = score(model, ids, config.data.seq_len, carry_history=True, mem_len=mem_len)
    print(f"{args.score}: {result}")
    return 0


def _generate_command(args, model, tokenizer, prompt: list[int], mem_len: int | None) -> int:
    import torch

    from .equivalence import check_equivalence
    from .generation import history_window, stream

    steps = []
    out = sys.stdout
    several = args.num_samples > 1
    with history_window(model, mem_len):
        if args.stream:  # sample 1 is printed as it is produced, the others once they are complete
            shown = tokenizer.decode(prompt)
            out.write(("---- sample 1 ----\n" if several else "") + shown)
            out.flush()
        for step in stream(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                           args.repetition_penalty, args.seed, args.num_samples, warm_start=args.warm_start):
            steps.append(step)
            if args.stats:
                print(f"token {step.index:4d}: iterations {int(step.iterations.max()):3d}  residual "
                      f"{step.residual.max().item():.2e}  converged {bool(step.converged.all())}", file=sys.stderr)
            if args.stream:
                # Decode the whole text each time: tokenizers that join tokens with separators (words, ids)
                # decode a continuation differently from its pieces, and a byte may end mid-character.
                text = tokenizer.decode(prompt + [s.ids[0].item() for s in steps])
                if not text.endswith("\ufffd"):
                    out.write(text[len(shown):])
                    out.flush()
                    shown = text
        new = torch.stack([s.ids for s in steps], dim=1).cpu()
        if args.stream:
            out.write(tokenizer.decode(prompt + new[0].tolist())[len(shown):] + "\n")
        for i in range(1 if args.stream else 0, new.shape[0]):
            if several:
                out.write(f"---- sample {i + 1} ----\n")
            out.write(tokenizer.decode(prompt + new[i].tolist()) + "\n")
        out.flush()
        if args.stats:
            _print_generation_stats(steps, len(prompt))
        if args.check_equivalence:
            full = torch.cat([torch.tensor(prompt).expand(new.shape[0], -1), new], dim=1)
            return _check(model, full.to(next(model.parameters()).device), check_equivalence)
    return 0


CHECK_MAX_ITER = 200


def _check(model, ids, check_equivalence) -> int:
    """Run the equivalence check with a larger iteration budget than training's (the check is about whether
    the solves agree at the tolerance, so each must get there), print its table; 0 if ok, else 1."""
    from dataclasses import replace

    saved = model.settings
    budget = max(saved.forward.max_iter, CHECK_MAX_ITER)
    model.settings = replace(saved, forward=replace(saved.forward, max_iter=budget))
    try:
        report = check_equivalence(model, ids)
    finally:
        model.settings = saved
    print(f"equivalence check (solver {saved.forward.method}, tol {saved.forward.tol:g}, up to {budget} iterations):")
    print(report)
    return 0 if report.ok else 1


def _print_generation_stats(steps, prompt_len: int) -> None:
    later = steps[1:]
    seconds = sum(s.seconds for s in later)
    n = steps[0].ids.shape[0]
    line = f"prefill {prompt_len} tokens: {1e3 * steps[0].seconds:.1f} ms, {int(steps[0].iterations.max())} iterations"
    if later:
        iters = sum(s.iterations.float().mean().item() for s in later) / len(later)
        worst = max(s.residual.max().item() for s in later)
        line += (f"; {len(later)} tokens x {n}: {n * len(later) / seconds:.1f} tokens/s, {iters:.1f} iterations/token,"
                 f" max residual {worst:.1e}")
    print(line, file=sys.stderr)
