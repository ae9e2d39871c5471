"""The sample-quality metrics of OpenAI's ADM evaluator (guided-diffusion/evaluations/evaluator.py), computed
as it computes them: its numbers are the field's currency (every ImageNet table since ADM reports them),
so a port must reproduce them, rounding quirks included, not merely implement the same definitions.

- FID (Heusel et al. 2017): the Frechet distance between gaussians fitted to Inception pool3 features
  (2048-d) of samples and of reference images, |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2));
  float64 statistics (np.cov), scipy's sqrtm. sFID (Nash et al. 2021) is the same on the "spatial"
  features (7 channels of mixed_6/conv, 17 x 17, 2023-d).
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) from the softmax of pool3 @ the
  network's logit weights (no bias), per split of `split_size` samples (5000 in ADM), averaged.
- Improved precision / recall (Kynkaanniemi et al. 2019), k = 3: each point of a set gets a ball whose
  squared radius is its (k+1)-th smallest squared distance within its own set (itself included, at 0);
  precision is the share of samples inside some reference ball, recall the share of references inside
  some sample ball.

Float16 detail: ADM computes the pairwise squared distances |u|^2 - 2 u.v + |v|^2 in float16 (float32
only for a block where float16 overflows). Float16 has 11 significant bits, so a squared distance of
~300 is only known to ~0.25: a point near a ball's edge is inside or outside depending on that rounding,
and a float32 or float64 computation moves precision / recall by up to a few 1e-3 at 50k samples. We
emulate the float16 rounding op by op (see `_pairwise_f16`); tolerance against ADM: 2e-3 absolute.

Batch sizes: ADM's distances run in blocks of 10,000 x 10,000 (`batch_size` here), its Inception Score
in splits of 5000 (`split_size`). Here every block is a jitted JAX function on the default device
(the accelerator when there is one); the N x M distance matrix is never built.
"""
from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import linalg

_HIGHEST = lax.Precision.HIGHEST
_SOFTMAX_CHUNK = 5000  # rows per softmax call; any size gives the same rows


# ---------------------------------------------------------------- input checks

def _features(x, name: str, dtype, min_count: int = 1) -> np.ndarray:
    """(N, D) finite features as `dtype`, or a ValueError naming the problem."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D); got {x.shape}")
    if x.shape[0] < min_count:
        raise ValueError(f"{name} has {x.shape[0]} rows; at least {min_count} are needed")
    x = x.astype(dtype, copy=False)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise ValueError(f"{name} has non-finite values (first in row {row} of {x.shape[0]})")
    return x


# ---------------------------------------------------------------- FID statistics

def statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features, N >= 2 -> float64 mean (D,) and covariance (D, D) (np.cov, divides by N - 1)."""
    f = _features(features, "features", np.float64, min_count=2)
    return f.mean(axis=0), np.cov(f, rowvar=False)


class RunningStatistics:
    """`statistics` over a stream of batches (50k x 2023 features need never be held at once).

    Batches are merged with the exact parallel update of mean and co-moment (Chan, Golub & LeVeque
    1979) in float64: no sum-of-squares cancellation, so result() matches statistics(concat) to
    rounding (~1e-12 relative)."""

    def __init__(self):
        self.count = 0
        self._mean = None
        self._comoment = None  # sum over rows of (x - mean)(x - mean)^T

    def update(self, batch) -> "RunningStatistics":
        x = _features(batch, "batch", np.float64)
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"batch has {x.shape[1]} features; earlier batches had {self._mean.shape[0]}")
        n_b, mean_b = x.shape[0], x.mean(axis=0)
        centred = x - mean_b
        comoment_b = centred.T @ centred
        if self._mean is None:
            self.count, self._mean, self._comoment = n_b, mean_b, comoment_b
            return self
        n_a, n = self.count, self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._comoment = self._comoment + comoment_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n
        return self

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"statistics need at least 2 feature rows; got {self.count}")
        sigma = self._comoment / (self.count - 1)
        return self._mean.copy(), (sigma + sigma.T) / 2  # the update is symmetric up to rounding


