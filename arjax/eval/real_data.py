"""Real images of the built-in dataset for evaluation, each role drawn from its own seed.

The generators train on SyntheticShapes(seed=0) (configs/quickstart.py). The classifier trains and is
checked on other seeds, and the Frechet reference and its real-vs-real floor use two more, so no
image is shared between training the classifier, checking it, and measuring samples against it.
"""
from __future__ import annotations

import numpy as np

from arjax.data.synthetic import CLASSES, SyntheticShapes

NUM_CLASSES = len(CLASSES)
CLASSIFIER_TRAIN_SEED = 7001
CLASSIFIER_HELDOUT_SEED = 7002
REFERENCE_SEED = 7003  # "real" images that samples are compared with
FLOOR_SEED = 7004      # a second real set: FD(reference, floor) is what a perfect generator scores


def real_uint8(count: int, image_size: int, seed: int, num_classes: int = NUM_CLASSES):
    """(count, S, S, 3) uint8 images and (count,) int32 labels; label = index % num_classes."""
    source = SyntheticShapes(count, image_size, seed=seed, num_classes=num_classes)
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    for i in range(count):
        images[i] = source.render(i, i % num_classes)
    return images, (np.arange(count) % num_classes).astype(np.int32)


def real_images01(count: int, image_size: int, seed: int, num_classes: int = NUM_CLASSES):
    """Like `real_uint8`, as float32 in [0, 1]: the range `Pipeline.sample` returns."""
    images, labels = real_uint8(count, image_size, seed, num_classes)
    return images.astype(np.float32) / np.float32(255.0), labels
