"""Token caches of several augmented views per image (data.cache_views): each view is the encoding of
one draw of VAR's training crop + flip, one view per image is read each epoch, every view once per K
epochs, and cache_views=1 writes exactly the cache of before."""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from arjax.data import TokenCache, make_dataset, write_token_cache
from arjax.data.token_cache import PROGRESS, encode_to_cache
from arjax.data.transforms import to_pm1, var_train_transform

REPO = Path(__file__).resolve().parents[1]


class Killed(Exception):
    """Stands for the kill of an encoding run."""


class _Images:
    """Random non-square images (8 px crops of 9 x 60 after the resize, flipped or not); `bad` ones are unreadable."""

    def __init__(self, n, bad=(), shape=(12, 80)):
        rng = np.random.default_rng(7)
        self.images = rng.integers(0, 256, (n, *shape, 3), dtype=np.uint8)
        self.bad = set(bad)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i in self.bad:
            return {"image": b"not an image", "label": np.int32(i % 3)}
        return {"image": self.images[i], "label": np.int32(i % 3)}


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    import arjax
    t = arjax.load_tokenizer(tiny_tokenizer_dir)
    return t.cfg.image_size, t.cfg.vocab_size, jax.jit(t.module.encode)


def _encode(tok, path, source, **kw):
    size, vocab, encode = tok
    return encode_to_cache(path, source, kw.pop("encode", encode), image_size=size, vocab=vocab,
                           batch_size=kw.pop("batch_size", 8), progress=kw.pop("progress", False), **kw)


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir())}


def test_views_are_different_crops_each_the_encoding_of_that_crop(tmp_path, tok, capsys):
    size, _, encode = tok
    source, seed, K = _Images(6, bad={2}), 3, 4
    cache = _encode(tok, tmp_path / "c", source, views=K, seed=seed, progress=True)
    assert "encoding tokens (4 augmented views per image)" in capsys.readouterr().err  # tqdm's bar
    assert (len(cache), cache.views) == (5, K)
    assert {k: cache.metadata[k] for k in ("count", "views", "view_seed")} == {"count": 20, "views": K, "view_seed": 3}
    readable = [s for s in range(len(source)) if s not in source.bad]
    crops = np.stack([var_train_transform(source.images[s], size, np.random.default_rng([seed, s, v]))
                      for s in readable for v in range(K)])
    want = np.asarray(encode(to_pm1(crops))).reshape(len(readable), K, -1)
    for i, s in enumerate(readable):
        views = [cache.view(i, v) for v in range(K)]
        np.testing.assert_array_equal(np.stack([r["tokens"] for r in views]), want[i])
        assert [int(r["label"]) for r in views] == [s % 3] * K
        ci = crops[i * K:(i + 1) * K]
        assert all(not np.array_equal(ci[a], ci[b]) for a in range(K) for b in range(a))  # K different crops
    assert sum(not np.array_equal(want[i, 0], want[i, v]) for i in range(5) for v in range(1, K)) >= 10
    # a rebuilt cache is the same, byte for byte
    assert _files(_encode(tok, tmp_path / "again", source, views=K, seed=seed).path) == _files(cache.path)


@pytest.mark.parametrize("augment", [True, False])
def test_one_view_writes_the_cache_of_before(tmp_path, tok, augment):
    """cache_views=1 against the former encode: make_dataset's evaluation batches, then one record per image."""
    from array_record.python.array_record_module import ArrayRecordWriter
    size, vocab, encode = tok
    source = _Images(11, bad={4})
    old = tmp_path / "old"
    old.mkdir()
    tokens, labels = [], []
    for batch in make_dataset(source, image_size=size, batch_size=8, seed=0, train=False, augment=augment):
        n = len(batch["label"])
        images = np.concatenate([batch["image"], np.zeros((8 - n, size, size, 3), np.float32)])
        tokens.append(np.asarray(encode(images))[:n])
        labels.append(batch["label"])
    tokens, labels = np.concatenate(tokens), np.concatenate(labels)
    writer = ArrayRecordWriter(str(old / "tokens-00000-of-00001.array_record"), "group_size:1")
    for t, lab in zip(tokens, labels):
        writer.write(np.int32(lab).astype("<i4").tobytes() + t.astype("<u2").tobytes())
    writer.close()
    (old / "metadata.json").write_text(json.dumps(
        {"format": "arjax.token_cache.v1", "seq_len": tokens.shape[1], "count": 10, "vocab": vocab,
         "token_dtype": "<u2", "shards": ["tokens-00000-of-00001.array_record"], "feature_shape": None}, indent=1))
    cache = _encode(tok, tmp_path / "new", source, augment=augment)
    assert _files(cache.path) == _files(old) and cache.views == 1 and len(cache) == 10


