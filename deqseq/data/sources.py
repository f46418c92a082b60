"""Corpus specs -> Corpus: the standard library, text files, WikiText-103, PTB, enwik8 and Markov sources;
and -> SeriesData: real-valued random Fourier series.

Nothing is ever downloaded: every spec names data that is already on disk or generated here.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry
from .corpus import SPLITS, Corpus, split_by_position, split_sizes
from .digits import ImageData, load_digits_images
from .errors import DataError
from .markov import MarkovChain
from .series import MAX_SERIES_VALUES, SeriesData, fourier_series, parse_cond, parse_periods
from .stdlib import read_stdlib
from .tokenizers import ByteTokenizer, CharTokenizer, IdTokenizer, Tokenizer, WordTokenizer

Data = Corpus | SeriesData | ImageData
# load(spec, options, tokenizer, max_vocab, min_count): the whole spec, the text after "scheme:", the tokenizer
# name (None for a source without tokenizers) and the word-vocabulary limits.
Loader = Callable[[str, str, str | None, int | None, int], Data]


@dataclass(frozen=True)
class SourceEntry:
    """A registered data source (the scheme of a spec "scheme:options").

    load:       load(spec, options, tokenizer, max_vocab, min_count) -> Corpus | SeriesData | ImageData.
    usage:      the spec's format, shown in errors ("markov:order=2,vocab=16,...").
    tokenizers: the tokenizer names it accepts, the first its default; () for data that takes none.
    kind:       what its data is, for the error when a tokenizer is given to a source without any.
    takes_path: its options are one path ("text:PATH"), given in a config as data.options.path; else they are
                key=value pairs, each also a data.options key.
    """

    load: Loader
    usage: str
    tokenizers: tuple[str, ...] = ()
    kind: str = "not text"
    takes_path: bool = False


SOURCES: Registry[SourceEntry] = Registry("data source")
IMAGE_KIND = "pixel levels"  # the kind of image sources (is_image_source)


def register_source(name: str, load: Loader, *, usage: str | None = None, tokenizers: tuple[str, ...] = (),
                    kind: str = "not text", takes_path: bool = False, replace: bool = False) -> SourceEntry:
    """Make `name` a data spec scheme ("name" or "name:options") that load_corpus loads with
    load(spec, options, tokenizer, max_vocab, min_count); usage (default: name) is its format in error messages,
    tokenizers those it accepts (first = default; () for none), takes_path whether its options are a path rather
    than key=value pairs. ValueError for a name already registered unless replace=True."""
    if ":" in name:
        raise ValueError(f"a data source name cannot contain ':', got {name!r}")
    entry = SourceEntry(load, usage if usage is not None else name, tuple(tokenizers), kind, takes_path)
    return SOURCES.register(name, entry, replace=replace)


class _FieldView(Mapping):
    """A read-only name -> entry.<field> view of SOURCES."""

    def __init__(self, field: str) -> None:
        self._field = field

    def __getitem__(self, name: str):
        return getattr(SOURCES[name], self._field)

    def __iter__(self) -> Iterator[str]:
        return iter(SOURCES)

    def __len__(self) -> int:
        return len(SOURCES)


SCHEMES: Mapping[str, str] = _FieldView("usage")  # scheme -> its spec format
SCHEME_TOKENIZERS: Mapping[str, tuple[str, ...]] = _FieldView("tokenizers")  # first = default; () = no tokenizer

SPLIT_FILES = {
    "wikitext103": {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"},
    "ptb": {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"},
}
ENWIK8_SIZES = (90_000_000, 5_000_000, 5_000_000)
MAX_MARKOV_STATES = 1 << 22
_LINES_PER_CHUNK = 100_000


def _schemes_line() -> str:
    return "allowed specs: " + "; ".join(SCHEMES.values())


def _ids(values: list[int] | array) -> Tensor:
    """A 1-D torch.long tensor of a list or an array('q') of ids."""
    if isinstance(values, array):
        return torch.frombuffer(values, dtype=torch.long) if len(values) else torch.empty(0, dtype=torch.long)
    return torch.tensor(values, dtype=torch.long)


def _byte_ids(data: bytes) -> Tensor:
    """The bytes of data as a 1-D torch.long tensor."""
    if not data:
        return torch.empty(0, dtype=torch.long)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


# ---------------------------------------------------------------------------------------------------- spec parsing


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError
    return number


def _nonnegative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError
    return number


def _nonnegative_float(value: str) -> float:
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError
    return number


def _image_cond(value: str) -> str:
    if value not in ("class", "none"):
        raise ValueError(value)
    return value


_RULES: dict[Callable[[str], Any], str] = {
    _positive_int: "an integer >= 1",
    _nonnegative_int: "an integer >= 0",
    _positive_float: "a finite number > 0",
    _nonnegative_float: "a finite number >= 0",
    parse_periods: "A-B (a range, 0 < A <= B) or A/B/C (distinct numbers > 0)",
    parse_cond: "one of none, period, class",
    _image_cond: "one of class, none",
}


def _parse_options(spec: str, scheme: str, text: str, fields: dict[str, tuple[Callable[[str], Any], Any]]) -> dict:
    """key=value,... -> {key: parsed value} with the defaults of `fields` ({key: (parser, default)})."""
    where = f"bad data spec {spec!r}"
    fmt = f"(format: {SCHEMES[scheme]})"
    out = {key: default for key, (_, default) in fields.items()}
    seen = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq:
            raise DataError(f"{where}: {item!r} is not key=value {fmt}")
        if key not in fields:
            raise DataError(f"{where}: unknown key {key!r}; allowed keys: {', '.join(fields)} {fmt}")
        if key in seen:
            raise DataError(f"{where}: key {key!r} is given twice {fmt}")
        parser = fields[key][0]
        try:
            out[key] = parser(value)
        except ValueError:
            raise DataError(f"{where}: {key}={value!r} must be {_RULES[parser]} {fmt}") from None
        seen.add(key)
    return out


def _existing(spec: str, scheme: str, text: str, kind: str) -> Path:
    """The path of a spec, which must exist as a file, a folder ("dir") or either ("path")."""
    what = {"file": "file", "dir": "folder", "path": "file or folder"}[kind]
    if not text:
        raise DataError(f"bad data spec {spec!r}: {scheme} needs a {what} (format: {SCHEMES[scheme]})")
    path = Path(text).expanduser()
    if not {"file": path.is_file, "dir": path.is_dir, "path": path.exists}[kind]():
        raise DataError(f"bad data spec {spec!r}: no such {what}: {path}")
    return path


def _decode_utf8(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {err.start})") from None


# --------------------------------------------------------------------------------------------------- tokenization


def _tokenize_splits(
    texts: dict[str, str], tokenizer_name: str, max_vocab: int | None, min_count: int
) -> tuple[dict[str, Tensor], Tokenizer]:
    """Ids of each split's text. A char alphabet comes from all three splits; a word vocabulary from train."""
    if tokenizer_name == "byte":
        return {name: _byte_ids(t.encode("utf-8")) for name, t in texts.items()}, ByteTokenizer()
    if tokenizer_name == "char":
        tok: Tokenizer = CharTokenizer(sorted(set().union(*(set(t) for t in texts.values()))))
    else:
        tok = WordTokenizer.from_text(texts["train"], max_size=max_vocab, min_count=min_count)
    return {name: _ids(tok.encode(t)) for name, t in texts.items()}, tok


