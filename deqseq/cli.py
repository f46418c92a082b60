"""Command-line entry points: `python train.py ...` and `python generate.py ...` (generate and score).

Errors a user can cause end with one line on stderr and exit code 2; bugs still raise."""

from __future__ import annotations

import argparse
import math
import re
import sys

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from .config import ConfigError, apply_overrides, config_from_dict, load_config
from .data import DataError, UnknownSymbolError, is_image_source

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
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run saved in RUN_DIR/last.pt, writing to RUN_DIR")
    parser.add_argument("--force", action="store_true",
                        help="start over in a run folder that already holds a run (its checkpoints are deleted)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain log lines instead of a progress bar (the default when stdout is not a terminal)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.max_steps=200")
    args = parser.parse_args(argv)
    if args.force and args.resume is not None:
        parser.error("--force starts a run over; it cannot be combined with --resume")
    try:
        if args.resume is not None and args.config is None:
            # Without --config a resumed run keeps its own saved config (overrides still apply on top), so the
            # printed hint `train.py --resume RUN_DIR` works for any run, not only for one with default settings.
            saved = read_checkpoint(args.resume)["config"]
            cfg = apply_overrides(config_from_dict(saved), args.overrides)
        else:
            cfg = load_config(args.config or default_config, args.overrides)
        result = train(cfg, resume_dir=args.resume, progress="lines" if args.no_progress else "auto",
                       force=args.force)
    except USER_ERRORS as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except TrainingStopped as err:
        print(f"train.py: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # at startup (nothing written yet) or in the final evaluation (after last.pt)
        print(f"train.py: {str(err) or 'interrupted before training started; nothing was saved'}", file=sys.stderr)
        return 130
    if result.interrupted:
        print(f"interrupted at step {result.step}; resume with: python train.py --resume {result.run_dir}")
        return 130
    batches = cfg.train.eval_batches
    covers = {"valid": f"first {batches} batches" if batches else "whole split", "test": "whole split"}
    for split, values in (("valid", result.valid), ("test", result.test)):
        if values:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if k not in ("tokens", "steps"))
            print(f"{split}: {shown} ({covers[split]})")
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
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError(f"{what} '-' reads standard input, but it is closed")
        try:
            return sys.stdin.read()
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read the {what} from standard input: {err}") from None
    if spec.startswith("@"):
        path = spec[1:]
        try:
            return open(path, encoding="utf-8").read()  # noqa: SIM115
        except FileNotFoundError:
            raise UsageError(f"{what} file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read {what} file {path}: {err}") from None
    return spec


def _prompt_texts(args) -> list[str]:
    """The texts of --prompt (each may repeat) and the lines of --prompts FILE; a line break when neither."""
    texts = [_read_text(spec, "prompt") for spec in args.prompt or []]
    if args.prompts is not None:
        lines = _read_text("@" + args.prompts, "prompts").splitlines()
        texts += [line for line in lines if line]
        if not any(lines):
            raise UsageError(f"--prompts file {args.prompts} has no prompts (one per line)")
    return texts or ["\n"]


def _stop_strings(values: list[str] | None) -> list[str]:
    """--stop values with \\n, \\t and \\\\ read as a line break, a tab and a backslash."""
    out = []
    for value in values or []:
        text = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}.get(m[1], m[0]), value)
        if not text:
            raise UsageError("--stop needs a non-empty string")
        out.append(text)
    return out


def _window(mem_len: int | str, model, total: int) -> int | str | None:
    """The --mem-len value as the library's window argument (see DEQSequenceModel.resolve_window).

    auto: the model's default window, its own or else the context it was trained on (each query sees at most
    trained_len positions, as in training), the library's default too. all: no window beyond the model's own,
    so a sequence of `total` positions must fit the trained context.
    """
    if mem_len != "all":
        return mem_len
    cell, context = model.deq.cell, model.config.trained_len
    if cell.has_window and cell.window is None and context is not None and total > context:
        raise UsageError(f"{total} positions exceed the {context} this model was trained on and it has no "
                         f"history window; pass --mem-len N to attend to the last N positions only")
    return None


def _seed(value: str) -> int:
    n = int(value)
    if not 0 <= n < 2**64:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2^64), got {value}")
    return n