def test_each_epoch_reads_one_view_per_image_and_every_view_per_k_epochs(tmp_path):
    N, K, B = 12, 3, 4
    image, view = np.repeat(np.arange(N), K), np.tile(np.arange(K), N)
    cache = TokenCache(write_token_cache(tmp_path, np.stack([image, view], 1), image % 5, vocab=64, views=K,
                                         shard_size=7))
    assert len(cache) == N and [int(cache[i]["tokens"][1]) for i in range(N)] == [0] * N

    def reads(seed, epochs, batch=B, process_count=1, **kw):
        it = iter(make_dataset(cache, batch_size=batch, seed=seed, process_count=process_count, **kw))
        batches = [next(it) for _ in range(epochs * N // (batch * process_count))]
        assert all(np.array_equal(b["label"], b["tokens"][:, 0] % 5) for b in batches)
        return np.concatenate([b["tokens"] for b in batches]).reshape(-1, batch, 2)  # (steps, batch, 2)

    got = reads(0, 2 * K).reshape(2 * K, N, 2)  # (epoch, example, (image, view))
    assert all(sorted(e[:, 0]) == list(range(N)) for e in got)  # one view of every image per epoch
    for block in (got[:K], got[K:]):  # every view once per K epochs
        seen = {(i, v) for e in block for i, v in e}
        assert seen == {(i, v) for i in range(N) for v in range(K)}

    def order(block, i):
        return [int(v) for e in block for ii, v in e if ii == i]
    assert any(order(got[:K], i) != order(got[K:], i) for i in range(N))  # a new order each block
    assert len({tuple(order(got[:K], i)) for i in range(N)}) > 1  # and per image
    np.testing.assert_array_equal(reads(0, K).reshape(K, N, 2), got[:K])  # same seed, same views
    assert not np.array_equal(reads(1, K).reshape(K, N, 2)[..., 1], got[:K, ..., 1])

    # a resumed iterator reads what the uninterrupted one does, views included
    ds = make_dataset(cache, batch_size=B, seed=0)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = it.get_state()
    resumed = iter(ds)
    resumed.set_state(state)
    for step in range(5, 2 * K * N // B):
        np.testing.assert_array_equal(next(resumed)["tokens"], got.reshape(-1, B, 2)[step])
    # two processes read the global batches of one
    halves = [reads(0, K, batch=B // 2, process_index=p, process_count=2) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), got[:K].reshape(-1, B, 2))


def test_a_killed_encode_resumes_from_its_last_complete_shard(tmp_path, tok):
    size, vocab, encode = tok
    source, calls = _Images(13, bad={5}), []

    def dies_at_the_fourth_batch(x):
        calls.append(len(x))
        if len(calls) == 4:
            raise Killed
        return encode(x)

    kw = dict(views=2, seed=1, shard_size=6)  # shards of 3 images; batches of 4 // 2 = 2 images
    with pytest.raises(Killed):
        _encode(tok, tmp_path / "c", source, encode=dies_at_the_fourth_batch, batch_size=4, **kw)
    tmp = tmp_path / "c.tmp"
    progress = json.loads((tmp / PROGRESS).read_text())
    assert progress["parts"] == ["part-00000.array_record"] and progress["next_index"] == 3
    assert (tmp / "part-00001.array_record").exists()  # the shard being written, discarded on resume
    resumed = []
    cache = _encode(tok, tmp_path / "c", source, encode=lambda x: resumed.append(x) or encode(x), batch_size=4, **kw)
    assert len(resumed) == 5 and not tmp.exists()  # images 3..12 (one unreadable): 9 images, 5 batches
    whole = _encode(tok, tmp_path / "whole", source, batch_size=4, **kw)
    assert _files(cache.path) == _files(whole.path) and len(cache.metadata["shards"]) == 4
    # debris of other settings is not resumed: encoding restarts
    with pytest.raises(Killed):
        calls.clear()
        _encode(tok, tmp_path / "d", source, encode=dies_at_the_fourth_batch, batch_size=4, **kw)
    cache = _encode(tok, tmp_path / "d", source, batch_size=4, **{**kw, "seed": 2})
    assert cache.metadata["view_seed"] == 2
    assert _files(cache.path) == _files(_encode(tok, tmp_path / "e", source, batch_size=4, **{**kw, "seed": 2}).path)


def test_config_errors_and_the_training_source(tmp_path, tiny_tokenizer_dir):
    from arjax.config import load_config
    from arjax.data import SyntheticShapes
    from arjax.train.generator_tasks import VARTask

    def task(*extra):
        return VARTask(load_config(f"{REPO}/configs/quickstart.py:var", [
            f"tokenizer_dir={tiny_tokenizer_dir}", "model.depth=1", "model.embed_dim=32", "model.num_heads=2",
            "data.cache_tokens=True", "seed=4", *extra]))

    assert load_config(f"{REPO}/configs/quickstart.py:var").data.cache_views == 1
    source = SyntheticShapes(10, 8, seed=0)
    with pytest.raises(ValueError, match=r"data.cache_views .* >= 1.*got 0"):
        task("data.cache_views=0").prepare_source(source, tmp_path, False)
    with pytest.raises(ValueError, match=r"data.cache_views=3 needs data.augment=True"):
        task("data.cache_views=3").prepare_source(source, tmp_path, False)  # quickstart: augment=False
    assert task("data.cache_views=3", "data.cache_tokens=False").prepare_source(source, tmp_path, False) is source
    cache = task("data.cache_views=3", "data.augment=True").prepare_source(source, tmp_path, False)
    assert (cache.path, len(cache), cache.views, cache.metadata["view_seed"]) == (tmp_path / "token_cache", 10, 3, 4)
    assert task("data.cache_views=3", "data.augment=True").prepare_source(source, tmp_path, False).views == 3
    with pytest.raises(ValueError, match=r"holds 3 view\(s\) per image but 1 .*delete .*token_cache"):
        task().prepare_source(source, tmp_path, False)
    with pytest.raises(ValueError, match="views need augment=True"):
        encode_to_cache(tmp_path / "x", source, None, image_size=8, vocab=64, augment=False, views=2)
    batch = next(iter(make_dataset(cache, batch_size=4, seed=4)))
    assert batch["tokens"].shape == (4, 21) and batch["tokens"].dtype == np.int32