def _tokenize_by_position(
    text: str, tokenizer_name: str, max_vocab: int | None, min_count: int
) -> tuple[dict[str, Tensor], Tokenizer]:
    """Tokenize a whole text, then split the ids 90/5/5 by position (a word vocabulary from the train part)."""
    if tokenizer_name == "byte":
        tok: Tokenizer = ByteTokenizer()
        ids = _byte_ids(text.encode("utf-8"))
    elif tokenizer_name == "char":
        tok = CharTokenizer.from_text(text)
        ids = _ids(tok.encode(text))
    else:
        words = WordTokenizer.split(text)
        n_train = split_sizes(len(words))[0]
        tok = WordTokenizer.from_counts(Counter(words[:n_train]), max_size=max_vocab, min_count=min_count)
        ids = _ids(tok.encode_words(words))
    return dict(zip(SPLITS, split_by_position(ids), strict=True)), tok


def _line_chunks(path: Path) -> Iterator[str]:
    """The text of a UTF-8 file in pieces of whole lines, so a big file is never one string."""
    try:
        with open(path, encoding="utf-8") as f:
            lines: list[str] = []
            for line in f:
                lines.append(line)
                if len(lines) == _LINES_PER_CHUNK:
                    yield "".join(lines)
                    lines = []
            yield "".join(lines)
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (invalid byte at offset {err.start} of a chunk)") from None


