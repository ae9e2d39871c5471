"""Pre-tokenized datasets: encode the images with the tokenizer once, then train the AR model on tokens.

On disk, a cache is a directory:
  metadata.json                       {"format", "seq_len", "count", "vocab", "token_dtype", "shards",
                                       "feature_shape"} (+ "views", "view_seed" with several views)
  tokens-00000-of-0000N.array_record  one record per example (per view of an example)

Record layout (fixed, little-endian, no framing): label as int32 (4 bytes), then seq_len tokens as
`token_dtype` ("<u2" when every token fits in 16 bits, else "<i4"), then, when feature_shape is not
null, the encoder's continuous features (the quantiser's input) as float32 of that shape: VAR's
self-correction re-quantises them with errors injected (arjax.nn.tokenizers.msvq). A fixed layout
decodes with one np.frombuffer, needs no pickle, and any language can read it. Shards are written
with group_size:1 so that a random read decompresses one record only.

Augmented views (`views` = K > 1, the config's data.cache_views). The official VAR recipe trains on a
fresh random crop and flip of every image each epoch (arjax.data.transforms.var_train_transform); one
encoding per image gives that up. A K-view cache keeps it as LlamaGen's ten-crop code cache does:
view v of the source's image s is var_train_transform under np.random.default_rng([view_seed, s, v])
(view_seed: the run's seed), so a rebuilt cache is identical, byte for byte. Each image is decoded
and resized once and cropped K times (at 256 px: ~15 ms of decode + LANCZOS, then 0.3 ms per view).

  Layout: K consecutive records per image, record i K + v = view v of the cache's image i (image i is
  the i-th readable image of the source); "count" counts records, len(TokenCache) images. One record
  per view rather than one record holding all K: training reads a single view per image per step, and
  a random read then decompresses that view only (1.4 KB for VAR's 680 tokens; + 32 KB of features
  with self-correction) instead of K of them; each record also keeps the one-view layout above.
  Shards hold whole images (a multiple of K records). ImageNet at 256 px with VAR's 680 tokens: 1364
  bytes a record, 1.75 GB a view (17.5 GB for K = 10); features add 32 KB a record (43.7 GB a view).

  Selection: in epoch e training reads view epoch_view(i, e, seed, K) of image i. Epochs [b K, (b + 1) K)
  visit the K views in the order of a random permutation drawn from (seed, i, b), so every view is
  used once per K epochs, in an order that differs between images and between blocks of K epochs. The
  epoch is a function of the stream position (arjax.data.pipeline), so a resumed run, whose iterator
  state is that position, reads the same views as an uninterrupted one.

K = 1 (the default) encodes each image once with the evaluation preprocessing (no metadata "views":
caches from before views existed stay valid and are written byte for byte as before).

encode_to_cache writes into <path>.tmp, records its progress after each complete shard and renames
the directory to <path> when done: a killed encode resumes from its last complete shard (at most one
shard, 100k records, is encoded again); debris it cannot resume from is deleted and encoding restarts.
"""
from __future__ import annotations

import bisect
import itertools
import json
import operator
import os
import shutil
import threading
from pathlib import Path

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

FORMAT = "arjax.token_cache.v1"
METADATA = "metadata.json"
PROGRESS = "progress.json"  # in <path>.tmp while encoding
_LABEL_BYTES = 4
_SELECT = 0x76696577  # separates the per-epoch view choice from the crops' random streams


def _token_dtype(max_token: int) -> np.dtype:
    return np.dtype("<u2") if max_token < 2 ** 16 else np.dtype("<i4")


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    """The random stream of view `view` of the source's image `index` (draws: flip, top, left)."""
    return np.random.default_rng([int(seed), int(index), int(view)])


def epoch_view(index: int, epoch: int, seed: int, views: int) -> int:
    """The view of image `index` that training reads in `epoch`: every view once per `views` epochs."""
    if views == 1:
        return 0
    block, k = divmod(int(epoch), views)
    return int(np.random.default_rng([int(seed), int(index), block, _SELECT]).permutation(views)[k])


