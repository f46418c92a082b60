"""Tests of deqseq.data: tokenizers, corpus specs (with small fixture files), Markov sources and batching."""

import json
import math
import random

import numpy as np
import pytest
import torch

import deqseq.data.markov as markov_module
import deqseq.data.sources as sources_module
from deqseq.data import (
    ByteTokenizer,
    CharTokenizer,
    DataError,
    IdTokenizer,
    MarkovChain,
    StreamBatcher,
    UnknownSymbolError,
    WordTokenizer,
    assign_splits,
    load_corpus,
    split_of,
    split_sizes,
    stdlib_files,
    tokenizer_from_state,
)

# ------------------------------------------------------------------------------------------------------ tokenizers


def test_byte_tokenizer_round_trips_non_ascii_text():
    tok = ByteTokenizer()
    text = "héllo wörld — 日本語 🙂\n"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256 == tok.vocab_size
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.decode(ids[:-2]) == text[:-2] + "\ufffd"  # a cut 4-byte emoji is replaced, not an error


def test_char_tokenizer_is_sorted_and_names_an_unknown_character():
    tok = CharTokenizer.from_text("abc cab")
    assert tok.symbols == [" ", "a", "b", "c"]
    assert tok.encode("cab a") == [3, 1, 2, 0, 1]
    assert tok.decode([3, 1, 2]) == "cab"
    with pytest.raises(UnknownSymbolError, match=r"'z' at position 2") as info:
        tok.encode("abzc")
    assert isinstance(info.value, ValueError)
    assert (info.value.symbol, info.value.position) == ("z", 2)


def test_word_tokenizer_adds_eos_per_line_and_maps_unseen_words_to_unk():
    tok = WordTokenizer.from_text("the cat sat\nthe dog\n\n")
    assert tok.words[:3] == ["<eos>", "<unk>", "the"]  # specials first, then by count
    assert WordTokenizer.split("a  b\n\nc\n") == ["a", "b", "<eos>", "<eos>", "c", "<eos>"]
    ids = tok.encode("the cow\nsat\n")
    assert ids == [tok.words.index("the"), tok.unk_id, tok.eos_id, tok.words.index("sat"), tok.eos_id]
    assert tok.decode(tok.encode("the cat\ndog sat")) == "the cat\ndog sat"
    assert tok.encode("the dog") == tok.encode("the dog\n")[:-1]  # no <eos> for an unfinished last line


def test_word_tokenizer_max_size_and_min_count():
    text = "a a a b b c\n"
    assert WordTokenizer.from_text(text, min_count=2).words == ["<eos>", "<unk>", "a", "b"]
    assert WordTokenizer.from_text(text, max_size=3).words == ["<eos>", "<unk>", "a"]


def test_id_tokenizer_encodes_numbers_and_rejects_others():
    tok = IdTokenizer(5)
    assert tok.encode(" 3 1  4\n") == [3, 1, 4] and tok.decode(torch.tensor([3, 1, 4])) == "3 1 4"
    with pytest.raises(UnknownSymbolError, match=r"'7' at position 1"):
        tok.encode("2 7")


TOKENIZER_CASES = {
    "byte": (ByteTokenizer(), "héllo\n"),
    "char": (CharTokenizer.from_text("héllo wörld\n"), "wörld héllo"),
    "word": (WordTokenizer.from_text("the cat\nsat on the mat\n"), "the mat sat on a cat\n"),
    "id": (IdTokenizer(7), "6 0 3"),
}