def _word_files(paths: dict[str, Path], max_vocab: int | None, min_count: int) -> tuple[dict[str, Tensor], Tokenizer]:
    """Word ids of split files, streamed line by line; the vocabulary comes from the train file."""
    counts: Counter[str] = Counter()
    for chunk in _line_chunks(paths["train"]):
        counts.update(WordTokenizer.split(chunk))
    tok = WordTokenizer.from_counts(counts, max_size=max_vocab, min_count=min_count)
    out = {}
    for name, path in paths.items():
        ids = array("q")
        for chunk in _line_chunks(path):
            ids.extend(tok.encode(chunk))
        out[name] = _ids(ids)
    return out, tok


# ------------------------------------------------------------------------------------------------------- sources


def _load_stdlib(spec: str, options: str, tok_name: str, max_vocab: int | None, min_count: int) -> Corpus:
    opts = _parse_options(spec, "stdlib", options, {"max_bytes": (_positive_int, None)})
    raw = read_stdlib(max_bytes=opts["max_bytes"])
    if tok_name == "byte":
        ids, tok = {name: _byte_ids(data) for name, data in raw.items()}, ByteTokenizer()
    else:
        texts = {name: data.decode("utf-8", errors="replace") for name, data in raw.items()}
        ids, tok = _tokenize_splits(texts, tok_name, max_vocab, min_count)
    total = sum(len(data) for data in raw.values())
    return _corpus(spec, ids, tok, f"Python standard library sources, {total:,} bytes split by file-path hash")


def _load_text(spec: str, options: str, tok_name: str, max_vocab: int | None, min_count: int) -> Corpus:
    path = _existing(spec, "text", options, "path")
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                   p.relative_to(path).parts)),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise DataError(f"bad data spec {spec!r}: folder {path} has no files")
    else:
        files = [path]
    texts = [_decode_utf8(f.read_bytes(), f) for f in files]
    # Files are joined with a line break where one is missing, so the last word of one never runs into the next.
    text = "".join(t if t.endswith("\n") or not t else t + "\n" for t in texts) if len(texts) > 1 else texts[0]
    ids, tok = _tokenize_by_position(text, tok_name, max_vocab, min_count)
    return _corpus(spec, ids, tok, f"{len(files)} text file(s) from {path}, split 90/5/5 by position")


def _load_split_files(scheme: str):
    def load(spec: str, options: str, tok_name: str, max_vocab: int | None, min_count: int) -> Corpus:
        folder = _existing(spec, scheme, options, "dir")
        paths = {name: folder / fname for name, fname in SPLIT_FILES[scheme].items()}
        for path in paths.values():
            if not path.is_file():
                raise DataError(f"bad data spec {spec!r}: {scheme} needs {', '.join(SPLIT_FILES[scheme].values())} "
                                f"in {folder}; missing {path.name}")
        ids, tok = _word_files(paths, max_vocab, min_count)
        return _corpus(spec, ids, tok, f"{scheme} from {folder}, vocabulary of {tok.vocab_size} words")

    return load


def _load_enwik8(spec: str, options: str, tok_name: str, max_vocab: int | None, min_count: int) -> Corpus:
    """Raw bytes: the first 90M / next 5M / next 5M bytes (the standard enwik8 split; bytes after 100M unused).

    A file shorter than 100M bytes is split in the same proportions: floor(90%), floor(5%) and the rest.
    """
    path = _existing(spec, "enwik8", options, "file")
    data = _byte_ids(path.read_bytes())
    sizes = ENWIK8_SIZES if len(data) >= sum(ENWIK8_SIZES) else split_sizes(len(data))
    bounds = torch.tensor((0, *sizes)).cumsum(0).tolist()
    ids = {name: data[bounds[i] : bounds[i + 1]] for i, name in enumerate(SPLITS)}
    return _corpus(spec, ids, ByteTokenizer(), f"enwik8 bytes from {path}, split {'/'.join(map(str, sizes))}")