def _generate_parser() -> _Parser:
    parser = _Parser(prog="generate.py", description="Generate from or score with a trained DEQ sequence model.")
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/last.pt (or a run directory)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="prompt TEXT, @FILE for a file's contents, - for stdin (default: a line break); "
                             "repeat it for several prompts in one batch (any lengths)")
    parser.add_argument("--prompts", metavar="FILE", default=None,
                        help="several prompts, one per line of FILE (empty lines skipped), in one batch")
    parser.add_argument("--stop", action="append", default=None, metavar="STRING",
                        help="end a sequence once its generated text contains STRING (kept in the output; "
                             "\\n and \\t mean a line break and a tab); may be repeated")
    parser.add_argument("--max-new-tokens", type=_positive, default=None,
                        help="tokens (steps) to generate (default: 200; for a series, the rest of --series, else 64)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--num-samples", type=_positive, default=None,
                        help="continuations per prompt (default: 1; 16 for a real-valued series)")
    parser.add_argument("--seed", type=_seed, default=None, help="same seed, same samples (default: random)")
    parser.add_argument("--mem-len", type=_mem_len, default="auto",
                        help="transformer history kept per position: N, auto (the model's window, else its "
                             "training context) or all (the whole sequence must fit the training context)")
    parser.add_argument("--warm-start", action="store_true", help="start each solve from the previous z*")
    parser.add_argument("--fused", action="store_true",
                        help="solve each new token with fused, compiled solver iterations: the same tokens, less "
                             "overhead per token, after a compile of a few seconds")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are produced")
    parser.add_argument("--stats", action="store_true", help="solver iterations and residual per token, tokens/s")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--check-equivalence", action="store_true",
                        help="re-solve prompt + output at sequence level, token by token and in chunks; exit 1 "
                             "if they differ by more than the solver tolerance allows")
    parser.add_argument("--score", metavar="FILE", help="print NLL, perplexity and bits/token of FILE instead")
    series = parser.add_argument_group("real-valued series (checkpoints of models with real-valued inputs)")
    series.add_argument("--series", metavar="SPLIT:INDEX",
                        help="continue series INDEX of the valid or test split of the checkpoint's data source "
                             "(instead of --prompt VALUES: comma-separated values, one line per step for I > 1)")
    series.add_argument("--prefix", type=_positive, default=None,
                        help="observed steps of --series (default: half the training seq_len)")
    series.add_argument("--cond", default=None,
                        help="conditioning: comma-separated values (global), or class:K for class K")
    series.add_argument("--plot", metavar="PNG", default=None,
                        help="write a plot of prefix, sampled continuations and mean +- 2 std (needs matplotlib); "
                             "for an image model, the grid of samples and completions (default RUN_DIR/samples.png)")
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
        if is_image_source(config.data.spec):
            return _image_command(args, model, config)
        if tokenizer is None:
            return _series_command(args, model, config)
        for flag in ("series", "prefix", "cond", "plot"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag} is for models of real-valued series; this checkpoint models tokens")
        args.max_new_tokens = args.max_new_tokens or 200
        args.num_samples = args.num_samples or 1
        if args.score is not None:
            return _score_command(args, model, tokenizer, config)
        prompts = [tokenizer.encode_prompt(text) for text in _prompt_texts(args)]
        if not all(prompts):
            raise UsageError("the prompt is empty: give --prompt with at least one symbol to continue from")
        # The last sampled token is only solved for by --check-equivalence.
        solved = max(map(len, prompts)) + args.max_new_tokens - (0 if args.check_equivalence else 1)
        return _generate_command(args, model, tokenizer, prompts, _window(args.mem_len, model, solved))
    except (*USER_ERRORS, UsageError, UnknownSymbolError) as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("generate.py: interrupted", file=sys.stderr)
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
    mem_len = _window(args.mem_len, model, ids.numel() - 1)  # the last token is only a target
    result = score(model, ids, config.data.seq_len, carry_history=True, mem_len=mem_len)
    print(f"{args.score}: {result}")
    return 0


