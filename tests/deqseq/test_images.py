"""Images as pixel sequences: the bundled 8x8 digits source, its marginal baselines against an independent
count, training on it, and class-conditional samples and completions written as a PNG grid."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from deqseq.checkpoint import load_checkpoint  # noqa: E402
from deqseq.cli import generate_main, train_main  # noqa: E402
from deqseq.data import DataError, ImageData, load_corpus  # noqa: E402
from deqseq.images import sample_images  # noqa: E402

TINY = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "data.batch_size=8", "data.eval_batch_size=45",
        "run.device=cpu", "tracking.mode=disabled", "train.max_steps=20", "train.warmup_steps=2",
        "train.eval_every=20", "train.save_every=20", "solver.jac_prob=0"]


def test_digits_are_start_token_then_64_pixels_split_90_5_5():
    data = load_corpus("digits")
    assert isinstance(data, ImageData) and data.sizes() == {"train": 1617, "valid": 89, "test": 91}
    for split in ("train", "valid", "test"):
        seqs = data.split(split)
        assert seqs.shape[1] == 65 and seqs.dtype == torch.long
        assert (seqs[:, 0] == 17).all() and seqs[:, 1:].min() >= 0 and seqs[:, 1:].max() <= 16
        assert set(data.labels(split).tolist()) <= set(range(10))
        assert torch.equal(data.cond(split), data.labels(split))
    assert data.vocab_size == 18 and data.cond_dim == 10
    from sklearn.datasets import load_digits

    raw = load_digits()
    # The splits hold every image exactly once (as a multiset of (pixels, label) rows).
    ours = sorted(tuple(r) + (lab,) for s in ("train", "valid", "test")
                  for r, lab in zip(data.split(s)[:, 1:].tolist(), data.labels(s).tolist(), strict=True))
    theirs = sorted(tuple(int(v) for v in img.ravel()) + (int(lab),) for img, lab in zip(raw.images, raw.target,
                                                                                        strict=True))
    assert ours == theirs
    assert torch.equal(load_corpus("digits:seed=0").train, data.train)
    assert not torch.equal(load_corpus("digits:seed=1").train, data.train)
    plain = load_corpus("digits:cond=none")
    assert plain.cond("train") is None and plain.cond_dim == 0


def test_marginal_baselines_match_an_independent_count():
    data = load_corpus("digits")
    train = data.split("train")[:, 1:].numpy()
    test = data.split("test")[:, 1:].numpy()
    bits = []
    for pixel in range(64):
        counts = np.bincount(train[:, pixel], minlength=17) + 1.0
        p = counts / counts.sum()
        bits.extend(-np.log2(p[test[:, pixel]]))
    assert data.marginal_bits_per_dim("test") == pytest.approx(float(np.mean(bits)), abs=1e-12)
    labels_train, labels_test = data.labels("train").numpy(), data.labels("test").numpy()
    bits = []
    for pixel in range(64):
        for c in range(10):
            counts = np.bincount(train[labels_train == c, pixel], minlength=17) + 1.0
            bits.extend(-np.log2((counts / counts.sum())[test[labels_test == c, pixel]]))
    by_class = data.marginal_bits_per_dim("test", by_class=True)
    assert by_class == pytest.approx(float(np.mean(bits)), abs=1e-12)
    assert by_class < data.marginal_bits_per_dim("test") < math.log2(17)


@pytest.mark.parametrize(("spec", "message"), [
    ("digits:cond=period", "cond='period' must be one of class, none"),
    ("digits:seed=-1", "seed='-1' must be an integer >= 0"),
    ("digits:size=4", "unknown key 'size'"),
])
def test_bad_digits_specs_name_the_problem(spec, message):
    with pytest.raises(DataError, match=message):
        load_corpus(spec)
    with pytest.raises(DataError, match="pixel levels and takes no tokenizer"):
        load_corpus("digits", "byte")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    argv = ["--no-progress", "--config", "configs/digits.yaml", *TINY, f"run.out_dir={root}", "run.name=d"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        assert train_main(argv) == 0
    return root / "d", out.getvalue()


def test_training_on_digits_reports_bits_per_dim_and_the_baselines(digits_run):
    run, log = digits_run
    assert "baselines on test: independent per-pixel marginals 2.436 bits/dim, per class 2.215" in log
    test_line = [line for line in log.splitlines() if line.startswith("test:")][0]
    bits = float(test_line.split("bits_per_dim")[1].split()[0])
    assert 0 < bits < math.log2(18)
    model, _, config = load_checkpoint(run / "last.pt")
    assert model.config.vocab_size == 18 and model.config.cond_dim == 10 and config.data.seq_len == 64


def test_samples_and_completions_keep_the_given_pixels(digits_run):
    model, _, config = load_checkpoint(digits_run[0] / "last.pt")
    data = load_corpus(config.data.spec)
    result = sample_images(model, data, per_class=3, completions=4, seed=0)
    assert result.samples.shape == (10, 3, 8, 8) and result.completed.shape == (4, 8, 8)
    assert torch.equal(result.completed[:, :4], result.originals[:, :4])
    assert torch.equal(result.originals, data.pixels("test")[:4])
    assert torch.equal(result.labels, data.labels("test")[:4])
    assert math.isfinite(result.bits_per_dim) and result.bits_per_dim > 0
    again = sample_images(model, data, per_class=3, completions=4, seed=0)
    assert torch.equal(again.samples, result.samples) and torch.equal(again.completed, result.completed)


def test_generate_writes_the_grid_and_refuses_text_options(digits_run, tmp_path, capsys):
    run = digits_run[0]
    png = tmp_path / "grid.png"
    assert generate_main(["--checkpoint", str(run), "--seed", "0", "--num-samples", "2", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 samples for each of 10 classes and 8 test images completed from their top 4 rows" in (
        capsys.readouterr().out)
    assert generate_main(["--checkpoint", str(run), "--prompt", "1 2"]) == 2
    assert "--prompt does not apply to an image model" in capsys.readouterr().err


def test_an_image_source_needs_an_id_input_and_head():
    argv = ["--no-progress", "--config", "configs/digits.yaml", *TINY, "model.input=linear", "model.head=mog"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert train_main(argv) == 2
    assert "gives pixel ids" in err.getvalue()
