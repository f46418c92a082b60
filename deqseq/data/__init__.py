"""Data: tokenizers, corpora (stdlib, text, WikiText-103, PTB, enwik8, synthetic Markov), stream batching, and
real-valued series (random Fourier) with their batching."""

from .batching import StreamBatcher
from .corpus import SPLITS, Corpus, split_by_position, split_sizes
from .errors import DataError, UnknownSymbolError
from .markov import MarkovChain
from .series import SeriesBatcher, SeriesData
from .sources import SCHEME_TOKENIZERS, SCHEMES, load_corpus
from .stdlib import assign_splits, read_stdlib, split_of, stdlib_files, stdlib_root
from .tokenizers import (
    TOKENIZERS,
    ByteTokenizer,
    CharTokenizer,
    IdTokenizer,
    Tokenizer,
    WordTokenizer,
    tokenizer_from_state,
)

__all__ = [
    "SCHEMES",
    "SCHEME_TOKENIZERS",
    "SPLITS",
    "TOKENIZERS",
    "ByteTokenizer",
    "CharTokenizer",
    "Corpus",
    "DataError",
    "IdTokenizer",
    "MarkovChain",
    "SeriesBatcher",
    "SeriesData",
    "StreamBatcher",
    "Tokenizer",
    "UnknownSymbolError",
    "WordTokenizer",
    "assign_splits",
    "load_corpus",
    "read_stdlib",
    "split_by_position",
    "split_of",
    "split_sizes",
    "stdlib_files",
    "stdlib_root",
    "tokenizer_from_state",
]