def _generate_command(args, model, tokenizer, prompts: list[list[int]], mem_len: int | str | None) -> int:
    from .generation import next_input, stream

    stops = _stop_strings(args.stop)
    n = len(prompts) * args.num_samples
    rows = [prompts[i // args.num_samples] for i in range(n)]
    new: list[list[int]] = [[] for _ in range(n)]  # each row's generated ids
    cut: list[int | None] = [None] * n  # where a row's text ends after its first stop string
    out = sys.stdout
    labels = [_row_label(i, len(prompts), args.num_samples) for i in range(n)]
    if args.stream:  # row 1 is printed as it is produced, the others once they are complete
        shown = tokenizer.decode(rows[0])
        out.write(labels[0] + shown)
        out.flush()
    steps = []
    for step in stream(model, prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                       num_samples=args.num_samples, mem_len=mem_len, warm_start=args.warm_start,
                       fused=args.fused):
        steps.append(step)
        if args.stats:
            print(f"token {step.index:4d}: iterations {int(step.iterations.max()):3d}  residual "
                  f"{step.residual.max().item():.2e}  converged {bool(step.converged.all())}", file=sys.stderr)
        ids = next_input(model, step.ids)[:, 0].tolist()  # a dmol head over token ids samples level values
        for i in step.sampled.nonzero()[:, 0].tolist():
            if cut[i] is None:
                new[i].append(ids[i])
                cut[i] = _stop_cut(tokenizer, rows[i], new[i], stops)
        if args.stream and step.sampled[0] and (cut[0] is None or cut[0] > len(shown)):
            # Decode the whole text each time: tokenizers that join tokens with separators (words, ids)
            # decode a continuation differently from its pieces, and a byte may end mid-character.
            text = tokenizer.decode(rows[0] + new[0])[: cut[0]]
            if not text.endswith("\ufffd"):
                out.write(text[len(shown):])
                out.flush()
                shown = text
        if stops and all(c is not None for c in cut):
            break
    texts = [tokenizer.decode(rows[i] + new[i])[: cut[i]] for i in range(n)]
    if args.stream:
        out.write(texts[0][len(shown):] + "\n")
    for i in range(1 if args.stream else 0, n):
        out.write(labels[i] + texts[i] + "\n")
    out.flush()
    if args.stats:
        _print_generation_stats(steps, min(map(len, prompts)))
    if args.check_equivalence:
        return _check_rows(model, [rows[i] + new[i] for i in range(n)], mem_len)
    return 0


def _check_rows(model, sequences: list[list[int]], mem_len: int | str | None) -> int:
    """The equivalence check of generated rows, in groups of one length (a stop string can end rows at different
    tokens); the worst group's exit code."""
    import torch

    from .equivalence import check_equivalence

    device = next(model.parameters()).device
    code = 0
    for length in sorted({len(seq) for seq in sequences}):
        group = [seq for seq in sequences if len(seq) == length]
        code = max(code, _check(model, torch.tensor(group, device=device), check_equivalence, mem_len=mem_len))
    return code


def _row_label(row: int, prompts: int, samples: int) -> str:
    """The header line before output row `row` (none when there is only one row)."""
    if prompts == 1:
        return f"---- sample {row + 1} ----\n" if samples > 1 else ""
    prompt, sample = divmod(row, samples)
    return f"---- prompt {prompt + 1}" + (f", sample {sample + 1}" if samples > 1 else "") + " ----\n"


def _stop_cut(tokenizer, prompt: list[int], new: list[int], stops: list[str]) -> int | None:
    """The length of the text up to the end of the first stop string in the generated part, or None."""
    if not stops:
        return None
    start = len(tokenizer.decode(prompt))
    text = tokenizer.decode(prompt + new)
    ends = [text.find(s, start) for s in stops]
    hits = [e + len(s) for e, s in zip(ends, stops, strict=True) if e >= 0]
    return min(hits) if hits else None


CHECK_MAX_ITER = 200
CHECK_TIGHTEN = 100.0  # the check also re-solves at tolerance / this, to show the differences shrink with it
CHECK_STARTS = 3  # random starts of the sequence-level solve (at the tighter tolerance), which must all agree


def _check_budget(settings) -> int:
    """The check's forward iteration budget: training's, raised to CHECK_MAX_ITER."""
    return max(settings.forward.max_iter, CHECK_MAX_ITER)


def check_as_cli(model, ids, check_equivalence, **kwargs):
    """check_equivalence as `--check-equivalence` runs it: with a larger iteration budget than training's (the
    check is about whether the solves agree at the tolerance, so each must get there), the re-solve at tolerance /
    CHECK_TIGHTEN and CHECK_STARTS random starts; kwargs go to check_equivalence and override those."""
    from dataclasses import replace

    saved = model.settings
    model.settings = replace(saved, forward=replace(saved.forward, max_iter=_check_budget(saved)))
    try:
        return check_equivalence(model, ids, **{"tighten": CHECK_TIGHTEN, "starts": CHECK_STARTS, **kwargs})
    finally:
        model.settings = saved


def _check(model, ids, check_equivalence, cond=None, mem_len: int | str | None = "auto") -> int:
    """Run the equivalence check as check_as_cli does, print its summaries and table; 0 if ok, else 1."""
    saved = model.settings
    budget = _check_budget(saved)
    report = check_as_cli(model, ids, check_equivalence, cond=cond, mem_len=mem_len)
    print(f"equivalence check (solver {saved.forward.method}, tol {saved.forward.tol:g} and "
          f"{saved.forward.tol / CHECK_TIGHTEN:g}, up to {budget} iterations; {CHECK_STARTS} random starts at the "
          "tighter tolerance; rho_t: contraction of each position's map against the frozen history; state diffs and "
          "bounds are per-sequence 2-norms):")
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


# ------------------------------------------------------------------------------------------------------ images


def _image_command(args, model, config) -> int:
    """Sample --num-samples images per class and complete the top halves of 8 test images; write a PNG grid."""
    from pathlib import Path

    from .data import load_corpus
    from .images import sample_images, save_image_grid

    for flag, given in {"--score": args.score is not None, "--prompt": args.prompt is not None,
                        "--prompts": args.prompts is not None, "--stop": args.stop is not None,
                        "--series": args.series is not None, "--check-equivalence": args.check_equivalence,
                        "--stream": args.stream, "--fused": args.fused}.items():
        if given:
            raise UsageError(f"{flag} does not apply to an image model; it writes a grid of samples (--plot PNG)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("image grids need matplotlib: pip install matplotlib") from None
    data = load_corpus(config.data.spec)
    checkpoint = Path(args.checkpoint)
    path = args.plot or str((checkpoint if checkpoint.is_dir() else checkpoint.parent) / "samples.png")
    result = sample_images(model, data, args.num_samples or 8, 8, args.temperature, args.top_k, args.top_p,
                           args.seed)
    classes, per_class = result.samples.shape[:2]
    save_image_grid(result, path, f"{config.run.name}: temperature {args.temperature:g}, seed {args.seed}")
    print(f"wrote {path}: {per_class} samples for each of {classes} class{'es' * (classes > 1)} and "
          f"{len(result.originals)} test images completed from their top {result.given_rows} rows "
          f"(their bottom halves: {result.bits_per_dim:.3f} bits/dim under the model); start tokens drawn as "
          f"pixels: {result.start_drawn}")
    return 0


# ------------------------------------------------------------------------------------------ real-valued series


def _numbers(text: str, what: str) -> list[list[float]]:
    """Rows of comma- or space-separated numbers, one row per line (or ';')."""
    rows = []
    for line in text.replace(";", "\n").splitlines():
        items = line.replace(",", " ").split()
        if not items:
            continue
        try:
            rows.append([float(v) for v in items])
        except ValueError:
            raise UsageError(f"{what} must be numbers separated by commas, got {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in rows[-1]):
            raise UsageError(f"{what} must be finite numbers, got {line.strip()!r}")
    if not rows:
        raise UsageError(f"{what} has no values")
    return rows


def _series_prompt(args, width: int):
    """The observed prefix (P, width) parsed from --prompt VALUES|@FILE|-."""
    import torch

    if len(args.prompt) > 1:
        raise UsageError("a series checkpoint takes one --prompt (one observed series); several are not supported")
    rows = _numbers(_read_text(args.prompt[0], "prompt"), "--prompt")
    if width == 1 and len(rows) == 1:
        rows = [[v] for v in rows[0]]  # one line of values: one value per step
    if any(len(r) != width for r in rows):
        raise UsageError(f"--prompt needs {width} values per step (one line per step), got rows of "
                         f"{sorted({len(r) for r in rows})}")
    return torch.tensor(rows)


def _series_cond(text: str, model):
    """--cond as a class id (class:K) or a (cond_dim,) vector."""
    import torch

    dim = model.config.cond_dim
    if dim == 0:
        raise UsageError("--cond was given but this model is not conditioned (cond_dim 0)")
    if text.startswith("class:"):
        try:
            k = int(text[len("class:"):])
        except ValueError:
            raise UsageError(f"--cond class:K needs an integer K, got {text!r}") from None
        if not 0 <= k < dim:
            raise UsageError(f"--cond class:{k} is out of range: this model has {dim} classes (0..{dim - 1})")
        return torch.tensor(k)
    values = _numbers(text, "--cond")
    flat = [v for row in values for v in row]
    if len(flat) != dim:
        raise UsageError(f"--cond needs {dim} values (cond_dim), got {len(flat)}")
    return torch.tensor(flat)


def _held_out_series(args, config):
    """(prefix, truth, cond) of --series SPLIT:INDEX from the checkpoint's (synthetic) data source."""
    from .data import load_corpus

    split, _, index = args.series.partition(":")
    if split not in ("valid", "test") or not index.lstrip("-").isdigit():
        raise UsageError(f"--series must be valid:INDEX or test:INDEX, got {args.series!r}")
    data = load_corpus(config.data.spec, config.data.tokenizer)
    values, i = data.split(split), int(index)
    if not 0 <= i < len(values):
        raise UsageError(f"--series {args.series}: the {split} split has {len(values)} series (0..{len(values) - 1})")
    prefix_len = args.prefix or max(1, config.data.seq_len // 2)
    if prefix_len >= values.shape[1]:
        raise UsageError(f"--prefix {prefix_len} leaves nothing to continue in a series of {values.shape[1]} steps")
    cond = data.cond(split)
    return values[i, :prefix_len], values[i, prefix_len:], (cond[i] if cond is not None else None)


def _series_command(args, model, config) -> int:
    """Continue a real-valued series: print the sampled continuations' mean, spread and a sample; plot them."""
    from .equivalence import check_equivalence
    from .forecast import continue_series, plot_continuation

    token_only = {"--score": args.score is not None, "--top-k": args.top_k is not None, "--top-p": args.top_p != 1,
                  "--repetition-penalty": args.repetition_penalty != 1, "--stream": args.stream,
                  "--prompts": args.prompts is not None, "--stop": args.stop is not None}
    for flag, given in token_only.items():
        if given:
            raise UsageError(f"{flag} applies to token models; this checkpoint models real-valued series")
    if (args.series is None) == (args.prompt is None):
        raise UsageError("give the observed values with --prompt VALUES|@FILE|- or --series valid:INDEX (one of them)")
    if args.prefix is not None and args.series is None:
        raise UsageError("--prefix selects the observed part of --series; with --prompt every value is observed")
    truth, cond = None, None
    if args.series is not None:
        prefix, truth, cond = _held_out_series(args, config)
    else:
        prefix = _series_prompt(args, model.io.value_width)
    if args.cond is not None:
        cond = _series_cond(args.cond, model)
    if model.cond is not None and cond is None:
        raise UsageError(f"this model is conditioned (cond_dim {model.config.cond_dim}): give --cond or --series")
    steps = args.max_new_tokens or (len(truth) if truth is not None else 64)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
    mem_len = _window(args.mem_len, model, len(prefix) + steps - (0 if args.check_equivalence else 1))
    result = continue_series(model, prefix, steps, num_samples=args.num_samples or 16, temperature=args.temperature,
                             seed=args.seed, cond=cond, truth=truth, mem_len=mem_len, fused=args.fused)
    n = result.samples.shape[0]
    print(f"observed {len(prefix)} steps; {steps} steps continued, {n} sample{'s' * (n > 1)} "
          f"(one-step predictive after the prefix: mean {result.first_mean[0].item():.4f}, "
          f"std {result.first_std[0].item():.4f})")
    print(result.table())
    if args.stats:
        _print_generation_stats(result.generation.steps, len(prefix))
    if args.plot is not None:
        title = f"{args.series or 'prompt'}: {len(prefix)} observed steps, {n} sampled continuations"
        plot_continuation(result, args.plot, title)
        print(f"plot written to {args.plot}")
    if args.check_equivalence:
        device = next(model.parameters()).device
        c = None if cond is None else cond[None].to(device)
        return _check(model, result.generation.ids[:1].to(device), check_equivalence, c, mem_len)
    return 0