def frechet_distance(stats_a, stats_b, eps: float = 1e-6) -> float:
    """Frechet distance between (mu, sigma) statistics, as ADM's FIDStatistics.frechet_distance.

    sqrtm(sigma_a @ sigma_b); only if that is not finite, retried with eps added to both diagonals.
    A complex root whose diagonal's imaginary part is within 1e-3 of 0 is taken as its real part;
    otherwise ValueError."""
    (mu1, sigma1), (mu2, sigma2) = _stats(stats_a), _stats(stats_b)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different feature sizes: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals (as ADM does)")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.abs(covmean.imag).max():.4g} in the covariance "
                             "square root (invalid covariances?)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _stats(stats) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = stats
    mu, sigma = np.atleast_1d(np.asarray(mu, np.float64)), np.atleast_2d(np.asarray(sigma, np.float64))
    if mu.ndim != 1 or sigma.shape != mu.shape * 2:
        raise ValueError(f"statistics must be mu (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError("statistics have non-finite values")
    return mu, sigma


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # scipy >= 1.16 deprecates ADM's disp=False and warns (LinAlgWarning) on near-singular input instead;
    # ADM's disp=False printed nothing, and a non-finite root is handled by the caller.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


# ---------------------------------------------------------------- Inception Score

@jax.jit
def _softmax(pool3, w):
    # ADM's TF graph: float32 matmul, then tf.nn.softmax (exp(x - max) / sum).
    return jax.nn.softmax(jnp.dot(pool3, w, precision=_HIGHEST), axis=-1)


def _softmax_chunks(pool3: np.ndarray, w: np.ndarray) -> np.ndarray:
    chunk = min(_SOFTMAX_CHUNK, len(pool3))
    w = jnp.asarray(w)
    out = []
    for start in range(0, len(pool3), chunk):
        block, n = _pad_rows(pool3[start:start + chunk], chunk)  # one compiled shape
        out.append(np.asarray(_softmax(block, w))[:n])
    return np.concatenate(out)


def inception_score(pool3, softmax_w, split_size: int = 5000) -> float:
    """ADM's Inception Score of (N, D) pool3 features with the (D, C) logit weights (no bias).

    ADM scores a set smaller than split_size as one short split; we refuse (the score grows with the
    split size, so such a number is not comparable)."""
    pool3 = _features(pool3, "pool3", np.float32)
    w = np.asarray(softmax_w, np.float32)
    if w.ndim != 2 or w.shape[0] != pool3.shape[1]:
        raise ValueError(f"softmax_w must have shape ({pool3.shape[1]}, C) for pool3 {pool3.shape}; got {w.shape}")
    if split_size < 1 or len(pool3) < split_size:
        raise ValueError(f"inception score: {len(pool3)} samples for splits of {split_size} "
                         "(set the split with --split-size; ADM uses 5000 of 50,000 samples)")
    preds = _softmax_chunks(pool3, w)
    scores = [_split_score(preds[i:i + split_size]) for i in range(0, len(preds), split_size)]
    return float(np.mean(scores))


def _split_score(part: np.ndarray) -> np.float32:
    """exp(mean_i KL(p_i || mean p)) in float32 numpy, as ADM (improved-gan's code)."""
    marginal = np.expand_dims(np.mean(part, 0), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = part * (np.log(part) - np.log(marginal))
    # A probability that underflowed to 0 gives 0 * -inf = nan in ADM; its term is 0 (0 log 0 = 0).
    kl = np.where(part > 0, kl, np.float32(0))
    return np.exp(np.mean(np.sum(kl, 1)))


# ---------------------------------------------------------------- precision / recall

def _f16(x):
    """Round float32 values to the nearest float16 value (ties to even), kept as float32.

    reduce_precision is an explicit op XLA keeps (a f32->f16->f32 convert pair may be folded away as
    "excess precision"), but it flushes float16 subnormals (|x| < 2^-14) to 0; those are rounded here
    on their fixed grid of 2^-24, as a real float16 cast does (small squares of ReLU features land there)."""
    normal = lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10)
    subnormal = jnp.round(x * 2.0 ** 24) * 2.0 ** -24  # exact scalings; round() is ties-to-even
    return jnp.where(jnp.abs(x) < 2.0 ** -14, subnormal, normal)


def _pairwise_f16(u, v):
    """ADM's _batch_pairwise_distances on float16 inputs, each TF op's float16 result rounded here.

    TF's CPU kernels for half are Eigen's and their accumulation order is not known here; our choices:
    the row sums of squares and the matmul accumulate the (exact) products of float16 values in float32
    and round once at the end (TF's Eigen kernels may round each partial sum to float16; a few ulp of a
    distance, which moves only points at a ball's edge: within the 2e-3 tolerance on the fixtures)."""
    u, v = _f16(u), _f16(v)  # tf.cast(features, tf.float16)
    norm_u = _f16(jnp.sum(_f16(u * u), axis=1))[:, None]  # tf.square, then tf.reduce_sum
    norm_v = _f16(jnp.sum(_f16(v * v), axis=1))[None, :]
    uv = _f16(jnp.dot(u, v.T, precision=_HIGHEST))  # tf.matmul(U, V, transpose_b=True)
    d = _f16(norm_u - _f16(2 * uv))  # 2 * uv is exact unless it overflows (then inf, as in float16)
    return jnp.maximum(_f16(d + norm_v), 0.0)


def _pairwise_f32(u, v):
    """The same in float32: ADM's fallback for a block where float16 is not finite."""
    norm_u = jnp.sum(u * u, axis=1)[:, None]
    norm_v = jnp.sum(v * v, axis=1)[None, :]
    return jnp.maximum(norm_u - 2 * jnp.dot(u, v.T, precision=_HIGHEST) + norm_v, 0.0)


def _distance_block(u, v):
    """ADM's DistanceBlock: float16 distances unless any of the block is not finite, then float32.

    Zero padding rows / columns cannot change that decision: their distances are finite exactly when a
    real row's or column's are."""
    d16 = _pairwise_f16(u, v)
    return lax.cond(jnp.isfinite(d16).all(), lambda: d16, lambda: _pairwise_f32(u, v))


@partial(jax.jit, static_argnames="kp1")
def _radii_step(best, rows, cols, n_cols, kp1: int):
    """Fold a column block into each row's running kp1 smallest squared distances."""
    d = _distance_block(rows, cols)
    d = jnp.where(jnp.arange(d.shape[1])[None, :] < n_cols, d, jnp.inf)  # padded columns are never near
    neg_smallest, _ = lax.top_k(-jnp.concatenate([best, d], axis=1), kp1)
    return -neg_smallest


@jax.jit
def _pr_step(ref, ref_radii, smp, smp_radii):
    """One (ref block, sample block): which refs lie in some sample ball, which samples in some ref ball.

    Padded points carry radius -inf (no ball) and their own results are dropped by the caller."""
    d = _distance_block(ref, smp)
    ref_in = (d <= smp_radii[None, :]).any(axis=1)
    smp_in = (d <= ref_radii[:, None]).any(axis=0)
    return ref_in, smp_in


def _pad_rows(x: np.ndarray, size: int, value=0.0) -> tuple[np.ndarray, int]:
    n = len(x)
    if n == size:
        return x, n
    pad = np.full((size - n,) + x.shape[1:], value, x.dtype)
    return np.concatenate([x, pad]), n


def _device_blocks(x: np.ndarray, size: int, value=0.0) -> list:
    """(start, n_valid, padded block on the default device) for each block of `size` rows."""
    out = []
    for start in range(0, len(x), size):
        block, n = _pad_rows(x[start:start + size], size, value)
        out.append((start, n, jax.device_put(block)))
    return out


def _radii(blocks: list, size: int, k: int) -> np.ndarray:
    """Squared radius of each point: its (k+1)-th smallest squared distance to its own set."""
    radii = []
    for _, n_rows, rows in blocks:
        best = jnp.full((size, k + 1), jnp.inf, jnp.float32)
        for _, n_cols, cols in blocks:
            best = _radii_step(best, rows, cols, n_cols, kp1=k + 1)
        radii.append(np.asarray(best[:, k])[:n_rows])
    return np.concatenate(radii)


def precision_recall(ref_features, sample_features, k: int = 3, batch_size: int = 10000) -> tuple[float, float]:
    """ADM's improved precision and recall (ManifoldEstimator, nhood_sizes=(k,)) of samples against
    reference features, distances in blocks of batch_size x batch_size (ADM: 10000)."""
    ref = _features(ref_features, "ref_features", np.float32)
    smp = _features(sample_features, "sample_features", np.float32)
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"ref_features {ref.shape} and sample_features {smp.shape} differ in feature size")
    for name, x in (("ref_features", ref), ("sample_features", smp)):
        if len(x) < k + 1:
            raise ValueError(f"{name} has {len(x)} points; precision/recall with k = {k} needs at least {k + 1}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    size_r, size_s = min(batch_size, len(ref)), min(batch_size, len(smp))
    ref_blocks, smp_blocks = _device_blocks(ref, size_r), _device_blocks(smp, size_s)
    # Padded points get radius -inf: no distance is <= it, so no point falls into a padded ball.
    ref_radii = _device_blocks(_radii(ref_blocks, size_r, k), size_r, -np.inf)
    smp_radii = _device_blocks(_radii(smp_blocks, size_s, k), size_s, -np.inf)
    ref_in, smp_in = np.zeros(len(ref), bool), np.zeros(len(smp), bool)
    for (r0, nr, rb), (_, _, rr) in zip(ref_blocks, ref_radii):
        for (s0, ns, sb), (_, _, sr) in zip(smp_blocks, smp_radii):
            r_in, s_in = _pr_step(rb, rr, sb, sr)
            ref_in[r0:r0 + nr] |= np.asarray(r_in)[:nr]
            smp_in[s0:s0 + ns] |= np.asarray(s_in)[:ns]
    return float(smp_in.mean()), float(ref_in.mean())
