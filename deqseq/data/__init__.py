"""Data: tokenizers, corpora (stdlib, text, WikiText-103, PTB, enwik8, synthetic Markov), stream batching,
real-valued series (random Fourier) with their batching, and small images (8x8 digits) as pixel sequences."""

from .batching import StreamBatcher
from .corpus import SPLITS, Corpus, split_by_position, split_sizes
from .digits import ImageData, load_digits_images
from .errors import DataError, UnknownSymbolError
from .markov import MarkovChain
from .protocol import SequenceData
from .series import SeriesBatcher, SeriesData
from .sources import (
    SCHEME_TOKENIZERS,
    SCHEMES,
    SOURCES,
    SourceEntry,
    is_image_source,
    load_corpus,
    register_source,
    source_name,
    spec_with_options,
)
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
    "SOURCES",
    "SPLITS",
    "TOKENIZERS",
    "ByteTokenizer",
    "CharTokenizer",
    "Corpus",
    "DataError",
    "IdTokenizer",
    "ImageData",
    "MarkovChain",
    "SeriesBatcher",
    "SeriesData",
    "SourceEntry",
    "StreamBatcher",
    "Tokenizer",
    "UnknownSymbolError",
    "WordTokenizer",
    "assign_splits",
    "is_image_source",
    "SequenceData",
    "load_corpus",
    "source_name",
    "spec_with_options",
    "load_digits_images",
    "read_stdlib",
    "register_source",
    "split_by_position",
    "split_of",
    "split_sizes",
    "stdlib_files",
    "stdlib_root",
    "tokenizer_from_state",
]
