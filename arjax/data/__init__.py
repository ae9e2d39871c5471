"""Data: random-access sources and the grain pipeline that turns any of them into batches.

    source = make_source("synthetic", num_examples=50_000, image_size=64)   # or "folder", "tfds", "tokens"
    ds = make_dataset(source, image_size=64, batch_size=64, seed=0, augment=False)
    it = iter(ds); batch = next(it); state = it.get_state()   # save with the model, set_state to resume
"""
from __future__ import annotations

from arjax.data.decode import SKIPPED
from arjax.data.folder import ImageFolder
from arjax.data.pipeline import make_dataset, process_shard
from arjax.data.synthetic import CLASS_NAMES, SyntheticShapes
from arjax.data.tfds_source import TfdsSource, tfds_source
from arjax.data.token_cache import TokenCache, write_token_cache

# Config strings -> source constructors; each takes keyword arguments only through make_source.
SOURCES = {
    "synthetic": SyntheticShapes,  # num_examples, image_size, seed=0, num_classes=10
    "folder": ImageFolder,         # root
    "tfds": tfds_source,           # name, split, data_dir=None
    "tokens": TokenCache,          # path
}


def make_source(name: str, **kwargs):
    """The data source registered as `name`, e.g. make_source("folder", root="/data/imagenet/train")."""
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}; choose one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name](**kwargs)


__all__ = ["CLASS_NAMES", "SKIPPED", "SOURCES", "ImageFolder", "SyntheticShapes", "TfdsSource", "TokenCache",
           "make_dataset", "make_source", "process_shard", "tfds_source", "write_token_cache"]