def _record(label, tokens: np.ndarray, dtype: np.dtype, features: np.ndarray | None = None) -> bytes:
    record = np.int32(label).astype("<i4").tobytes() + tokens.astype(dtype).tobytes()
    return record if features is None else record + np.asarray(features, "<f4").tobytes()


class _ShardWriter:
    """Appends records to part-NNNNN.array_record files of `per_shard` records each; `finish` names them
    tokens-NNNNN-of-MMMMM and writes metadata.json (last: a directory without it is incomplete)."""

    def __init__(self, directory: Path, per_shard: int, parts: list[str] | None = None):
        self.directory, self.per_shard, self.parts = directory, per_shard, list(parts or [])
        self._writer, self._in_shard = None, 0

    def write(self, record: bytes) -> bool:
        """Append one record; True when it completed a shard."""
        if self._writer is None:
            self._writer = ArrayRecordWriter(str(self.directory / f"part-{len(self.parts):05d}.array_record"),
                                             "group_size:1")
        self._writer.write(record)
        self._in_shard += 1
        if self._in_shard == self.per_shard:
            self.close_shard()
            return True
        return False

    def close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.parts.append(f"part-{len(self.parts):05d}.array_record")
            self._writer, self._in_shard = None, 0

    def finish(self, metadata: dict) -> None:
        self.close_shard()
        n = max(1, len(self.parts))
        if not self.parts:  # no records: one empty shard, as before
            ArrayRecordWriter(str(self.directory / "part-00000.array_record"), "group_size:1").close()
            self.parts.append("part-00000.array_record")
        shards = [f"tokens-{k:05d}-of-{n:05d}.array_record" for k in range(n)]
        for part, shard in zip(self.parts, shards):
            os.replace(self.directory / part, self.directory / shard)
        (self.directory / METADATA).write_text(json.dumps({**metadata, "shards": shards}, indent=1))


def _metadata(seq_len: int, count: int, vocab: int | None, dtype: np.dtype, feature_shape, views: int,
              view_seed: int | None) -> dict:
    meta = {"format": FORMAT, "seq_len": int(seq_len), "count": int(count),
            "vocab": None if vocab is None else int(vocab), "token_dtype": dtype.str, "shards": None,
            "feature_shape": None if feature_shape is None else [int(d) for d in feature_shape]}
    if views > 1:
        meta.update(views=int(views), view_seed=view_seed)
    return meta


