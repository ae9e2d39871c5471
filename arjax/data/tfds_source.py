"""TFDS datasets (ImageNet, ...) as random-access sources via `tfds.data_source`.

tensorflow_datasets is imported only when a TFDS source is made, so arjax needs it only then
(`pip install tensorflow-datasets`). Random access needs the dataset prepared in the ArrayRecord
file format: `tfds build NAME --file_format=array_record`.
"""
from __future__ import annotations

import numpy as np


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError("TFDS sources need tensorflow_datasets: pip install tensorflow-datasets") from error
    return tfds


class TfdsSource:
    """grain RandomAccessDataSource: record i is {"image": uint8 (H, W, C), "label": int32}."""

    def __init__(self, records, name: str, split: str, image_key: str, label_key: str, class_names):
        self._records = records
        self.name, self.split = name, split
        self.image_key, self.label_key = image_key, label_key
        self.class_names = class_names
        self.num_classes = None if class_names is None else len(class_names)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, split={self.split!r}: {len(self)} examples)"

    def __getitem__(self, index: int) -> dict:
        record = self._records[index]
        return {"image": np.asarray(record[self.image_key]), "label": np.int32(record[self.label_key])}


def tfds_source(name: str, split: str, data_dir: str | None = None, *,
                image_key: str = "image", label_key: str = "label") -> TfdsSource:
    """An already prepared TFDS dataset split; never downloads (a training job should not start one)."""
    tfds = _import_tfds()
    build = f"tfds build {name} --file_format=array_record" + (f" --data_dir={data_dir}" if data_dir else "")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError for unknown names
        raise ValueError(f"TFDS does not know a dataset named {name!r}: {error}".split("\n")[0]) from error
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. Prepare it with `{build}` "
            "(datasets with manual downloads, such as imagenet2012, need their archives placed in "
            "<data_dir>/downloads/manual first).")
    try:
        records = builder.as_data_source(split=split)
    except NotImplementedError as error:  # prepared as TFRecord, which has no random access
        raise ValueError(f"TFDS dataset {name!r} in {builder.data_dir} is not in the ArrayRecord format that "
                         f"random access needs; rebuild it with `{build}`") from error
    label = builder.info.features[label_key] if label_key in builder.info.features else None
    class_names = list(label.names) if getattr(label, "names", None) else None
    return TfdsSource(records, name, split, image_key, label_key, class_names)