def _load_markov(spec: str, options: str, tok_name: str, max_vocab: int | None, min_count: int) -> Corpus:
    fields = {
        "order": (_nonnegative_int, 2),
        "vocab": (_positive_int, 16),
        "seed": (_nonnegative_int, 0),
        "length": (_positive_int, 200_000),
        "concentration": (_positive_float, 0.5),
    }
    opts = _parse_options(spec, "markov", options, fields)
    if opts["vocab"] ** opts["order"] > MAX_MARKOV_STATES:
        raise DataError(f"bad data spec {spec!r}: vocab**order = {opts['vocab']}**{opts['order']} states is more "
                        f"than {MAX_MARKOV_STATES}")
    chain = MarkovChain.random(opts["order"], opts["vocab"], opts["seed"], opts["concentration"])
    stream = torch.from_numpy(chain.sample(opts["length"], opts["seed"]))
    ids = dict(zip(SPLITS, split_by_position(stream), strict=True))
    desc = ", ".join(f"{k}={v}" for k, v in opts.items())
    return _corpus(spec, ids, IdTokenizer(opts["vocab"]), f"Markov chain ({desc})", chain.entropy_rate())


def _load_fourier(spec: str, options: str, tok_name: str | None, max_vocab: int | None, min_count: int) -> SeriesData:
    fields = {
        "series": (_positive_int, 2000),
        "length": (_positive_int, 129),
        "terms": (_positive_int, 3),
        "periods": (parse_periods, parse_periods("8-32")),
        "noise": (_nonnegative_float, 0.05),
        "seed": (_nonnegative_int, 0),
        "cond": (parse_cond, "none"),
    }
    opts = _parse_options(spec, "fourier", options, fields)
    where, fmt = f"bad data spec {spec!r}", f"(format: {SCHEMES['fourier']})"
    if opts["cond"] == "class" and opts["periods"].is_range:
        raise DataError(f"{where}: cond=class needs a discrete period set A/B/C, not the range "
                        f"periods={opts['periods']} {fmt}")
    if opts["length"] < 2:
        raise DataError(f"{where}: length={opts['length']} must be >= 2 (an input and its target) {fmt}")
    if min(split_sizes(opts["series"])) < 1:
        raise DataError(f"{where}: series={opts['series']} leaves an empty split (sizes "
                        f"{'/'.join(map(str, split_sizes(opts['series'])))}); use series >= 20 {fmt}")
    if opts["series"] * opts["length"] > MAX_SERIES_VALUES:
        raise DataError(f"{where}: series*length = {opts['series']}*{opts['length']} values is more than "
                        f"{MAX_SERIES_VALUES}")
    return fourier_series(**opts, spec=spec)


def _load_digits(spec: str, options: str, tok_name: str | None, max_vocab: int | None, min_count: int) -> ImageData:
    opts = _parse_options(spec, "digits", options, {"seed": (_nonnegative_int, 0), "cond": (_image_cond, "class")})
    return load_digits_images(**opts, spec=spec)


def _corpus(spec: str, ids: dict[str, Tensor], tok: Tokenizer, description: str, entropy: float | None = None):
    return Corpus(ids["train"], ids["valid"], ids["test"], tok, tok.unit, entropy, spec, description)


register_source("stdlib", _load_stdlib, usage="stdlib[:max_bytes=N]", tokenizers=("byte", "char", "word"))
register_source("text", _load_text, usage="text:PATH", takes_path=True, tokenizers=("byte", "char", "word"))
register_source("wikitext103", _load_split_files("wikitext103"), usage="wikitext103:DIR", takes_path=True,
                tokenizers=("word",))
register_source("ptb", _load_split_files("ptb"), usage="ptb:DIR", takes_path=True, tokenizers=("word",))
register_source("enwik8", _load_enwik8, usage="enwik8:PATH", takes_path=True, tokenizers=("byte",))
register_source("markov", _load_markov, usage="markov:order=2,vocab=16,seed=0,length=200000[,concentration=0.5]",
                tokenizers=("id",))
register_source("fourier", _load_fourier,
                usage="fourier:series=2000,length=129,terms=3,periods=8-32,noise=0.05,seed=0,cond=none",
                kind="real-valued")
register_source("digits", _load_digits, usage="digits:seed=0,cond=class", kind=IMAGE_KIND)


def source_name(spec: str) -> str:
    """The source a data spec names: its scheme, the part before ':' ("markov" of "markov:vocab=8")."""
    return spec.strip().partition(":")[0]


def is_image_source(spec: str) -> bool:
    """Whether a data spec names a registered source of images (pixel levels, like digits)."""
    scheme = source_name(spec)
    return scheme in SOURCES and SOURCES[scheme].kind == IMAGE_KIND


