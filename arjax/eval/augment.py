"""Training augmentation for the evaluation classifier, in JAX so that it runs inside the jitted step.

Generated samples differ from the data in small ways: softer (a VQ tokenizer decodes from a latent
grid 4-8x coarser than the image), noisy, a little shifted or zoomed (VAR's crop augmentation),
colours a few percent off. The classifier must see through those and still name the class, so it
trains on images perturbed in the same ways, each kept small enough that no class turns into another
(the closest two class colours, yellow and orange, are 100 RGB levels apart; the colour jitter moves
a channel by at most ~20; the coarsest resampling keeps a third of the side).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_ZOOM = 1.15       # random crop of 1/1.15 of the side, resized back (VAR's resize-1.125-then-crop)
MAX_BLUR_SIGMA = 1.2  # pixels
DOWNSCALES = (1.5, 2.0, 2.5, 3.0)  # resample to side / f and back
MAX_NOISE = 0.08      # std of additive gaussian noise, in [-1, 1] units
MAX_GAIN = 0.06       # per-channel gain 1 +- this
MAX_SHIFT = 0.06      # per-channel offset, in [-1, 1] units


def _zoom_flip(key, image):
    s = image.shape[0]
    k_zoom, k_pos, k_flip = jax.random.split(key, 3)
    zoom = jax.random.uniform(k_zoom, (), minval=1.0, maxval=MAX_ZOOM)
    offset = jax.random.uniform(k_pos, (2,)) * (1.0 - zoom) * s  # keeps the crop inside the image
    out = jax.image.scale_and_translate(image, (s, s, 3), (0, 1), jnp.stack([zoom, zoom]), offset,
                                        method="linear", antialias=False)
    return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)


def _gaussian_blur(image, sigma):
    taps = jnp.arange(-2, 3, dtype=jnp.float32)
    w = jnp.exp(-0.5 * (taps / jnp.maximum(sigma, 1e-3)) ** 2)
    w = w / w.sum()
    pad = jnp.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
    s = image.shape[0]
    rows = sum(w[i] * pad[i:i + s] for i in range(5))          # (S, S + 4, 3)
    return sum(w[i] * rows[:, i:i + s] for i in range(5))


def noise_bank(key, image_size: int, count: int = 512) -> jax.Array:
    """Unit gaussian noise images that `augment` picks from: drawing fresh noise for every image costs
    more than the classifier's own step on CPU."""
    return jax.random.normal(key, (count, image_size, image_size, 3))


def _down_up(image, factor: float):
    s = image.shape[0]
    low = max(2, round(s / factor))
    return jax.image.resize(jax.image.resize(image, (low, low, 3), "linear"), image.shape, "cubic")


def _soften(key, image):
    """One of: unchanged (1/4), gaussian blur (3/8), resampled through a lower resolution (3/8)."""
    k_kind, k_sigma, k_factor = jax.random.split(key, 3)
    kind = jax.random.choice(k_kind, 3, p=jnp.array([0.25, 0.375, 0.375]))
    sigma = jax.random.uniform(k_sigma, (), minval=0.3, maxval=MAX_BLUR_SIGMA)
    resampled = jnp.stack([_down_up(image, f) for f in DOWNSCALES])
    pick = jax.random.randint(k_factor, (), 0, len(DOWNSCALES))
    return jnp.select([kind == 1, kind == 2], [_gaussian_blur(image, sigma), resampled[pick]], image)


def _augment_one(key, image, bank):
    k_geo, k_soft, k_gain, k_shift, k_noise, k_std = jax.random.split(key, 6)
    x = _soften(k_soft, _zoom_flip(k_geo, image))
    gain = 1.0 + jax.random.uniform(k_gain, (3,), minval=-MAX_GAIN, maxval=MAX_GAIN)
    shift = jax.random.uniform(k_shift, (3,), minval=-MAX_SHIFT, maxval=MAX_SHIFT)
    x = (x + 1.0) * gain - 1.0 + shift
    noise_std = jax.random.uniform(k_std, (), minval=-MAX_NOISE, maxval=MAX_NOISE)
    noise = bank[jax.random.randint(k_noise, (), 0, bank.shape[0])]
    x = x + noise_std * noise
    return jnp.clip(x, -1.0, 1.0)


def augment(key, images, bank):
    """(B, S, S, 3) float in [-1, 1] -> the same, each image perturbed by its own draws; `bank` is a
    `noise_bank` of the images' size."""
    return jax.vmap(_augment_one, in_axes=(0, 0, None))(jax.random.split(key, images.shape[0]), images, bank)
