"""Pre-tokenized datasets: encode the images once with the tokenizer, then train the AR model on tokens.

On disk, a cache is a directory:
  metadata.json                       {"format", "seq_len", "count", "vocab", "token_dtype", "shards",
                                       "feature_shape"}
  tokens-00000-of-0000N.array_record  one record per example

Record layout (fixed, little-endian, no framing): label as int32 (4 bytes), then seq_len tokens as
`token_dtype` ("<u2" when every token fits in 16 bits, else "<i4"), then, when feature_shape is not
null, the encoder's continuous features (the quantiser's input) as float32 of that shape: VAR's
self-correction re-quantises them with errors injected (arjax.nn.tokenizers.msvq). A fixed layout
decodes with one np.frombuffer, needs no pickle, and any language can read it. Shards are written
with group_size:1 so that a random read decompresses one record only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

FORMAT = "arjax.token_cache.v1"
METADATA = "metadata.json"
_LABEL_BYTES = 4


def _token_dtype(max_token: int) -> np.dtype:
    return np.dtype("<u2") if max_token < 2 ** 16 else np.dtype("<i4")


def write_token_cache(path: str | os.PathLike, tokens: np.ndarray, labels: np.ndarray, *,
                      vocab: int | None = None, shard_size: int = 100_000,
                      features: np.ndarray | None = None) -> Path:
    """Write tokens (N, L) ints in [0, vocab), labels (N,) and optionally features (N, ...) floats
    as an ArrayRecord token cache at `path`."""
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
    if tokens.size and tokens.min() < 0:
        raise ValueError(f"tokens must be >= 0; got min {tokens.min()}")
    max_token = int(tokens.max()) if tokens.size else 0
    if vocab is not None and max_token >= vocab:
        raise ValueError(f"tokens must be < vocab={vocab}; got max {max_token}")
    dtype = _token_dtype(vocab - 1 if vocab is not None else max_token)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    count = tokens.shape[0]
    num_shards = max(1, -(-count // shard_size))
    shards = []
    for k in range(num_shards):
        name = f"tokens-{k:05d}-of-{num_shards:05d}.array_record"
        writer = ArrayRecordWriter(str(path / name), "group_size:1")
        for i in range(k * shard_size, min(count, (k + 1) * shard_size)):
            record = np.int32(labels[i]).astype("<i4").tobytes() + tokens[i].astype(dtype).tobytes()
            writer.write(record if features is None else record + features[i].tobytes())
        writer.close()
        shards.append(name)
    metadata = {"format": FORMAT, "seq_len": int(tokens.shape[1]), "count": int(count),
                "vocab": None if vocab is None else int(vocab), "token_dtype": dtype.str, "shards": shards,
                "feature_shape": None if features is None else list(features.shape[1:])}
    (path / METADATA).write_text(json.dumps(metadata, indent=1))  # last: a cache without it is incomplete
    return path


class TokenCache:
    """grain RandomAccessDataSource over a token cache: record i is {"tokens": int32 (L,), "label": int32},
    plus "features": float32 (feature_shape) when the cache holds them."""

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
        self._token_dtype = np.dtype(self.metadata["token_dtype"])
        shape = self.metadata.get("feature_shape")  # absent in caches written before features existed
        self.feature_shape = None if shape is None else tuple(shape)
        self._records = grain.sources.ArrayRecordDataSource([str(self.path / s) for s in self.metadata["shards"]])
        if len(self._records) != self.metadata["count"]:
            raise ValueError(f"token cache {self.path} holds {len(self._records)} records; "
                             f"metadata.json says {self.metadata['count']}")

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"TokenCache({str(self.path)!r}: {len(self)} x {self.seq_len} tokens, vocab {self.vocab})"

    def __getitem__(self, index: int) -> dict:
        raw = self._records[index]
        label = np.frombuffer(raw, "<i4", count=1)[0]
        tokens = np.frombuffer(raw, self._token_dtype, count=self.seq_len, offset=_LABEL_BYTES)
        record = {"tokens": tokens.astype(np.int32), "label": np.int32(label)}
        if self.feature_shape is not None:
            offset = _LABEL_BYTES + self.seq_len * self._token_dtype.itemsize
            record["features"] = np.frombuffer(raw, "<f4", offset=offset).reshape(self.feature_shape)
        return record


def encode_to_cache(path: str | os.PathLike, source, encode, *, image_size: int, vocab: int,
                    batch_size: int = 64, augment: bool = True, progress: bool = True,
                    with_features: bool = False) -> TokenCache:
    """Encode every image of `source` once with `encode` ((B, S, S, 3) in [-1, 1] -> (B, L) ints, or
    with_features=True: -> ((B, L) ints, (B, ...) features)) and return the cache at `path`; a
    complete cache already there is reused (it must hold features if with_features). Images get the evaluation
    preprocessing (VAR's resize + centre crop, or just fitting to S with augment=False; never a
    random crop or flip): the cache trades augmentation for speed.

    Written to a sibling temporary directory and renamed into place, so a kill mid-way leaves either
    no cache or a complete one."""
    from tqdm.auto import tqdm

    from arjax.data.pipeline import make_dataset
    path = Path(path)
    if (path / METADATA).is_file():
        cache = TokenCache(path)
        if with_features and cache.feature_shape is None:
            raise ValueError(f"token cache {path} holds no encoder features, which this run needs "
                             f"(VAR's loss.self_correction); delete {path} to encode again")
        return cache
    tokens, labels, features = [], [], []
    batches = make_dataset(source, image_size=image_size, batch_size=batch_size, seed=0, train=False,
                           augment=augment)
    total = -(-len(source) // batch_size)
    for batch in tqdm(batches, total=total, desc="encoding tokens", unit="batch", disable=not progress):
        images, n = batch["image"], len(batch["label"])
        if n < batch_size:  # pad the last batch: one compiled shape
            images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
        out = encode(images)
        if with_features:
            out, feats = out
            features.append(np.asarray(feats)[:n])
        tokens.append(np.asarray(out)[:n])
        labels.append(np.asarray(batch["label"]))
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    write_token_cache(tmp, np.concatenate(tokens), np.concatenate(labels), vocab=vocab,
                      features=np.concatenate(features) if with_features else None)
    os.replace(tmp, path)
    return TokenCache(path)
