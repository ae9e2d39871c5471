"""make_dataset: any source -> a checkpointable grain IterDataset of batches.

    shuffle (reshuffled every epoch) -> repeat -> this process's rows of each global batch
    -> read + decode + augment -> drop unreadable -> batch -> uint8 to float32 [-1, 1]

Training streams are cut by global batch: with P processes and a global batch of P x B, process p
reads rows [p B, (p + 1) B) of every global batch of one shared shuffled stream. The global batch
at step s is therefore the same whatever the number of processes (unless unreadable images shift a
process's rows), which is what lets a run move between 1 and N processes. Evaluation passes stride
the source by process instead.

Everything up to the batch is a grain MapDataset, so an element is a pure function of its position
in the stream; the iterator's state is therefore just a position (`it.get_state()`), and a restored
iterator yields exactly the batches the interrupted one would have. Per-example augmentation draws
from np.random.default_rng([seed, epoch, source_index]): the same image gets a fresh crop and flip
each epoch, independent of sharding, threads, and where a run was resumed. A token cache of several
augmented views per image picks one the same way (TokenCache.epoch_record).

Images stay uint8 until after batching so that the prefetch buffer holds 4x less memory.
For more decode throughput than threads give, append `.mp_prefetch(grain.MultiprocessingOptions(...))`.
"""
from __future__ import annotations

import dataclasses

import grain
import numpy as np

from arjax.data.decode import decode_image
from arjax.data.transforms import fit_transform, to_pm1, var_eval_transform, var_train_transform


def process_shard(num_examples: int, process_index: int, process_count: int) -> grain.MapDataset:
    """Source indices of this process: every process_count-th one, starting at process_index.

    Slices are disjoint and together cover the data; their lengths differ by at most one, which an
    endless training stream (num_epochs=None) never notices.
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in [0, {process_count}); got {process_index}")
    shard = grain.MapDataset.range(num_examples)[process_index::process_count]
    if len(shard) == 0:
        raise ValueError(f"process {process_index} of {process_count} gets no examples: the source has "
                         f"only {num_examples}")
    return shard


@dataclasses.dataclass(frozen=True)
class _GlobalRows:
    """Local stream position -> (global stream position, source index) for one process's rows."""
    order: grain.MapDataset
    local_batch: int
    process_index: int
    process_count: int

    def __call__(self, i: int) -> tuple[int, int]:
        b = self.local_batch
        g = (i // b) * b * self.process_count + self.process_index * b + i % b
        return g, self.order[g]


def _with_position(position: int, index: int) -> tuple[int, int]:
    return position, index


def _holds_tokens(source) -> bool:
    return "tokens" in source[0]


@dataclasses.dataclass(frozen=True)
class _LoadExample:
    """(stream position, source index) -> an example dict, or None when the image is unreadable."""
    source: object
    image_size: int | None
    seed: int
    train: bool
    augment: bool
    examples_per_epoch: int

    def __call__(self, position_and_index: tuple[int, int]) -> dict | None:
        position, index = position_and_index
        epoch = position // self.examples_per_epoch
        read = getattr(self.source, "epoch_record", None)  # a token cache of several views: one per epoch
        record = self.source[index] if read is None else read(index, epoch, self.seed)
        label = np.int32(record["label"])
        if "tokens" in record:  # a token cache: tokens, label and, if it holds them, encoder features
            return {**record, "tokens": np.asarray(record["tokens"], np.int32), "label": label}
        image = decode_image(record)
        if image is None:
            return None
        if not self.augment:
            image = fit_transform(image, self.image_size)
        elif self.train:
            rng = np.random.default_rng([self.seed, epoch, index])
            image = var_train_transform(image, self.image_size, rng)
        else:
            image = var_eval_transform(image, self.image_size)
        return {"image": image, "label": label}


def _images_to_pm1(batch: dict) -> dict:
    return {**batch, "image": to_pm1(batch["image"])}


def make_dataset(source, *, image_size: int | None = None, batch_size: int, seed: int, train: bool = True,
                 process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                 augment: bool = True, read_options: grain.ReadOptions | None = None,
                 start_position: int = 0) -> grain.IterDataset:
    """Batches {"image": float32 (B, S, S, 3) in [-1, 1], "label": int32 (B,)} from an image source,
    or {"tokens": int32 (B, L), "label": int32 (B,)} (+ "features" when it holds them) from a TokenCache.

    train: shuffle each epoch, VAR augmentation (if `augment`), drop the last partial batch.
      Otherwise: source order, resize + centre crop, keep the last partial batch.
    num_epochs: None means endless for training and one pass for evaluation.
    augment=False: no crop/flip; images already S x S pass untouched (the synthetic source).
    process_index / process_count: pass jax.process_index() / jax.process_count(); batch_size is then
      this process's share of the global batch.
    start_position: skip this many examples of this process's stream (to resume without a saved
      iterator state, e.g. after a change of process count: steps x batch_size).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    if len(source) == 0:
        raise ValueError(f"data source {source!r} is empty")
    tokens = _holds_tokens(source)
    if not tokens and (image_size is None or image_size < 1):
        raise ValueError(f"image sources need a positive image_size; got {image_size}")

    if train:
        order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat(num_epochs)  # reseeds per epoch
        rows = _GlobalRows(order, batch_size, process_index, process_count)
        ds = grain.MapDataset.range(len(order) // (batch_size * process_count) * batch_size).map(rows)  # whole global batches
        examples_per_epoch = len(source)
    else:
        ds = process_shard(len(source), process_index, process_count)
        examples_per_epoch = len(ds)
        ds = ds.repeat(num_epochs or 1).map_with_index(_with_position)
    ds = ds[start_position:].map(_LoadExample(source, image_size, seed, train, augment, examples_per_epoch))
    ds = ds.to_iter_dataset(read_options or grain.ReadOptions())  # drops the Nones of unreadable images
    ds = ds.batch(batch_size, drop_remainder=train)
    return ds if tokens else ds.map(_images_to_pm1)