def _option_text(value: Any) -> str:
    """An option value as a spec writes it (YAML booleans as true/false)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def spec_with_options(spec: str, options: Mapping[str, Any] | None) -> str:
    """The spec with `options` (a config's data.options) merged into its key=value part, options winning
    ("fourier:length=65" with {"series": 500} is "fourier:length=65,series=500"); for a source that takes a path,
    options may only hold that path. DataError with one line for options a source cannot take."""
    if not options:
        return spec
    scheme, _, text = spec.strip().partition(":")
    if scheme not in SOURCES:
        return spec  # load_corpus names the unknown scheme
    if SOURCES[scheme].takes_path:
        if set(options) != {"path"} or text:
            raise DataError(f"data source {scheme!r} takes one path, as {scheme}:PATH or data.options.path=PATH; "
                            f"got spec {spec!r} with options {dict(options)}")
        return f"{scheme}:{_option_text(options['path'])}"
    merged: dict[str, str | None] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = pair.partition("=")
        merged[key.strip()] = value if eq else None  # a malformed pair stays for the source's own error
    merged.update({str(k): _option_text(v) for k, v in options.items()})
    return f"{scheme}:" + ",".join(k if v is None else f"{k}={v}" for k, v in merged.items())


def load_corpus(
    spec: str = "stdlib", tokenizer_name: str | None = None, *, options: Mapping[str, Any] | None = None,
    max_vocab: int | None = None, min_count: int = 1
) -> Corpus | SeriesData | ImageData:
    """Load the corpus a spec names (see SCHEMES; `register_source` adds schemes), tokenized with tokenizer_name
    or the scheme's default.

    - `stdlib[:max_bytes=N]`: this interpreter's standard library .py files (no tests, IDLE or site-packages,
      none over 1 MB), split ~90/5/5 by the SHA-1 of each relative path; max_bytes caps the total (90/5/5 of it).
    - `text:PATH`: a UTF-8 file, or every non-hidden file under a folder in sorted order; 90/5/5 by position.
    - `wikitext103:DIR`, `ptb:DIR`: the standard split files; words, vocabulary from train (max_vocab, min_count).
    - `enwik8:PATH`: raw bytes, 90M/5M/5M (a smaller file: 90/5/5 of its length).
    - `markov:order=2,vocab=16,seed=0,length=200000[,concentration=0.5]`: a seeded synthetic chain with its
      exact entropy_rate (nats per token).
    - `fourier:series=2000,length=129,terms=3,periods=8-32,noise=0.05,seed=0,cond=none` (every key optional):
      real-valued random Fourier series, returned as a SeriesData (not a Corpus; no tokenizer, so
      tokenizer_name must be None), split 90/5/5 by series; periods is a range A-B or a set A/B/C, and cond is
      none, period (P / max period) or class (index in the set; needs a set). nll_bound is the noise entropy.
    - `digits:seed=0,cond=class`: scikit-learn's 8x8 digits as ImageData (64 pixel ids of 17 levels behind a
      start token, class labels as conditioning unless cond=none), shuffled with seed and split 90/5/5.

    options (a config's data.options) are merged into the spec's key=value part (see spec_with_options), so
    `load_corpus("fourier", options={"series": 500})` is `load_corpus("fourier:series=500")`.
    A bad spec raises DataError with one line naming the problem and the allowed specs.
    """
    spec = spec_with_options(spec, options)
    scheme, _, options_text = spec.strip().partition(":")
    if scheme not in SOURCES:
        raise DataError(f"unknown data spec {spec!r}; {_schemes_line()}")
    source = SOURCES[scheme]
    allowed = source.tokenizers
    if not allowed:
        if tokenizer_name is not None:
            raise DataError(f"{scheme} data is {source.kind} and takes no tokenizer; got tokenizer "
                            f"{tokenizer_name!r} (leave it unset)")
        return source.load(spec, options_text.strip(), None, max_vocab, min_count)
    tok_name = allowed[0] if tokenizer_name is None else tokenizer_name
    if tok_name not in allowed:
        raise DataError(f"tokenizer {tok_name!r} is not available for {scheme} data; allowed: {', '.join(allowed)}")
    if max_vocab is not None and max_vocab < len(WordTokenizer.specials):
        raise DataError(f"max_vocab={max_vocab} must be at least {len(WordTokenizer.specials)} (<eos> and <unk>)")
    return source.load(spec, options_text.strip(), tok_name, max_vocab, min_count)
