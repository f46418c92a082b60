"""Errors a user can cause through data: a bad corpus spec or a symbol the tokenizer does not know."""

from __future__ import annotations


class DataError(ValueError):
    """A corpus spec, file or option the data layer cannot use; the message is one line naming the problem."""


class UnknownSymbolError(ValueError):
    """A symbol (a character, or a token of an id tokenizer) outside the tokenizer's vocabulary.

    `symbol` is the offending symbol and `position` its index in the input (characters for a char
    tokenizer, whitespace-separated tokens for an id tokenizer).
    """

    def __init__(self, symbol: str, position: int, tokenizer: str, vocab_size: int, kind: str = "character"):
        self.symbol, self.position, self.tokenizer = symbol, position, tokenizer
        super().__init__(f"unknown {kind} {symbol!r} at position {position}: not in the {tokenizer} tokenizer's "
                         f"vocabulary of {vocab_size} symbols")