def write_token_cache(path: str | os.PathLike, tokens: np.ndarray, labels: np.ndarray, *,
                      vocab: int | None = None, shard_size: int = 100_000,
                      features: np.ndarray | None = None, views: int = 1) -> Path:
    """Write tokens (N, L) ints in [0, vocab), labels (N,) and optionally features (N, ...) floats
    as an ArrayRecord token cache at `path`. views=K: the rows are K views per image, row i K + v
    being view v of image i (shards then hold shard_size // K whole images)."""
    tokens, labels = np.asarray(tokens), np.asarray(labels)
    if features is not None:
        features = np.asarray(features, "<f4")
        if features.shape[:1] != tokens.shape[:1]:
            raise ValueError(f"features must have one row per example ({tokens.shape[0]}); got {features.shape}")
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be an integer array (N, L); got {tokens.dtype} {tokens.shape}")
    if labels.shape != (tokens.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({tokens.shape[0]},); got {labels.dtype} {labels.shape}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1; got {shard_size}")
    if views < 1 or tokens.shape[0] % views:
        raise ValueError(f"views must be >= 1 and divide the {tokens.shape[0]} rows; got {views}")
    if tokens.size and tokens.min() < 0:
        raise ValueError(f"tokens must be >= 0; got min {tokens.min()}")
    max_token = int(tokens.max()) if tokens.size else 0
    if vocab is not None and max_token >= vocab:
        raise ValueError(f"tokens must be < vocab={vocab}; got max {max_token}")
    dtype = _token_dtype(vocab - 1 if vocab is not None else max_token)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(path, max(1, shard_size // views) * views)
    for i in range(tokens.shape[0]):
        writer.write(_record(labels[i], tokens[i], dtype, None if features is None else features[i]))
    writer.finish(_metadata(tokens.shape[1], tokens.shape[0], vocab, dtype,
                            None if features is None else features.shape[1:], views, None))
    return path


class _Records:
    """Random access to the records of ArrayRecord shards, thread-safe; pickles without its open readers.

    A record is read as the range [i, i + 1): in a 100k-record shard that costs ~15 us, where the list
    read of grain's ArrayRecordDataSource (reader.read([i])) costs ~0.6 ms, growing with the shard's
    record count (array_record 0.8.6; 16 threads on 2 cores: 48k against 1.5k reads/s)."""

    def __init__(self, files: list[str]):
        self.files = list(files)
        self._readers = [self._open(f) for f in self.files]
        self._ends = list(itertools.accumulate(r.num_records() for r in self._readers))
        self._lock = threading.Lock()

    @staticmethod
    def _open(file: str):
        return ArrayRecordReader(file, "readahead_buffer_size:0", file_reader_buffer_size=32768)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index) -> bytes:
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        shard = bisect.bisect_right(self._ends, index)
        reader = self._readers[shard]
        if reader is None:
            with self._lock:
                if self._readers[shard] is None:
                    self._readers[shard] = self._open(self.files[shard])
                reader = self._readers[shard]
        position = index - (self._ends[shard - 1] if shard else 0)
        return reader.read(position, position + 1)[0]

    def __getstate__(self) -> dict:
        return {"files": self.files, "_ends": self._ends}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _readers=[None] * len(state["files"]), _lock=threading.Lock())


class TokenCache:
    """grain RandomAccessDataSource over a token cache: record i is {"tokens": int32 (L,), "label": int32},
    plus "features": float32 (feature_shape) when the cache holds them. With several views per image,
    len() counts images, cache[i] is image i's first view, cache.view(i, v) any view and
    cache.epoch_record(i, epoch, seed) the one training reads in that epoch (arjax.data.pipeline)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / METADATA
        if not meta_file.is_file():
            raise FileNotFoundError(f"{meta_file} not found: {self.path} is not a complete token cache "
                                    "(write one with arjax.data.token_cache.write_token_cache)")
        self.metadata = json.loads(meta_file.read_text())
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{meta_file} has format {self.metadata.get('format')!r}; expected {FORMAT!r}")
        self.seq_len = self.metadata["seq_len"]
        self.vocab = self.metadata["vocab"]
        self.views = int(self.metadata.get("views", 1))  # absent: one (un-augmented) encoding per image
        self._token_dtype = np.dtype(self.metadata["token_dtype"])
        shape = self.metadata.get("feature_shape")  # absent in caches written before features existed
        self.feature_shape = None if shape is None else tuple(shape)
        self._records = _Records([str(self.path / s) for s in self.metadata["shards"]])
        if len(self._records) != self.metadata["count"]:
            raise ValueError(f"token cache {self.path} holds {len(self._records)} records; "
                             f"metadata.json says {self.metadata['count']}")
        if self.views < 1 or len(self._records) % self.views:
            raise ValueError(f"token cache {self.path}: {len(self._records)} records are not {self.views} views "
                             f"per image")

    def __len__(self) -> int:
        return len(self._records) // self.views

    def __repr__(self) -> str:
        views = f" in {self.views} views each" if self.views > 1 else ""
        return f"TokenCache({str(self.path)!r}: {len(self)} x {self.seq_len} tokens{views}, vocab {self.vocab})"

    def __getitem__(self, index: int) -> dict:
        return self._decode(self._records[index]) if self.views == 1 else self.view(index, 0)

    def view(self, index: int, view: int) -> dict:
        """View `view` of image `index`."""
        if not (0 <= index < len(self) and 0 <= view < self.views):
            raise IndexError(f"image {index}, view {view} out of range for {len(self)} images x {self.views} views")
        return self._decode(self._records[int(index) * self.views + int(view)])

    def epoch_record(self, index: int, epoch: int, seed: int) -> dict:
        """The record of image `index` that training with `seed` reads in `epoch` (see epoch_view)."""
        return self[index] if self.views == 1 else self.view(index, epoch_view(index, epoch, seed, self.views))

    def _decode(self, raw: bytes) -> dict:
        label = np.frombuffer(raw, "<i4", count=1)[0]
        tokens = np.frombuffer(raw, self._token_dtype, count=self.seq_len, offset=_LABEL_BYTES)
        record = {"tokens": tokens.astype(np.int32), "label": np.int32(label)}
        if self.feature_shape is not None:
            offset = _LABEL_BYTES + self.seq_len * self._token_dtype.itemsize
            record["features"] = np.frombuffer(raw, "<f4", offset=offset).reshape(self.feature_shape)
        return record


class _EncoderInput:
    """Source index -> {"image": uint8 (K, S, S, 3), "label", "index"}, or None when unreadable. One view:
    the evaluation preprocessing; K views: K draws of the training augmentation, decoding and resizing once."""

    def __init__(self, source, image_size: int, augment: bool, views: int, seed: int):
        self.source, self.size, self.augment, self.views, self.seed = source, image_size, augment, views, seed

    def __call__(self, index: int) -> dict | None:
        from arjax.data.decode import decode_image
        from arjax.data.transforms import (VAR_RESIZE_RATIO, fit_transform, resize_shorter, var_eval_transform,
                                           var_train_transform)
        record = self.source[index]
        image = decode_image(record)
        if image is None:
            return None
        if self.views == 1:
            image = (var_eval_transform if self.augment else fit_transform)(image, self.size)[None]
        else:  # var_train_transform leaves the shorter side alone once it is round(1.125 S): same crops
            image = resize_shorter(image, round(self.size * VAR_RESIZE_RATIO))
            image = np.stack([var_train_transform(image, self.size, view_rng(self.seed, index, v))
                              for v in range(self.views)])
        return {"image": image, "label": np.int32(record["label"]), "index": np.int64(index)}


def _load_progress(tmp: Path, settings: dict) -> dict | None:
    """The progress of an interrupted encode with these settings in `tmp`, its partial shard deleted."""
    try:
        state = json.loads((tmp / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    if state.get("settings") != settings or not all((tmp / p).is_file() for p in state["parts"]):
        return None
    for entry in tmp.iterdir():  # the shard being written when the encode was killed
        if entry.name not in (*state["parts"], PROGRESS):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return state


def _save_progress(tmp: Path, state: dict) -> None:
    (tmp / (PROGRESS + ".new")).write_text(json.dumps(state, indent=1))
    os.replace(tmp / (PROGRESS + ".new"), tmp / PROGRESS)


def encode_to_cache(path: str | os.PathLike, source, encode, *, image_size: int, vocab: int,
                    batch_size: int = 64, augment: bool = True, progress: bool = True,
                    with_features: bool = False, views: int = 1, seed: int = 0, shard_size: int = 100_000,
                    read_options: grain.ReadOptions | None = None) -> TokenCache:
    """Encode the images of `source` with `encode` ((B, S, S, 3) in [-1, 1] -> (B, L) ints, or
    with_features=True: -> ((B, L) ints, (B, ...) features)) and return the cache at `path`; a
    complete cache already there is reused (it must hold `views` views, and features if with_features).

    views=1: each image once with the evaluation preprocessing (VAR's resize + centre crop, or just
    fitting to S with augment=False; never a random crop or flip): the cache trades augmentation for speed.
    views=K > 1 (needs augment): K random crops + flips of VAR's training transform per image, view v of
    source image s drawn from view_rng(seed, s, v). Unreadable images are left out (logged by decode).

    Streams shards into <path>.tmp, resumable after a kill (module docstring); batch_size counts encoder
    inputs (batch_size // K images of K views each)."""
    from tqdm.auto import tqdm

    from arjax.data.transforms import to_pm1
    if views < 1:
        raise ValueError(f"views is the number of augmented encodings per image, >= 1; got {views}")
    if views > 1 and not augment:
        raise ValueError(f"{views} views need augment=True: without augmentation every view of an image would be "
                         f"the same encoding")
    path = Path(path)
    if (path / METADATA).is_file():
        cache = TokenCache(path)
        if cache.views != views:
            raise ValueError(f"token cache {path} holds {cache.views} view(s) per image but {views} were asked "
                             f"for (data.cache_views); delete {path} to encode again with {views}, or set "
                             f"data.cache_views={cache.views} to train from it")
        if with_features and cache.feature_shape is None:
            raise ValueError(f"token cache {path} holds no encoder features, which this run needs "
                             f"(VAR's loss.self_correction); delete {path} to encode again")
        return cache
    if len(source) == 0:
        raise ValueError(f"data source {source!r} is empty")

    per_image = max(1, batch_size // views)
    settings = {"views": views, "view_seed": seed if views > 1 else None, "augment": bool(augment),
                "image_size": int(image_size), "vocab": int(vocab), "features": bool(with_features),
                "records_per_shard": max(1, shard_size // views) * views,
                "source": f"{type(source).__name__} of {len(source)}"}
    tmp = path.with_name(path.name + ".tmp")
    state = _load_progress(tmp, settings) if tmp.is_dir() else None
    if state is None:  # nothing to resume (or debris of other settings): start afresh
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        state = {"settings": settings, "parts": [], "count": 0, "next_index": 0, "seq_len": None,
                 "feature_shape": None}
        _save_progress(tmp, state)
    dtype = _token_dtype(vocab - 1)
    writer = _ShardWriter(tmp, settings["records_per_shard"], state["parts"])
    count = state["count"]

    def write(out, labels, indices):
        nonlocal count
        tokens, feats = (out if with_features else (out, None))
        n = len(labels) * views
        tokens = np.asarray(tokens)[:n]
        feats = None if feats is None else np.asarray(feats, "<f4")[:n]
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
            raise ValueError(f"the encoder returned tokens outside [0, {vocab}): {tokens.min()}..{tokens.max()}")
        state["seq_len"] = int(tokens.shape[1])
        state["feature_shape"] = None if feats is None else list(feats.shape[1:])
        for r in range(n):
            count += 1
            if writer.write(_record(labels[r // views], tokens[r], dtype, None if feats is None else feats[r])):
                state.update(parts=writer.parts, count=count, next_index=int(indices[r // views]) + 1)
                _save_progress(tmp, state)  # shards hold whole images: resume after this one

    start = state["next_index"]
    options = read_options or grain.ReadOptions(prefetch_buffer_size=max(2 * per_image, 500 // views))
    batches = (grain.MapDataset.range(start, len(source))
               .map(_EncoderInput(source, image_size, augment, views, seed))
               .to_iter_dataset(options)  # drops the Nones of unreadable images
               .batch(per_image))
    desc = "encoding tokens" if views == 1 else f"encoding tokens ({views} augmented views per image)"
    pending = None
    with tqdm(total=len(source), initial=start, desc=desc, unit="img", disable=not progress) as bar:
        for batch in batches:
            images = batch["image"].reshape(-1, *batch["image"].shape[2:])
            if len(images) < per_image * views:  # pad the last batch: one compiled shape
                images = np.concatenate([images, np.zeros((per_image * views - len(images), *images.shape[1:]),
                                                          images.dtype)])
            out = encode(to_pm1(images))  # dispatched; the previous batch is written while it runs
            if pending is not None:
                write(*pending)
                bar.update(int(pending[2][-1]) + 1 - bar.n)  # unreadable images count as done
            pending = (out, batch["label"], batch["index"])
        if pending is not None:
            write(*pending)
        bar.update(len(source) - bar.n)
    if count == 0:
        raise ValueError(f"no readable image in {source!r}: nothing to encode")
    writer.finish(_metadata(state["seq_len"], count, vocab, dtype, state["feature_shape"], views,
                            seed if views > 1 else None))
    (tmp / PROGRESS).unlink()
    os.replace(tmp, path)
    return TokenCache(path)