@pytest.mark.parametrize("name", list(TOKENIZER_CASES))
def test_tokenizer_state_round_trips_through_a_weights_only_checkpoint(name, tmp_path):
    tok, text = TOKENIZER_CASES[name]
    state = tok.state_dict()
    assert json.loads(json.dumps(state)) == state and state["name"] == name
    torch.save({"tokenizer": state, "step": 3}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"]
    rebuilt = tokenizer_from_state(loaded)
    assert type(rebuilt) is type(tok) and rebuilt.vocab_size == tok.vocab_size
    assert rebuilt.encode(text) == tok.encode(text) and rebuilt.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_tokenizer_from_a_bad_state_is_a_data_error():
    with pytest.raises(DataError, match="unknown tokenizer state 'bpe'"):
        tokenizer_from_state({"name": "bpe"})
    with pytest.raises(DataError, match="malformed char tokenizer state"):
        tokenizer_from_state({"name": "char"})


# --------------------------------------------------------------------------------------------------- text corpora


def ascii_text(n_lines: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) + "\n" for _ in range(n_lines))


def joined(corpus) -> torch.Tensor:
    return torch.cat([corpus.train, corpus.valid, corpus.test])


def test_text_file_is_split_90_5_5_by_position(tmp_path):
    text = ascii_text(60)
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(f"text:{path}")
    n = len(text.encode())
    assert tuple(corpus.sizes().values()) == split_sizes(n) == (n * 9 // 10, n // 20, n - n * 9 // 10 - n // 20)
    assert corpus.unit == "byte" and corpus.entropy_rate is None
    assert corpus.tokenizer.decode(joined(corpus)) == text
    assert all(t.dtype == torch.long and t.dim() == 1 for t in (corpus.train, corpus.valid, corpus.test))

    chars = load_corpus(f"text:{path}", "char")
    assert chars.unit == "char" and chars.tokenizer.decode(joined(chars)) == text


def test_text_word_vocabulary_comes_from_the_train_part(tmp_path):
    text = ascii_text(60) + "zebra\n"  # a word that only occurs in the test part
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    corpus = load_corpus(f"text:{path}", "word")
    tok = corpus.tokenizer
    assert corpus.unit == "token" and "zebra" not in tok.words
    assert corpus.test[-2:].tolist() == [tok.unk_id, tok.eos_id]
    assert len(joined(corpus)) == len(WordTokenizer.split(text))


def test_text_folder_reads_files_in_sorted_order_and_skips_hidden_ones(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second file " * 10 + "\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file " * 10, encoding="utf-8")  # no final line break
    (tmp_path / ".hidden").write_text("never read", encoding="utf-8")
    corpus = load_corpus(f"text:{tmp_path}")
    assert corpus.tokenizer.decode(joined(corpus)) == "first file " * 10 + "\n" + "second file " * 10 + "\n"


def write_split_files(folder, names, texts):
    folder.mkdir()
    for name, text in zip(names, texts, strict=True):
        (folder / name).write_text(text, encoding="utf-8")


def test_wikitext103_uses_the_standard_files_and_word_tokens(tmp_path):
    folder = tmp_path / "wikitext-103"
    train = " = Valkyria = \n\n The game began in 2010 . \n The game ended . \n"
    write_split_files(folder, ["wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"],
                      [train, " The game began . \n", " A novel ended in <unk> . \n"])
    corpus = load_corpus(f"wikitext103:{folder}")
    tok = corpus.tokenizer
    assert isinstance(tok, WordTokenizer) and corpus.unit == "token"
    assert (corpus.train == tok.eos_id).sum() == train.count("\n") == 4
    assert tok.decode(corpus.valid) == "The game began .\n"
    assert tok.decode(corpus.test) == "<unk> <unk> ended in <unk> .\n"  # unseen words, and <unk> itself


def test_ptb_uses_the_standard_files_and_maps_its_unk(tmp_path):
    folder = tmp_path / "ptb"
    write_split_files(folder, ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"],
                      [" no it was n't <unk> \n the <unk> was \n", " it was \n", " no way \n"])
    corpus = load_corpus(f"ptb:{folder}")
    tok = corpus.tokenizer
    assert corpus.train.tolist() == tok.encode("no it was n't <unk>\nthe <unk> was\n")
    assert (corpus.train == tok.unk_id).sum() == 2
    assert corpus.test.tolist() == [tok.words.index("no"), tok.unk_id, tok.eos_id]
    assert load_corpus(f"ptb:{folder}", max_vocab=4).tokenizer.words == ["<eos>", "<unk>", "was", "it"]


def test_enwik8_small_file_is_split_proportionally(tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))
    path = tmp_path / "enwik8"
    path.write_bytes(data)
    corpus = load_corpus(f"enwik8:{path}")
    assert corpus.sizes() == {"train": 900, "valid": 50, "test": 50} and corpus.unit == "byte"
    assert bytes(joined(corpus).to(torch.uint8).tolist()) == data


def test_enwik8_large_file_uses_fixed_sizes_and_ignores_the_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(sources_module, "ENWIK8_SIZES", (90, 5, 5))  # stands in for 90M / 5M / 5M
    data = bytes(range(150))
    (tmp_path / "enwik8").write_bytes(data)
    corpus = load_corpus(f"enwik8:{tmp_path / 'enwik8'}")
    assert corpus.sizes() == {"train": 90, "valid": 5, "test": 5}
    assert corpus.test.tolist() == list(range(95, 100))


# ---------------------------------------------------------------------------------------------------------- stdlib


def test_stdlib_split_is_stable_and_capped():
    a = load_corpus("stdlib:max_bytes=40000")
    b = load_corpus("stdlib: max_bytes = 40000")
    assert a.sizes() == {"train": 36000, "valid": 2000, "test": 2000}
    for name in ("train", "valid", "test"):
        assert torch.equal(a.split(name), b.split(name))
        assert 0 <= int(a.split(name).min()) and int(a.split(name).max()) < 256
    assert a.unit == "byte" and isinstance(a.tokenizer, ByteTokenizer)


def test_stdlib_split_depends_only_on_relative_paths():
    paths = [f"pkg{i % 7}/module_{i}.py" for i in range(2000)]
    shuffled = random.Random(1).sample(paths, len(paths))
    assert assign_splits(paths) == assign_splits(shuffled)
    # Pinned: the split is a function of the path alone (SHA-1), the same in every process and Python version.
    assert [split_of(p) for p in ("json/decoder.py", "cmd.py", "aifc.py")] == ["train", "valid", "test"]
    counts = {name: len(files) for name, files in assign_splits(paths).items()}
    assert 0.87 < counts["train"] / 2000 < 0.93 and counts["valid"] > 60 and counts["test"] > 60


def test_stdlib_files_skips_tests_packages_idle_and_big_files(tmp_path):
    for rel in ["os.py", "json/decoder.py", "test/test_os.py", "unittest/test/x.py", "lib2to3/tests/data/a.py",
                "site-packages/numpy/core.py", "idlelib/editor.py", "json/notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    (tmp_path / "huge.py").write_bytes(b"#" * 1_000_001)
    assert stdlib_files(tmp_path) == ["json/decoder.py", "os.py"]


# ---------------------------------------------------------------------------------------------------------- markov


def binary_entropy(p: float) -> float:
    """Binary entropy in nats."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_markov_entropy_rate_matches_a_hand_computation():
    chain = MarkovChain(np.array([[0.9, 0.1], [0.4, 0.6]]), order=1)
    # Stationary: pi0 * 0.1 = pi1 * 0.4 -> pi = (0.8, 0.2).
    np.testing.assert_allclose(chain.stationary(), [0.8, 0.2], atol=1e-14)
    assert chain.entropy_rate() == pytest.approx(0.8 * binary_entropy(0.1) + 0.2 * binary_entropy(0.4), abs=1e-14)


def test_markov_power_iteration_agrees_with_the_dense_solve(monkeypatch):
    chain = MarkovChain.random(order=2, vocab=6, seed=4, concentration=0.3)
    dense, h = chain.stationary(), chain.entropy_rate()
    monkeypatch.setattr(markov_module, "_DENSE_STATES", 0)
    np.testing.assert_allclose(chain.stationary(), dense, atol=1e-12)
    assert chain.entropy_rate() == pytest.approx(h, abs=1e-12)


def test_markov_states_are_oldest_symbol_first():
    # Order 2 over {0, 1}: x_t = x_{t-2} XOR x_{t-1}, deterministic, so the entropy rate is 0.
    table = np.zeros((4, 2))
    for s in range(4):
        table[s, (s >> 1) ^ (s & 1)] = 1.0
    chain = MarkovChain(table, order=2)
    x = chain.sample(50, seed=0)
    assert all(x[t] == x[t - 2] ^ x[t - 1] for t in range(2, 50))
    assert chain.entropy_rate() == 0.0 and np.all(chain.log_probs(x) == 0.0)


def test_markov_sample_nll_is_close_to_the_entropy_rate():
    chain = MarkovChain.random(order=2, vocab=8, seed=0, concentration=0.5)
    x = chain.sample(100_000, seed=1)
    assert abs(-chain.log_probs(x).mean() - chain.entropy_rate()) < 0.02


def test_markov_corpus_spec():
    spec = "markov:order=1,vocab=4,seed=3,length=2000,concentration=0.7"
    a, b = load_corpus(spec), load_corpus(spec)
    assert a.sizes() == {"train": 1800, "valid": 100, "test": 100} and a.unit == "token"
    assert torch.equal(joined(a), joined(b)) and int(joined(a).max()) < 4
    assert a.entropy_rate == pytest.approx(MarkovChain.random(1, 4, 3, 0.7).entropy_rate(), abs=1e-15)
    assert isinstance(a.tokenizer, IdTokenizer)
    assert a.tokenizer.decode(a.train[:3]) == " ".join(str(i) for i in a.train[:3].tolist())
    assert not torch.equal(joined(a), joined(load_corpus(spec.replace("seed=3", "seed=4"))))
    default = load_corpus("markov:length=1000")
    assert default.tokenizer.vocab_size == 16 and 0 < default.entropy_rate < math.log(16)


# -------------------------------------------------------------------------------------------------------- batching


def make_batcher(**kwargs) -> StreamBatcher:
    return StreamBatcher(torch.arange(103), batch_size=4, seq_len=5, **kwargs)


def test_batches_have_shapes_and_shifted_contiguous_targets():
    batcher = make_batcher()
    batches = list(batcher)
    assert len(batcher) == len(batches) == 5  # 4 rows of 25 tokens: 24 inputs, segments of 5, 5, 5, 5, 4
    assert [tuple(b["x"].shape) for b in batches] == [(4, 5)] * 4 + [(4, 4)]
    rows = torch.arange(100).view(4, 25)
    assert torch.equal(torch.cat([b["x"] for b in batches], 1), rows[:, :24])
    assert torch.equal(torch.cat([b["t"] for b in batches], 1), rows[:, 1:])
    for prev, nxt in zip(batches, batches[1:], strict=False):
        assert torch.equal(prev["t"][:, -1], nxt["x"][:, 0])  # each segment continues the previous one
    assert batcher.tokens_per_pass == 96 and batcher.position == 0 and batcher.epoch == 1


def test_batcher_resumes_from_a_state_dict(tmp_path):
    first = make_batcher()
    it = iter(first)
    next(it), next(it)
    torch.save({"batcher": first.state_dict()}, tmp_path / "state.pt")
    expected = list(it)

    resumed = make_batcher()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True)["batcher"])
    assert resumed.position == 2
    got = list(resumed)
    assert len(got) == len(expected) == 3
    assert all(torch.equal(g["x"], e["x"]) and torch.equal(g["t"], e["t"]) for g, e in zip(got, expected, strict=True))

    assert torch.equal(next(iter(make_batcher(start=3)))["x"], first.segment(3)["x"])
    assert torch.equal(next(make_batcher().iterate(start=4))["t"], first.segment(4)["t"])
    with pytest.raises(ValueError, match="seq_len=5"):
        StreamBatcher(torch.arange(103), 4, 6).load_state_dict(first.state_dict())


def test_batcher_cycle_wraps_and_counts_epochs():
    batcher = make_batcher()
    cycle = batcher.cycle()
    seen = [next(cycle) for _ in range(len(batcher) + 2)]
    assert batcher.epoch == 1 and batcher.position == 2
    assert torch.equal(seen[len(batcher)]["x"], seen[0]["x"])
    state = batcher.state_dict()
    again = make_batcher()
    again.load_state_dict(state)
    assert torch.equal(next(again.cycle())["x"], next(cycle)["x"]) and again.epoch == 1


def test_batcher_rejects_a_stream_too_short_for_the_batch():
    with pytest.raises(DataError, match="too short for batch_size=8"):
        StreamBatcher(torch.arange(10), batch_size=8, seq_len=4)


# ------------------------------------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    ("spec", "tokenizer", "message"),
    [
        ("nope:x", None, r"unknown data spec 'nope:x'; allowed specs: stdlib.*markov:order="),
        ("markov:order=two", None, r"order='two' must be an integer >= 0 \(format: markov:"),
        ("markov:order=1,colour=3", None, r"unknown key 'colour'; allowed keys: order, vocab, seed, length"),
        ("markov:order", None, r"'order' is not key=value"),
        ("markov:concentration=-1", None, r"concentration='-1' must be a finite number > 0"),
        ("markov:seed=1,seed=2", None, r"key 'seed' is given twice"),
        ("markov:order=9,vocab=16", None, r"vocab\*\*order"),
        ("markov:length=10", None, r"empty valid split"),
        ("stdlib:max_bytes=0", None, r"max_bytes='0' must be an integer >= 1"),
        ("text:/no/such/place", None, r"no such file or folder: /no/such/place"),
        ("ptb:", None, r"ptb needs a folder \(format: ptb:DIR\)"),
        ("ptb:.", "char", r"tokenizer 'char' is not available for ptb data; allowed: word"),
        ("markov:", "byte", r"allowed: id"),
    ],
)
def test_bad_specs_raise_one_line_data_errors(spec, tokenizer, message):
    with pytest.raises(DataError, match=message) as info:
        load_corpus(spec, tokenizer)
    assert "\n" not in str(info.value)


def test_missing_split_file_and_non_utf8_text_are_data_errors(tmp_path):
    write_split_files(tmp_path / "ptb", ["ptb.train.txt", "ptb.valid.txt"], ["a\n", "a\n"])
    with pytest.raises(DataError, match="missing ptb.test.txt"):
        load_corpus(f"ptb:{tmp_path / 'ptb'}")
    with pytest.raises(DataError, match="no such file"):
        load_corpus(f"enwik8:{tmp_path}")  # a folder, not a file
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1") * 10)
    with pytest.raises(DataError, match="not UTF-8 text"):
        load_corpus(f"text:{tmp_path / 'latin1.txt'}")


# --------------------------------------------------------------------------------------------- the data protocol

PROTOCOL_CASES = [  # spec, (type, reads, vocab_size, in_dim, cond_dim, stream, unit, elements, baselines)
    ("markov:order=1,vocab=8,seed=0,length=3000",
     ("Corpus", "ids", 8, None, 0, True, "token", "token ids", {"data_entropy_rate"})),
    ("fourier:series=40,length=9,terms=1,periods=4/6,noise=0.05,seed=0,cond=class",
     ("SeriesData", "values", None, 1, 2, False, "dim", "real values", {"data_nll_bound"})),
    ("digits:seed=0,cond=class",
     ("ImageData", "ids", 18, None, 10, False, "dim", "pixel ids",
      {"baseline_marginal_bits_per_dim", "baseline_class_marginal_bits_per_dim"})),
]


@pytest.mark.parametrize(("spec", "expected"), PROTOCOL_CASES, ids=["corpus", "series", "images"])
def test_every_data_class_answers_the_sequence_data_protocol(spec, expected):
    from deqseq.data.batching import ResumableBatches
    from deqseq.data.protocol import SequenceData

    if spec.startswith("digits"):
        pytest.importorskip("sklearn")
    data = load_corpus(spec)
    assert isinstance(data, SequenceData)
    answers = (type(data).__name__, data.reads, data.vocab_size, data.in_dim, data.cond_dim, data.stream, data.unit,
               data.elements, set(data.baselines()))
    assert answers == expected
    assert all(math.isfinite(v) for v in data.baselines().values())
    assert data.amount("train").split()[0].replace(",", "") == str(data.sizes()["train"])
    for split in ("train", "valid", "test"):
        batches = data.batches(split, 2, 4)
        assert isinstance(batches, ResumableBatches) and batches.position == 0
        first = next(iter(batches))
        assert first["x"].shape[:2] == first["t"].shape[:2] == (2, 4) and ("c" in first) == (data.cond_dim > 0)
        assert (first["x"].dtype.is_floating_point, first["x"].dim()) == (
            (True, 3) if data.reads == "values" else (False, 2))


@pytest.mark.parametrize(("spec", "expected"), PROTOCOL_CASES[1:], ids=["series", "images"])
def test_independent_sequences_are_scored_in_order_and_trained_on_shuffled(spec, expected):
    if spec.startswith("digits"):
        pytest.importorskip("sklearn")
    data = load_corpus(spec)
    valid = data.split("valid")
    scored = list(data.batches("valid", 3, 4))
    assert torch.equal(torch.cat([b["x"] for b in scored]), valid[:, :4])  # every sequence once, in order
    assert torch.equal(torch.cat([b["c"] for b in scored]), data.cond("valid"))
    training = data.batches("train", 5, 4, training=True, seed=5)
    rows = torch.cat([b["x"] for b in training])
    assert data.sizes()["train"] % 5 and len(rows) == data.sizes()["train"] // 5 * 5  # the incomplete batch dropped
    assert not torch.equal(rows, data.split("train")[: len(rows), :4])  # reshuffled
    again = data.batches("train", 5, 4, training=True, seed=5)
    assert torch.equal(torch.cat([b["x"] for b in again]), rows)  # from the seed alone
    assert data.notes() == ([] if data.reads == "values" else [
        "baselines on test: independent per-pixel marginals 2.436 bits/dim, per class 2.215"])


def test_a_corpus_is_one_stream_cut_the_same_way_for_training_and_scoring():
    data = load_corpus("markov:order=1,vocab=8,seed=0,length=3000")
    for training in (False, True):
        batches = data.batches("valid", 2, 8, training=training, seed=3)
        assert isinstance(batches, StreamBatcher)
        assert batches.state_dict() == StreamBatcher(data.valid, 2, 8).state_dict()
    assert data.amount("train") == "2,700 tokens" and data.notes() == []


def test_an_object_missing_a_protocol_member_is_not_sequence_data():
    from deqseq.data.protocol import SequenceData

    class NoBatches:
        spec, description, unit, elements, tokenizer, reads = "x", "", "token", "token ids", None, "ids"
        vocab_size, in_dim, cond_dim, cond_kind, stream = 4, None, 0, "none", True

        def split(self, name): ...
        def sizes(self): ...
        def amount(self, split): ...
        def baselines(self): ...
        def notes(self): ...

    assert not isinstance(NoBatches(), SequenceData)
    NoBatches.batches = lambda self, split, batch_size, seq_len, training=False, seed=0: None
    assert isinstance(NoBatches(), SequenceData)
