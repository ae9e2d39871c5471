"""Token caches, the TFDS wrapper and the source registry."""
import json
import sys

import numpy as np
import pytest

from arjax.data import SOURCES, TfdsSource, TokenCache, make_dataset, make_source, tfds_source, write_token_cache


def _random_tokens(n, length, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (n, length)), rng.integers(0, 1000, n)


@pytest.mark.parametrize("vocab, dtype", [(4096, "<u2"), (70_000, "<i4")])
def test_token_cache_round_trip(tmp_path, vocab, dtype):
    tokens, labels = _random_tokens(23, 10, vocab)
    write_token_cache(tmp_path / "cache", tokens, labels, vocab=vocab, shard_size=5)
    meta = json.loads((tmp_path / "cache" / "metadata.json").read_text())
    assert (meta["seq_len"], meta["count"], meta["vocab"], meta["token_dtype"]) == (10, 23, vocab, dtype)
    assert len(meta["shards"]) == 5
    cache = make_source("tokens", path=tmp_path / "cache")
    assert len(cache) == 23
    for i in range(23):
        record = cache[i]
        assert record["tokens"].dtype == np.int32 and record["label"].dtype == np.int32
        assert record["tokens"].tolist() == tokens[i].tolist() and record["label"] == labels[i]


def test_token_cache_round_trips_features_and_reads_caches_without_them(tmp_path):
    tokens, labels = _random_tokens(7, 5, 300)
    features = np.random.default_rng(1).normal(size=(7, 2, 2, 3)).astype(np.float32)
    write_token_cache(tmp_path / "f", tokens, labels, vocab=300, features=features, shard_size=3)
    cache = TokenCache(tmp_path / "f")
    assert cache.feature_shape == (2, 2, 3)
    for i in range(7):
        assert cache[i]["tokens"].tolist() == tokens[i].tolist() and cache[i]["label"] == labels[i]
        np.testing.assert_array_equal(cache[i]["features"], features[i])  # float32 bytes: exact
    batch = next(iter(make_dataset(cache, batch_size=7, seed=0, train=False)))
    np.testing.assert_array_equal(batch["features"], features)
    # a cache written before features existed has no feature_shape key: tokens only
    write_token_cache(tmp_path / "old", tokens, labels, vocab=300)
    meta = json.loads((tmp_path / "old" / "metadata.json").read_text())
    del meta["feature_shape"]
    (tmp_path / "old" / "metadata.json").write_text(json.dumps(meta))
    old = TokenCache(tmp_path / "old")
    assert old.feature_shape is None and sorted(old[3]) == ["label", "tokens"]
    with pytest.raises(ValueError, match="one row per example"):
        write_token_cache(tmp_path / "bad", tokens, labels, features=features[:3])


def test_token_cache_batches_through_make_dataset(tmp_path):
    tokens, labels = _random_tokens(10, 6, 512)
    cache = TokenCache(write_token_cache(tmp_path, tokens, labels))
    batches = list(make_dataset(cache, batch_size=4, seed=0, train=False))
    assert [sorted(b) for b in batches] == [["label", "tokens"]] * 3
    assert np.array_equal(np.concatenate([b["tokens"] for b in batches]), tokens)
    assert np.array_equal(np.concatenate([b["label"] for b in batches]), labels)
    train = next(iter(make_dataset(cache, batch_size=4, seed=0)))
    assert train["tokens"].shape == (4, 6) and train["tokens"].dtype == np.int32


def test_token_cache_rejects_bad_input(tmp_path):
    tokens, labels = _random_tokens(4, 3, 16)
    with pytest.raises(ValueError, match="vocab"):
        write_token_cache(tmp_path, tokens, labels, vocab=8)
    with pytest.raises(ValueError, match="labels"):
        write_token_cache(tmp_path, tokens, labels[:3])
    with pytest.raises(FileNotFoundError, match="not a complete token cache"):
        TokenCache(tmp_path / "nothing")


def test_tfds_records_become_rgb_batches():
    # A stand-in for tfds.data_source: greyscale (H, W, 1) uint8 images, int64 labels, extra features.
    records = [{"image": np.full((20, 30, 1), 10 * i, np.uint8), "label": np.int64(i), "id": str(i)}
               for i in range(4)]
    source = TfdsSource(records, "fake", "train", "image", "label", ["a", "b", "c", "d"])
    assert source[1]["label"].dtype == np.int32 and source.num_classes == 4
    batch = next(iter(make_dataset(source, image_size=16, batch_size=4, seed=0, train=False)))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["label"].tolist() == [0, 1, 2, 3]
    assert np.allclose(batch["image"][1], 10 / 127.5 - 1)


def test_tfds_source_explains_a_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        tfds_source("mnist", "train")


def test_tfds_source_explains_an_unprepared_dataset(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match=r"'mnist' is not prepared.*tfds build mnist"):
        tfds_source("mnist", "train", data_dir=str(tmp_path))


def test_registry_names_every_source_and_rejects_unknown_ones():
    assert sorted(SOURCES) == ["folder", "synthetic", "tfds", "tokens"]
    assert len(make_source("synthetic", num_examples=3, image_size=16)) == 3
    with pytest.raises(ValueError, match="folder, synthetic, tfds, tokens"):
        make_source("imagenet")
