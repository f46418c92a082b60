"""Tests of deqseq.data.series: the fourier source (via load_corpus), SeriesData and SeriesBatcher."""

import math

import numpy as np
import pytest
import torch

from deqseq.data import SCHEME_TOKENIZERS, SCHEMES, DataError, SeriesBatcher, SeriesData, load_corpus
from deqseq.data.series import Periods, fourier_series

FORMAT = "fourier:series=2000,length=129,terms=3,periods=8-32,noise=0.05,seed=0,cond=none"
TENSORS = ("train", "valid", "test", "clean_train", "clean_valid", "clean_test", "periods_train", "periods_valid",
           "periods_test")


@pytest.fixture(scope="module")
def default() -> SeriesData:
    return load_corpus("fourier:")


def harmonic_fit(clean: torch.Tensor, periods: torch.Tensor, harmonics: int) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coefficients (N, harmonics, 2) of sin/cos(2 pi k t / P) for each series, and the residuals."""
    y = clean[..., 0].double().numpy()
    t = np.arange(y.shape[1])
    coefs, residuals = [], []
    for row, period in zip(y, periods.numpy(), strict=True):
        angle = 2 * np.pi * np.arange(1, harmonics + 1)[:, None] * t / period
        basis = np.concatenate([np.sin(angle), np.cos(angle)]).T
        c = np.linalg.lstsq(basis, row, rcond=None)[0]
        coefs.append(np.stack([c[:harmonics], c[harmonics:]], 1))
        residuals.append(row - basis @ c)
    return np.array(coefs), np.array(residuals)


# ---------------------------------------------------------------------------------------------------- the source


def test_scheme_is_registered_with_its_format_and_no_tokenizer():
    assert SCHEMES["fourier"] == FORMAT and SCHEME_TOKENIZERS["fourier"] == ()


def test_default_spec_shapes_splits_and_metadata(default):
    assert isinstance(default, SeriesData) and default.sizes() == {"train": 1800, "valid": 100, "test": 100}
    for name, n in default.sizes().items():
        for tensor in (default.split(name), getattr(default, f"clean_{name}"), default.clean(name)):
            assert tensor.shape == (n, 129, 1) and tensor.dtype == torch.float32
        assert default.cond(name) is None and getattr(default, f"periods_{name}").shape == (n,)
    assert (default.in_dim, default.cond_dim, default.cond_kind) == (1, 0, "none")
    assert (default.unit, default.tokenizer, default.noise, default.spec) == ("dim", None, 0.05, "fourier:")
    assert "2000 series of 129 steps" in default.description
    assert load_corpus(FORMAT).nll_bound == default.nll_bound
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        default.split("dev")


def test_same_spec_is_bit_identical_and_the_seed_changes_everything(default):
    again = load_corpus(" fourier: seed = 0 ", None)
    for name in TENSORS:
        assert torch.equal(getattr(default, name), getattr(again, name))
    other = load_corpus("fourier:seed=1")
    for name in TENSORS:
        assert not torch.equal(getattr(default, name), getattr(other, name))
    # The noise is drawn last, so the clean series do not depend on the noise level.
    quiet = load_corpus("fourier:noise=0.2")
    assert torch.equal(quiet.clean_valid, default.clean_valid) and not torch.equal(quiet.valid, default.valid)


def test_splits_are_different_draws(default):
    firsts = [default.clean(name)[0, :, 0] for name in ("train", "valid", "test")]
    assert not torch.allclose(firsts[0], firsts[1]) and not torch.allclose(firsts[1], firsts[2])
    assert len(torch.unique(torch.cat([default.periods_train, default.periods_valid, default.periods_test]))) == 2000


def test_noise_has_the_requested_std(default):
    eps = torch.cat([default.split(n) - default.clean(n) for n in ("train", "valid", "test")]).double()
    assert eps.std().item() == pytest.approx(0.05, rel=0.02) and abs(eps.mean().item()) < 0.001
    big = load_corpus("fourier:series=200,noise=0.5")
    assert (big.train - big.clean_train).double().std().item() == pytest.approx(0.5, rel=0.03)


def test_nll_bound_is_the_gaussian_noise_entropy(default):
    assert default.nll_bound == pytest.approx(-1.5767937403, abs=1e-9)  # 0.5 * log(2 pi e 0.05^2)
    assert load_corpus("fourier:series=20,noise=1").nll_bound == pytest.approx(0.5 * math.log(2 * math.pi * math.e))
    silent = load_corpus("fourier:series=20,noise=0")
    assert silent.nll_bound is None and torch.equal(silent.train, silent.clean_train)


def test_clean_series_is_the_fourier_formula_with_the_stored_periods(default):
    # A fit with one harmonic too many: harmonics 1..3 explain the clean series exactly and the 4th is zero.
    coefs, residuals = harmonic_fit(default.clean_train, default.periods_train, 4)
    assert np.abs(residuals).max() < 1e-5 and np.abs(coefs[:, 3]).max() < 1e-5
    # a_k sin(w + phi) = a_k cos(phi) sin(w) + a_k sin(phi) cos(w): the two coefficients give a_k^2 and phi.
    power = (coefs[:, :3] ** 2).sum(2).mean(0)
    assert power == pytest.approx([1.0, 1 / 4, 1 / 9], rel=0.1)  # a_k ~ N(0, 1) / k
    phase = np.arctan2(coefs[:, 0, 1], coefs[:, 0, 0])
    assert abs(np.cos(phase).mean()) < 0.06 and abs(np.sin(phase).mean()) < 0.06  # phi uniform on the circle
    one = load_corpus("fourier:series=40,terms=1,periods=10-12")
    coefs, residuals = harmonic_fit(one.clean_train, one.periods_train, 2)
    assert np.abs(residuals).max() < 1e-5 and np.abs(coefs[:, 1]).max() < 1e-5


def test_integer_periods_repeat_exactly():
    data = load_corpus("fourier:series=60,length=65,periods=8/12/20,noise=0")
    for series, period in zip(data.clean_train[..., 0], data.periods_train.tolist(), strict=True):
        p = int(period)
        assert torch.allclose(series[p:], series[:-p], atol=1e-5)
        assert not torch.allclose(series[p // 2 :], series[: -(p // 2)], atol=1e-3)  # and not half of it


def test_period_draws_cover_the_range_or_the_set(default):
    periods = torch.cat([default.periods_train, default.periods_valid, default.periods_test])
    assert 8 <= periods.min() < 8.2 and 31.8 < periods.max() <= 32 and periods.mean().item() == pytest.approx(20, 0.02)
    discrete = load_corpus("fourier:periods=8/16/32.5").periods_train
    counts = [(discrete == p).sum().item() for p in (8, 16, 32.5)]
    assert sum(counts) == 1800 and all(abs(c - 600) < 75 for c in counts)


def test_cond_period_is_the_period_over_the_largest_period():
    data = load_corpus("fourier:series=100,cond=period,periods=4-40")
    assert (data.cond_kind, data.cond_dim) == ("period", 1)
    for name, n in data.sizes().items():
        cond = data.cond(name)
        assert cond.shape == (n, 1) and cond.dtype == torch.float32
        assert torch.allclose(cond[:, 0].double(), getattr(data, f"periods_{name}") / 40)
    assert 0.1 <= data.cond_train.min() and data.cond_train.max() <= 1


def test_cond_class_is_the_index_in_the_period_set():
    periods = (30, 10, 20)  # the index is into the set as written, not sorted
    data = load_corpus("fourier:series=100,cond=class,periods=30/10/20")
    assert (data.cond_kind, data.cond_dim) == ("class", 3)
    for name, n in data.sizes().items():
        cond = data.cond(name)
        assert cond.shape == (n,) and cond.dtype == torch.long
        assert getattr(data, f"periods_{name}").tolist() == [periods[i] for i in cond.tolist()]
    assert set(data.cond_train.tolist()) == {0, 1, 2}
    same = load_corpus("fourier:series=100,cond=none,periods=30/10/20")
    assert torch.equal(same.train, data.train)  # cond only labels the series, it draws nothing


def test_periods_parse_ranges_and_sets():
    assert Periods.parse("8-32") == Periods((8.0, 32.0), True) and Periods.parse("2.5e1-3e1").values == (25, 30)
    assert Periods.parse("8/16/32") == Periods((8.0, 16.0, 32.0), False) and Periods.parse("7").values == (7,)
    assert Periods.parse("5-5").max == 5 and str(Periods.parse("1e-1-.5")) == "0.1-0.5"


@pytest.mark.parametrize(
    "spec, tokenizer, message",
    [
        ("fourier:size=10", None, r"unknown key 'size'; allowed keys: series, length, terms, periods, noise, seed, "
                                  r"cond \(format: fourier:series=2000,"),
        ("fourier:series=abc", None, r"series='abc' must be an integer >= 1"),
        ("fourier:series=0", None, r"series='0' must be an integer >= 1"),
        ("fourier:terms=1.5", None, r"terms='1.5' must be an integer >= 1"),
        ("fourier:seed=-1", None, r"seed='-1' must be an integer >= 0"),
        ("fourier:noise=-0.1", None, r"noise='-0.1' must be a finite number >= 0"),
        ("fourier:noise=inf", None, r"noise='inf' must be a finite number >= 0"),
        ("fourier:noise", None, r"'noise' is not key=value"),
        ("fourier:seed=1,seed=2", None, r"key 'seed' is given twice"),
        ("fourier:periods=32-8", None, r"periods='32-8' must be A-B \(a range, 0 < A <= B\) or A/B/C"),
        ("fourier:periods=0-8", None, r"periods='0-8' must be A-B"),
        ("fourier:periods=8-", None, r"periods='8-' must be A-B"),
        ("fourier:periods=8-16-32", None, r"periods='8-16-32' must be A-B"),
        ("fourier:periods=8/8", None, r"periods='8/8' must be .* \(distinct numbers > 0\)"),
        ("fourier:periods=8//16", None, r"periods='8//16' must be A-B"),
        ("fourier:periods=a/b", None, r"periods='a/b' must be A-B"),
        ("fourier:periods=", None, r"periods='' must be A-B"),
        ("fourier:cond=label", None, r"cond='label' must be one of none, period, class"),
        ("fourier:cond=class", None, r"cond=class needs a discrete period set A/B/C, not the range periods=8-32"),
        ("fourier:series=19", None, r"series=19 leaves an empty split \(sizes 17/0/2\); use series >= 20"),
        ("fourier:length=1", None, r"length=1 must be >= 2"),
        ("fourier:series=1000000,length=1000", None, r"series\*length = 1000000\*1000 values is more than"),
        ("fourier:", "byte", r"fourier data is real-valued and takes no tokenizer; got tokenizer 'byte'"),
        ("fourier:", "id", r"takes no tokenizer"),
    ],
)
def test_bad_fourier_specs_raise_one_line(spec, tokenizer, message):
    with pytest.raises(DataError, match=message) as info:
        load_corpus(spec, tokenizer)
    assert "\n" not in str(info.value)
    if tokenizer is None:
        assert str(info.value).startswith(f"bad data spec {spec!r}: ")


def test_direct_construction_checks_empty_splits_and_cond():
    with pytest.raises(DataError, match="gives an empty valid split"):
        fourier_series(series=10)
    with pytest.raises(DataError, match="cond=class needs a discrete period set"):
        fourier_series(series=20, cond="class")
    data = fourier_series(series=20, length=9, periods="5/7", cond="class")
    assert data.train.shape == (18, 9, 1) and data.cond_dim == 2
    with pytest.raises(ValueError, match="cond_kind 'period' needs cond_train"):
        SeriesData(data.train, data.valid, data.test, data.clean_train, data.clean_valid, data.clean_test,
                   cond_kind="period", cond_dim=1)


# ------------------------------------------------------------------------------------------------------- batching


def labelled(n: int, length: int = 12) -> torch.Tensor:
    """Series whose values name them: values[i, t, 0] = 1000 i + t."""
    return (1000 * torch.arange(n)[:, None] + torch.arange(length)).float().unsqueeze(2)


def series_ids(batch: dict) -> list[int]:
    return (batch["x"][:, 0, 0] // 1000).long().tolist()


def test_batch_holds_x_and_its_next_step_targets_with_cond_rows():
    values, cond = labelled(10), torch.arange(10).float()[:, None] * 10
    batcher = SeriesBatcher(values, cond, batch_size=4, seq_len=7, seed=3)
    batch = next(iter(batcher))
    ids = series_ids(batch)
    assert batch["x"].shape == batch["t"].shape == (4, 7, 1) and batch["c"].shape == (4, 1)
    assert torch.equal(batch["x"], values[ids, :7]) and torch.equal(batch["t"], values[ids, 1:8])
    assert torch.equal(batch["t"][:, :-1], batch["x"][:, 1:]) and batch["c"][:, 0].tolist() == [10 * i for i in ids]
    assert batch["x"].is_contiguous() and batch["t"].is_contiguous()
    no_cond = SeriesBatcher(values, None, batch_size=4, seq_len=11).batch(0)
    assert set(no_cond) == {"x", "t"} and torch.equal(no_cond["t"][:, -1, 0] % 1000, torch.full((4,), 11.0))
    classes = SeriesBatcher(values, torch.arange(10) % 3, batch_size=5, seq_len=2).batch(1)
    assert classes["c"].dtype == torch.long and classes["c"].tolist() == [i % 3 for i in series_ids(classes)]


def test_each_pass_visits_every_series_once_in_a_new_order():
    batcher = SeriesBatcher(labelled(10), None, batch_size=3, seq_len=4, seed=0)
    assert len(batcher) == 3 and batcher.tokens_per_pass == 9 * 4
    stream = batcher.cycle()
    passes = [sum((series_ids(next(stream)) for _ in range(3)), []) for _ in range(4)]
    assert batcher.epoch == 4 and batcher.position == 0
    for seen in passes:
        assert len(seen) == len(set(seen)) == 9 and set(seen) <= set(range(10))  # drop_last: one series left out
    assert len({tuple(seen) for seen in passes}) == 4
    assert len(set().union(*map(set, passes))) == 10  # the dropped one changes from pass to pass
    full = SeriesBatcher(labelled(10), None, batch_size=3, seq_len=4, seed=0, drop_last=False)
    assert len(full) == 4 and sorted(sum(map(series_ids, full), [])) == list(range(10))
    assert torch.equal(full.order(0), batcher.order(0)) and not torch.equal(full.order(0), full.order(1))
    assert not torch.equal(SeriesBatcher(labelled(10), None, 3, 4, seed=1).order(0), batcher.order(0))


def test_shuffling_leaves_the_global_random_state_alone():
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    batcher = SeriesBatcher(labelled(10), None, batch_size=3, seq_len=4)
    for _ in zip(range(7), batcher.cycle(), strict=False):
        pass
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], numpy_state)


def test_resume_from_state_dict_mid_pass_gives_the_same_batches():
    values, cond = labelled(11), torch.arange(11) % 2
    first = SeriesBatcher(values, cond, batch_size=2, seq_len=5, seed=7)
    stream = first.cycle()
    for _ in range(8):  # a pass is 5 batches: this stops in the middle of the second
        next(stream)
    state = first.state_dict()
    assert state == {"position": 3, "epoch": 1, "batch_size": 2, "seq_len": 5, "num_series": 11, "seed": 7}
    expected = [next(stream) for _ in range(9)]
    resumed = SeriesBatcher(values, cond, batch_size=2, seq_len=5, seed=0)
    resumed.load_state_dict(state)  # the saved seed wins, so the shuffle is the original one
    again = resumed.cycle()
    for batch in expected:
        got = next(again)
        assert all(torch.equal(got[k], batch[k]) for k in ("x", "t", "c"))
    assert (resumed.epoch, resumed.position) == (first.epoch, first.position) == (3, 2)


def test_eval_batcher_keeps_the_last_partial_batch_in_order():
    batcher = SeriesBatcher(labelled(10), None, batch_size=4, seq_len=6, shuffle=False, drop_last=False)
    batches = list(batcher)
    assert [len(b["x"]) for b in batches] == [4, 4, 2] and sum(map(series_ids, batches), []) == list(range(10))
    assert batcher.tokens_per_pass == 10 * 6 and (batcher.epoch, batcher.position) == (1, 0)
    assert [series_ids(b) for b in batcher.iterate(start=2)] == [[8, 9]]
    small = SeriesBatcher(labelled(3), None, batch_size=8, seq_len=6, shuffle=False, drop_last=False)
    assert len(small) == 1 and series_ids(small.batch(0)) == [0, 1, 2]


def test_batcher_over_series_data_with_cond():
    data = load_corpus("fourier:series=40,length=33,periods=8/16,cond=class")
    train = SeriesBatcher(data.train, data.cond_train, batch_size=8, seq_len=32)
    batch = next(train.cycle())
    assert batch["x"].shape == (8, 32, 1) and batch["c"].shape == (8,) and batch["c"].dtype == torch.long
    rows = [int(torch.nonzero((data.train[:, :32] == x).all(1).all(1))) for x in batch["x"]]
    assert batch["c"].tolist() == data.cond_train[rows].tolist()
    valid = SeriesBatcher(data.valid, data.cond_valid, batch_size=8, seq_len=32, shuffle=False, drop_last=False)
    assert len(valid) == 1 and torch.equal(valid.batch(0)["t"], data.valid[:, 1:])


def test_batcher_errors():
    values = labelled(5, length=10)
    with pytest.raises(DataError, match=r"seq_len=10 needs series of at least 11 steps .* these have 10") as info:
        SeriesBatcher(values, None, batch_size=2, seq_len=10)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"5 series are too few for batch_size=6 with drop_last"):
        SeriesBatcher(values, None, batch_size=6, seq_len=4)
    assert len(SeriesBatcher(values, None, batch_size=6, seq_len=4, drop_last=False)) == 1
    with pytest.raises(ValueError, match="must be >= 1"):
        SeriesBatcher(values, None, batch_size=0, seq_len=4)
    with pytest.raises(ValueError, match="needs \\(N, length, in_dim\\) values"):
        SeriesBatcher(values[..., 0], None, batch_size=2, seq_len=4)
    with pytest.raises(ValueError, match="does not match 5 series"):
        SeriesBatcher(values, torch.zeros(4, 1), batch_size=2, seq_len=4)
    batcher = SeriesBatcher(values, None, batch_size=2, seq_len=4)
    with pytest.raises(ValueError, match=r"cannot resume batching saved with seq_len=5 into one with seq_len=4"):
        batcher.load_state_dict({**batcher.state_dict(), "seq_len": 5})
    with pytest.raises(ValueError, match=r"num_series=6"):
        batcher.load_state_dict({**batcher.state_dict(), "num_series": 6})
    with pytest.raises(ValueError, match=r"batch position 2 is out of range \[0, 2\)"):
        batcher.load_state_dict({**batcher.state_dict(), "position": 2})
    with pytest.raises(ValueError, match="out of range"):
        batcher.batch(-1)
