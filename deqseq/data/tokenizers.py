"""Tokenizers: text <-> integer ids, with a plain-python state that a weights-only checkpoint can hold."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from .errors import DataError, UnknownSymbolError

EOS = "<eos>"
UNK = "<unk>"


def _as_int_list(ids: Iterable[int]) -> list[int]:
    """A list of python ints from a list, a tuple or a tensor / array (anything with .tolist())."""
    tolist = getattr(ids, "tolist", None)
    return list(tolist()) if tolist is not None else [int(i) for i in ids]


class Tokenizer(ABC):
    """Maps text to ids in [0, vocab_size) and back.

    `name` identifies the kind in a state dict; `unit` is what one id stands for ("byte", "char" or "token"),
    which is the unit of the bits-per-unit that training reports.
    """

    name: ClassVar[str]
    unit: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of a text."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids (a list or a 1-D tensor)."""

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a user's prompt: like encode, but a symbol the vocabulary lacks is an UnknownSymbolError even
        where encode would map it to a placeholder."""
        return self.encode(text)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer, as JSON-able python types (see tokenizer_from_state)."""
        return {"name": self.name, **self._state()}

    def _state(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """The 256 byte values of UTF-8: every text encodes, and decoding replaces invalid sequences with U+FFFD."""

    name = "byte"
    unit = "byte"

    @property
    def vocab_size(self) -> int:
        """Always 256."""
        return 256

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of text."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        """The UTF-8 text of the bytes; an incomplete or invalid sequence becomes U+FFFD."""
        return bytes(_as_int_list(ids)).decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """One id per character of a fixed alphabet; a character outside it raises UnknownSymbolError."""

    name = "char"
    unit = "char"

    def __init__(self, symbols: Sequence[str]):
        symbols = list(symbols)
        if any(not isinstance(s, str) or len(s) != 1 for s in symbols):
            raise DataError("a char tokenizer's symbols must be single characters")
        if len(set(symbols)) != len(symbols):
            raise DataError("a char tokenizer's symbols must be distinct")
        self.symbols = symbols
        self._index = {s: i for i, s in enumerate(symbols)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The alphabet of the characters that occur in text, sorted by code point."""
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Size of the alphabet."""
        return len(self.symbols)

    def encode(self, text: str) -> list[int]:
        """One id per character; raises UnknownSymbolError naming the first unknown character and its position."""
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in index)
            raise UnknownSymbolError(text[pos], pos, self.name, self.vocab_size) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The characters of the ids."""
        return "".join(self.symbols[i] for i in _as_int_list(ids))

    def _state(self) -> dict[str, Any]:
        return {"symbols": list(self.symbols)}


class WordTokenizer(Tokenizer):
    """Whitespace-separated words plus `<eos>` for every line break, as in WikiText and Penn Treebank.

    Words outside the vocabulary map to `<unk>`. The vocabulary always starts with `<eos>` (id 0) and `<unk>`
    (id 1), then the other words by decreasing count (ties by the word). A last line without a trailing line
    break gets no `<eos>`, so a prompt can be continued mid-line.
    """

    name = "word"
    unit = "token"
    specials = (EOS, UNK)

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[: len(self.specials)] != list(self.specials):
            raise DataError(f"a word tokenizer's vocabulary must start with {', '.join(self.specials)}")
        if len(set(words)) != len(words):
            raise DataError("a word tokenizer's vocabulary must not repeat words")
        self.words = words
        self._index = {w: i for i, w in enumerate(words)}
        self.eos_id, self.unk_id = self._index[EOS], self._index[UNK]

    @staticmethod
    def split(text: str) -> list[str]:
        """The word stream of text: the whitespace-separated words of each line, and `<eos>` per line break."""
        lines = text.split("\n")
        out: list[str] = []
        for line in lines[:-1]:
            out.extend(line.split())
            out.append(EOS)
        out.extend(lines[-1].split())
        return out

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], max_size: int | None = None, min_count: int = 1) -> WordTokenizer:
        """A vocabulary of the words counted at least min_count times, at most max_size words with the specials."""
        if max_size is not None and max_size < len(cls.specials):
            raise DataError(f"max_vocab={max_size} must be at least {len(cls.specials)} (room for <eos> and <unk>)")
        kept = sorted((w for w, c in counts.items() if c >= min_count and w not in cls.specials),
                      key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[: max_size - len(cls.specials)]
        return cls([*cls.specials, *kept])

    @classmethod
    def from_text(cls, text: str, max_size: int | None = None, min_count: int = 1) -> WordTokenizer:
        """A vocabulary built from the words of a (training) text."""
        return cls.from_counts(Counter(cls.split(text)), max_size=max_size, min_count=min_count)

    @property
    def vocab_size(self) -> int:
        """Number of words, the specials included."""
        return len(self.words)

    def encode_words(self, words: Iterable[str]) -> list[int]:
        """Ids of an already split word stream; unknown words become `<unk>`."""
        index, unk = self._index, self.unk_id
        return [index.get(w, unk) for w in words]

    def encode(self, text: str) -> list[int]:
        """Ids of the words of text, `<eos>` per line break, `<unk>` for unknown words."""
        return self.encode_words(self.split(text))

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of the words of text; an unknown word raises UnknownSymbolError (write `<unk>` to mean it)."""
        words = self.split(text)
        for pos, w in enumerate(words):
            if w not in self._index:
                raise UnknownSymbolError(w, pos, self.name, self.vocab_size, kind="word")
        return self.encode_words(words)

    def decode(self, ids: Iterable[int]) -> str:
        """Words joined by spaces, with a line break for each `<eos>`."""
        lines, line = [], []
        for i in _as_int_list(ids):
            if i == self.eos_id:
                lines.append(" ".join(line))
                line = []
            else:
                line.append(self.words[i])
        return "\n".join([*lines, " ".join(line)])

    def _state(self) -> dict[str, Any]:
        return {"words": list(self.words)}


class IdTokenizer(Tokenizer):
    """Symbols that are already ids 0..vocab_size-1 (synthetic sources); text is space-separated numbers."""

    name = "id"
    unit = "token"

    def __init__(self, vocab_size: int):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise DataError(f"an id tokenizer's vocab_size={vocab_size!r} must be a positive integer")
        self._vocab_size = vocab_size

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """The whitespace-separated integers of text; anything else or out of range raises UnknownSymbolError."""
        ids = []
        for pos, token in enumerate(text.split()):
            if not (token.isascii() and token.isdigit()) or int(token) >= self._vocab_size:
                raise UnknownSymbolError(token, pos, self.name, self._vocab_size, kind="token")
            ids.append(int(token))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The ids as space-separated numbers."""
        return " ".join(str(i) for i in _as_int_list(ids))

    def _state(self) -> dict[str, Any]:
        return {"vocab_size": self._vocab_size}


TOKENIZERS: dict[str, type[Tokenizer]] = {
    cls.name: cls for cls in (ByteTokenizer, CharTokenizer, WordTokenizer, IdTokenizer)
}


def tokenizer_from_state(state: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its state_dict(); raises DataError for an unknown or malformed state."""
    name = state.get("name") if isinstance(state, Mapping) else None
    try:
        if name == "byte":
            return ByteTokenizer()
        if name == "char":
            return CharTokenizer(state["symbols"])
        if name == "word":
            return WordTokenizer(state["words"])
        if name == "id":
            return IdTokenizer(state["vocab_size"])
    except (KeyError, TypeError) as err:
        raise DataError(f"malformed {name} tokenizer state: missing or bad field {err}") from None
    raise DataError(f"unknown tokenizer state {name!r}; allowed: {', '.join(sorted(TOKENIZERS))}")
