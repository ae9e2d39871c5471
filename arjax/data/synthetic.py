"""The built-in dataset: one coloured shape on a tinted background, generated, never downloaded.

Each class is a (shape, colour) pair a person tells apart at a glance (CLASS_NAMES). Example i of a
dataset is a pure function of (seed, i):
  label = i % num_classes                      (classes are exactly balanced in every window of 10)
  size, position, rotation, background  <- np.random.default_rng([seed, i])

Same (seed, index) gives the same bytes on any machine: pixels are touched only by IEEE-exact
arithmetic (+ - * /, comparisons, integer sums). No per-pixel sin/cos/atan2, whose last bit depends
on the CPU's SIMD path and the libm, so a boundary pixel could otherwise flip between machines;
rotations come from a random unit vector and shape edges from fixed-decimal normal tables.

Edges are anti-aliased by evaluating the shape on a supersampled grid inside its bounding box and
counting covered subpixels (an exact box filter).
"""
from __future__ import annotations

import math

import numpy as np


def _unit_normals(count: int, first_deg: float) -> np.ndarray:
    """(count, 2) unit vectors evenly spaced from `first_deg`, rounded so every libm agrees."""
    angles = [math.radians(first_deg + 360.0 * k / count) for k in range(count)]
    return np.array([[round(math.cos(a), 9), round(math.sin(a), 9)] for a in angles], np.float32)


_TRIANGLE_NORMALS = _unit_normals(3, 90.0)
_HEXAGON_NORMALS = _unit_normals(6, 0.0)
_STAR_NORMALS = _unit_normals(5, 90.0)
_STAR_LINE_DISTANCE = np.float32(round(1.1 * math.cos(math.radians(72.0)), 9))


def _inside_polygon(u, v, normals, apothem):
    """Convex polygon as the intersection of half-planes n.p <= apothem."""
    inside = np.ones(u.shape, bool)
    for nu, nv in normals:
        inside &= u * nu + v * nv <= apothem
    return inside


# Shapes live in local coordinates (u, v), radius about 1; each returns a boolean mask.
def _circle(u, v):
    return u * u + v * v <= 1.0


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.75


def _triangle(u, v):
    return _inside_polygon(u, v, _TRIANGLE_NORMALS, 0.55)


def _star(u, v):
    # A pentagram is bounded by 5 lines: the centre pentagon is inside all 5 half-planes, each
    # point of the star inside exactly 4, everything outside the star inside at most 3.
    count = np.zeros(u.shape, np.int8)
    for nu, nv in _STAR_NORMALS:
        count += u * nu + v * nv <= _STAR_LINE_DISTANCE
    return count >= 4


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 1.0) & (av <= 0.32)) | ((av <= 1.0) & (au <= 0.32))


def _diamond(u, v):
    # Elongated (0.7 : 1.1) so that it never looks like a rotated square.
    return np.abs(u) * (1.0 / 0.7) + np.abs(v) * (1.0 / 1.1) <= 1.0


def _ring(u, v):
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55 * 0.55)


def _hexagon(u, v):
    return _inside_polygon(u, v, _HEXAGON_NORMALS, np.float32(round(math.cos(math.pi / 6), 9)))


def _heart(u, v):
    # (x^2 + y^2 - 1)^3 <= x^2 y^3, rescaled and shifted so it spans about [-1, 1].
    x = u * 1.15
    y = v * -1.15 + 0.12
    q = x * x + y * y - 1.0
    return q * q * q <= x * x * y * y * y


def _crescent(u, v):
    du = u - 0.45
    return (u * u + v * v <= 1.0) & (du * du + v * v >= 0.8 * 0.8)


# (name, inside-test, RGB): hues and lightness spread so that no two classes are easily confused.
CLASSES = (
    ("red circle", _circle, (230, 30, 30)),
    ("green square", _square, (30, 170, 60)),
    ("blue triangle", _triangle, (40, 90, 255)),
    ("yellow star", _star, (255, 225, 30)),
    ("magenta cross", _cross, (235, 40, 235)),
    ("cyan diamond", _diamond, (40, 225, 235)),
    ("orange ring", _ring, (255, 130, 0)),
    ("white hexagon", _hexagon, (250, 250, 250)),
    ("purple heart", _heart, (125, 45, 190)),
    ("black crescent", _crescent, (0, 0, 0)),
)
CLASS_NAMES = [name for name, _, _ in CLASSES]

# Format version: bump it whenever the bytes of any image change (cached classifiers are keyed by it).
# v2: radius from 0.22 (was 0.16) of the image size; at 32 px a 5 px triangle or star was a blob
# even in the tokenizer's reconstructions, so "recognisable samples" could not be judged fairly.
FORMAT_VERSION = 2
RADIUS_RANGE = (0.22, 0.36)  # shape radius as a fraction of the image size
_SHAPE_EXTENT = 1.12  # every shape fits in radius 1.12 of its local frame
_MIN_CONTRAST = 110.0  # least RGB distance between the shape colour and any background pixel


def _supersample_factor(image_size: int) -> int:
    """4x below 128 px, 2x from 128 px up (edges are then a small part of the image)."""
    return 4 if image_size < 128 else 2


def _random_unit_vector(rng: np.random.Generator) -> tuple[float, float]:
    """Uniform direction by rejection from the square: needs no sin/cos."""
    while True:
        x, y = rng.uniform(-1.0, 1.0, 2)
        r2 = x * x + y * y
        if 0.01 < r2 <= 1.0:
            r = math.sqrt(r2)
            return x / r, y / r


