"""Built-in-dataset images with one class's shape painted in another class's colour.

The ten classes differ in both shape and colour, so a classifier trained only on them can name a
class from its colour alone, and would then pass a generator that paints the right colour in the
wrong shape. The evaluation classifier also learns these mismatched images as a "none of the
classes" output, which makes it check the shape as well.

Rendering is `SyntheticShapes.render` with the colour taken from `colour_class` (same draws, so
matching classes give the dataset's exact bytes).
"""
from __future__ import annotations

import numpy as np

from arjax.data.synthetic import CLASSES, SyntheticShapes


class RecolouredShapes(SyntheticShapes):
    """`render_pair(index, shape_class, colour_class)` -> uint8 (S, S, 3)."""

    def render_pair(self, index: int, shape_class: int, colour_class: int) -> np.ndarray:
        return self.render(index, shape_class, colour_class)


def mismatched_pairs(count: int, num_classes: int, seed: int) -> np.ndarray:
    """(count, 2) int (shape_class, colour_class) with shape_class != colour_class, uniform over pairs."""
    rng = np.random.default_rng([seed, 1])
    shape = rng.integers(0, num_classes, count)
    colour = (shape + rng.integers(1, num_classes, count)) % num_classes
    return np.stack([shape, colour], axis=1)


def recoloured_uint8(count: int, image_size: int, seed: int, num_classes: int = len(CLASSES)):
    """(count, S, S, 3) uint8 images whose shape and colour belong to different classes, and the
    (count, 2) (shape_class, colour_class) pairs."""
    source = RecolouredShapes(count, image_size, seed=seed, num_classes=num_classes)
    pairs = mismatched_pairs(count, num_classes, seed)
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    for i, (s, c) in enumerate(pairs):
        images[i] = source.render_pair(i, int(s), int(c))
    return images, pairs