def _segment_distance(colour, c0, c1) -> float:
    """Least distance from `colour` to the RGB segment c0..c1 that the background gradient spans.

    Plain Python floats: a BLAS dot may fuse multiply-adds differently on another machine."""
    d = [float(b - a) for a, b in zip(c0, c1)]
    w = [float(p - a) for p, a in zip(colour, c0)]
    dd = sum(x * x for x in d)
    t = min(1.0, max(0.0, sum(a * b for a, b in zip(w, d)) / max(dd, 1e-9)))
    return math.sqrt(sum((a - t * b) ** 2 for a, b in zip(w, d)))


def _background_colours(rng: np.random.Generator, colour: np.ndarray):
    """Two ends of a mild gradient: dark-to-mid grey with a random tint, far from the shape colour."""
    for _ in range(1000):
        grey = rng.uniform(20.0, 125.0)
        c0 = np.clip(grey + rng.uniform(-35.0, 35.0, 3), 0.0, 255.0)
        c1 = np.clip(c0 + rng.uniform(-30.0, 30.0, 3), 0.0, 255.0)
        if _segment_distance(colour, c0, c1) >= _MIN_CONTRAST:
            return c0, c1
    raise AssertionError("no background found")  # unreachable for the colours in CLASSES


class SyntheticShapes:
    """grain RandomAccessDataSource of generated images: {"image": uint8 (H, W, 3), "label": int32}.

    label = index % num_classes. `num_classes` < 10 takes the first classes of CLASS_NAMES.
    """

    def __init__(self, num_examples: int, image_size: int, seed: int = 0, num_classes: int = len(CLASSES)):
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0; got {num_examples}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 px; got {image_size}")
        if not 1 <= num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be in [1, {len(CLASSES)}]; got {num_classes}")
        self.num_examples = int(num_examples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.class_names = CLASS_NAMES[:num_classes]
        self._supersample = _supersample_factor(self.image_size)
        centres = np.arange(self.image_size, dtype=np.float32) + np.float32(0.5)
        self._pixel_x = centres[None, :]  # pixel centres, broadcast to (H, W) for the gradient
        self._pixel_y = centres[:, None]

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"SyntheticShapes(num_examples={self.num_examples}, image_size={self.image_size}, "
                f"seed={self.seed}, num_classes={self.num_classes})")

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        label = index % self.num_classes
        return {"image": self.render(index, label), "label": np.int32(label)}

    def render(self, index: int, label: int, colour_label: int | None = None) -> np.ndarray:
        """Example `index` of class `label`; `colour_label` paints it in another class's colour
        (the evaluation's recoloured images) with the same draws."""
        inside = CLASSES[label][1]
        colour = np.asarray(CLASSES[label if colour_label is None else colour_label][2], np.float64)
        rng = np.random.default_rng([self.seed, index])
        size = self.image_size
        # Draw order is part of the format: changing it changes every image.
        radius = size * rng.uniform(*RADIUS_RANGE)
        margin = radius * _SHAPE_EXTENT
        cx, cy = rng.uniform(margin, size - margin, 2)
        cos, sin = _random_unit_vector(rng)
        c0, c1 = _background_colours(rng, colour)
        gx, gy = _random_unit_vector(rng)

        image = self._gradient(c0, c1, gx, gy)
        self._paint_shape(image, inside, colour, cx, cy, radius, cos, sin)
        return (np.clip(image, 0.0, 255.0) + 0.5).astype(np.uint8)

    def _gradient(self, c0, c1, gx, gy) -> np.ndarray:
        """(H, W, 3) float32 linear ramp from c0 to c1 along direction (gx, gy)."""
        half = np.float32(self.image_size / 2)
        along = (self._pixel_x - half) * np.float32(gx) + (self._pixel_y - half) * np.float32(gy)
        t = np.clip(along * np.float32(1.0 / (self.image_size * 1.4143)) + np.float32(0.5), 0.0, 1.0)
        c0 = c0.astype(np.float32)
        return c0 + t[..., None] * (c1.astype(np.float32) - c0)

    def _paint_shape(self, image, inside, colour, cx, cy, radius, cos, sin) -> None:
        """Composite the anti-aliased shape onto `image` in place, only inside its bounding box."""
        size, ss = self.image_size, self._supersample
        reach = radius * _SHAPE_EXTENT
        x0, x1 = max(0, math.floor(cx - reach)), min(size, math.ceil(cx + reach))
        y0, y1 = max(0, math.floor(cy - reach)), min(size, math.ceil(cy + reach))
        step = np.float32(1.0 / ss)
        dx = (np.arange(x0 * ss, x1 * ss, dtype=np.float32) + 0.5) * step - np.float32(cx)
        dy = (np.arange(y0 * ss, y1 * ss, dtype=np.float32) + 0.5) * step - np.float32(cy)
        dx, dy = dx[None, :], dy[:, None]
        inv_r, c, s = np.float32(1.0 / radius), np.float32(cos), np.float32(sin)
        u = (dx * c + dy * s) * inv_r  # rotate into the shape's frame, radius 1
        v = (dy * c - dx * s) * inv_r
        covered = inside(u, v).reshape(y1 - y0, ss, x1 - x0, ss).sum(axis=(1, 3), dtype=np.int32)
        alpha = (covered.astype(np.float32) * np.float32(1.0 / (ss * ss)))[..., None]
        box = image[y0:y1, x0:x1]
        box += (colour.astype(np.float32) - box) * alpha
