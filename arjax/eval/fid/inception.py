"""The FID Inception-v3 (pytorch-fid's network, the 2015-12-05 TF graph ported to PyTorch) in Flax NNX, NHWC.

What the field reports as FID / sFID / IS / precision / recall comes from OpenAI's ADM evaluator, a TF1
graph of Google's 2015-12-05 Inception-v3. pytorch-fid converted the same network to PyTorch; its weight
file `pt_inception-2015-12-05-6726825d.pth` (GitHub release `fid_weights` of mseitzer/pytorch-fid) is what
this module loads (or a `.safetensors` of the same state dict). It is never downloaded or shipped here.

The network is torchvision's Inception3 layout with 1008 classes and no aux head, plus pytorch-fid's FID
blocks: the pool branch of Mixed_5b..5d, 6b..6e and 7b is avg_pool(3, stride 1, pad 1) that does not count
the padding, Mixed_7c's is a max_pool(3, stride 1, pad 1). Every conv is conv (no bias) -> BatchNorm
(eps 1e-3, running statistics) -> ReLU; the BatchNorm is folded into the conv at run time.
dtype="bfloat16" runs every conv but the first (which sees the image) and the activations in bf16; the
weights stay float32 (rounded after folding), outputs are float32.

Input resize (uint8 NHWC of any size -> 299 x 299; see arjax.eval.fid.resize):
  * `"pytorch-fid"` (default): bilinear `F.interpolate(align_corners=False)` on [0, 1], then 2x - 1. This
    is what pytorch-fid, and VAR / LlamaGen users running it with the .pth, compute; use it to compare
    with numbers made that way.
  * `"tf1"`: TF1's legacy `resize_bilinear` on [0, 255], then (x - 128) / 128: the ops inside the ADM
    evaluator's graph, whose numbers are the ones papers report. The resize differs, so features and FID
    move slightly between the two modes (the network is the same).

Outputs, per image, float32:
  * `pool3` (N, 2048): the global average pool after Mixed_7c (FID, precision / recall);
  * `spatial` (N, 2023): Mixed_6d.branch1x1's output after ReLU, first 7 channels of 17 x 17, flattened in
    H, W, C order (the ADM evaluator's `mixed_6/conv` sFID features);
  * `logits` (N, 1008): pool3 @ fc.weight.T WITHOUT fc.bias (what ADM's Inception Score uses).

    net = Inception.from_file("pt_inception-2015-12-05-6726825d.pth", resize="tf1")
    out = net(images_uint8)       # {"pool3", "spatial", "logits"} numpy
"""
from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arjax.convert.state_dict import fill_params, load_state_dict
from arjax.eval.fid.resize import SIZE, check_mode, inception_input

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
DTYPES = ("float32", "bfloat16")
# nnx.BatchNorm calls its statistics mean / var; torch keeps running_mean / running_var (and a counter).
RENAMES = [(r"\.bn\.mean$", ".bn.running_mean"), (r"\.bn\.var$", ".bn.running_var")]
IGNORE = (r".*\.num_batches_tracked",)
SPATIAL_CHANNELS = 7
FEATURE_DIMS = {"pool3": 2048, "spatial": 17 * 17 * SPATIAL_CHANNELS, "logits": 1008}
_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3, running stats) -> ReLU; torch names `conv` and `bn`."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, *, dtype, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, _pair(kernel), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)
        self.stride = _pair(stride)
        self.padding = tuple((p, p) for p in _pair(padding))
        self.dtype = dtype

    def __call__(self, x):
        # Folding BN into the conv saves a pass over every activation and, in bf16, rounds the kernel once.
        bn = self.bn
        scale = bn.scale[...] * jax.lax.rsqrt(bn.var[...] + bn.epsilon)
        kernel = (self.conv.kernel[...] * scale).astype(self.dtype)
        shift = (bn.bias[...] - bn.mean[...] * scale).astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel, self.stride, self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_HIGHEST if self.dtype == jnp.float32 else None)
        return jax.nn.relu(y + shift)


def _avg_pool_3x3(x):
    """avg_pool2d(3, stride 1, pad 1, count_include_pad=False), summed in float32."""
    y = nnx.avg_pool(x.astype(jnp.float32), (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)
    return y.astype(x.dtype)


def _max_pool_3x3(x, stride: int, pad: int):
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class _Mixed(nnx.Module):
    """A block whose output is the channel concatenation of its branches."""

    def __call__(self, x):
        return jnp.concatenate(self.branches(x), axis=-1)


class InceptionA(_Mixed):
    def __init__(self, cin, pool_features, *, dtype, rngs):
        c = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
        self.branch1x1 = c(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = c(cin, 48, 1), c(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = c(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = c(64, 96, 3, padding=1), c(96, 96, 3, padding=1)
        self.branch_pool = c(cin, pool_features, 1)

    def branches(self, x):
        return [self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool_3x3(x))]


class InceptionB(_Mixed):
    def __init__(self, cin, *, dtype, rngs):
        c = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
        self.branch3x3 = c(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = c(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = c(64, 96, 3, padding=1), c(96, 96, 3, stride=2)

    def branches(self, x):
        return [self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                _max_pool_3x3(x, 2, 0)]


class InceptionC(_Mixed):
    def __init__(self, cin, c7, *, dtype, rngs):
        c = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = c(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = c(cin, c7, 1), c(c7, c7, **row), c(c7, 192, **col)
        self.branch7x7dbl_1 = c(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = c(c7, c7, **col), c(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = c(c7, c7, **col), c(c7, 192, **row)
        self.branch_pool = c(cin, 192, 1)

    def branches(self, x):
        dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return [self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                self.branch7x7dbl_5(self.branch7x7dbl_4(dbl)),
                self.branch_pool(_avg_pool_3x3(x))]


class InceptionD(_Mixed):
    def __init__(self, cin, *, dtype, rngs):
        c = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
        self.branch3x3_1, self.branch3x3_2 = c(cin, 192, 1), c(192, 320, 3, stride=2)
        self.branch7x7x3_1 = c(cin, 192, 1)
        self.branch7x7x3_2 = c(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = c(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = c(192, 192, 3, stride=2)

    def branches(self, x):
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        return [self.branch3x3_2(self.branch3x3_1(x)),
                self.branch7x7x3_4(self.branch7x7x3_3(b7)),
                _max_pool_3x3(x, 2, 0)]


class InceptionE(_Mixed):
    """FIDInceptionE_1 (pool "avg", Mixed_7b) or FIDInceptionE_2 (pool "max", Mixed_7c)."""

    def __init__(self, cin, pool: str, *, dtype, rngs):
        c = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.pool = pool
        self.branch1x1 = c(cin, 320, 1)
        self.branch3x3_1, self.branch3x3_2a, self.branch3x3_2b = c(cin, 384, 1), c(384, 384, **row), c(384, 384, **col)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = c(cin, 448, 1), c(448, 384, 3, padding=1)
        self.branch3x3dbl_3a, self.branch3x3dbl_3b = c(384, 384, **row), c(384, 384, **col)
        self.branch_pool = c(cin, 192, 1)

    def branches(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, 1, 1)
        return [self.branch1x1(x),
                jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1),
                jnp.concatenate([self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl)], axis=-1),
                self.branch_pool(pooled)]


class FIDInceptionV3(nnx.Module):
    """The network on normalised (N, 299, 299, 3) input; attribute names are the torch state-dict keys."""

    def __init__(self, dtype=jnp.float32, *, rngs: nnx.Rngs):
        c = functools.partial(BasicConv2d, dtype=dtype, rngs=rngs)
        kw = dict(dtype=dtype, rngs=rngs)
        # The stem reads the image in float32 whatever `dtype`: bf16's 8-bit significand would quantise the
        # [-1, 1] input more coarsely than its 256 levels (cheap: 3 input channels).
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, dtype=jnp.dtype(jnp.float32), rngs=rngs)
        self.Conv2d_2a_3x3 = c(32, 32, 3)
        self.Conv2d_2b_3x3 = c(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = c(64, 80, 1)
        self.Conv2d_4a_3x3 = c(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (InceptionA(cin, pf, **kw)
                                                       for cin, pf in ((192, 32), (256, 64), (288, 64)))
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (InceptionC(768, c7, **kw)
                                                                      for c7 in (128, 160, 160, 192))
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = InceptionE(1280, "avg", **kw)
        self.Mixed_7c = InceptionE(2048, "max", **kw)
        self.fc = nnx.Linear(2048, 1008, rngs=rngs)

    def __call__(self, x) -> dict:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max_pool_3x3(x, 2, 0)))
        x = _max_pool_3x3(x, 2, 0)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        parts = self.Mixed_6d.branches(x)
        spatial = parts[0][..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)   # NHWC: H, W, C order
        x = jnp.concatenate(parts, axis=-1)
        for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = jnp.dot(pool3, self.fc.kernel[...], precision=_HIGHEST)       # no bias, as ADM's IS
        return {"pool3": pool3, "spatial": spatial.astype(jnp.float32), "logits": logits}


def _forward(graphdef, params, x):
    return nnx.merge(graphdef, params)(x)


# Module-level jits: every Inception with the same dtype and batch shares the network's compilation;
# the network only ever sees 299 x 299 input, so a new image size compiles only the cheap resize.
_network = jax.jit(_forward, static_argnums=0)
_preprocess = jax.jit(inception_input, static_argnames="mode")


@functools.lru_cache(maxsize=None)
def _abstract(dtype: str):
    """(graphdef, pure-dict tree of shapes) for `dtype`; cached because building it takes ~3 s on a CPU."""
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: FIDInceptionV3(jnp.dtype(dtype), rngs=nnx.Rngs(0))))
    return graphdef, nnx.to_pure_dict(abstract)


def _check_dtype(dtype) -> str:
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ValueError(f"unknown FID Inception dtype {dtype!r}: expected one of {DTYPES}")
    return name


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"FID Inception expects uint8 images in [0, 255], found dtype {images.dtype} (shape "
                         f"{images.shape}); convert e.g. with np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"FID Inception expects NHWC images of shape (N, H, W, 3), found shape {images.shape}")
    return images


def _fingerprint(params: dict, resize: str, dtype: str) -> str:
    """sha256 of every tensor (path, shape, bytes, in tree order) + resize mode + dtype, 16 hex digits."""
    h = hashlib.sha256(f"fid-inception|{resize}|{dtype}".encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = np.ascontiguousarray(leaf)
        h.update(f"|{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|".encode())
        h.update(leaf.tobytes())
    return h.hexdigest()[:16]


class Inception:
    """pytorch-fid's FID Inception-v3 as a callable feature extractor (see the module docstring).

    `net(images)` runs chunks of `batch_size` images (the last one padded, so one compilation serves every
    call), each split over the process's local devices along the batch axis.
    """

    def __init__(self, graphdef: nnx.GraphDef, params: dict, *, resize: str, dtype: str, batch_size: int,
                 fingerprint: str):
        self.graphdef, self.resize, self.dtype, self.batch_size = graphdef, resize, dtype, batch_size
        self.fingerprint = fingerprint
        self.softmax_w = np.asarray(params["fc"]["kernel"], np.float32)        # fc.weight.T, (2048, 1008)
        devices = jax.local_devices()
        mesh = Mesh(np.array(devices), ("batch",))
        self._batch_sharding = NamedSharding(mesh, PartitionSpec("batch"))
        self._chunk = -(-batch_size // len(devices)) * len(devices)
        self.params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    @classmethod
    def from_state_dict(cls, sd: dict, *, resize: str = "pytorch-fid", dtype="float32", batch_size: int = 50,
                        what: str | None = None) -> "Inception":
        """From pytorch-fid's state dict as numpy arrays; every tensor must be found with its shape."""
        resize, dtype = check_mode(resize), _check_dtype(dtype)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, found {batch_size!r}")
        graphdef, abstract = _abstract(dtype)
        what = what or "pytorch-fid's FID Inception-v3"
        params = fill_params(abstract, sd, renames=RENAMES, ignore=IGNORE,
                             what=f"{what} (expected {WEIGHTS_FILE} from {WEIGHTS_URL}, or a .safetensors of it)")
        return cls(graphdef, params, resize=resize, dtype=dtype, batch_size=batch_size,
                   fingerprint=_fingerprint(params, resize, dtype))

    @classmethod
    def from_file(cls, path, *, resize: str = "pytorch-fid", dtype="float32", batch_size: int = 50) -> "Inception":
        """From `pt_inception-2015-12-05-6726825d.pth` (needs torch) or a `.safetensors` of the same state dict."""
        check_mode(resize)
        _check_dtype(dtype)
        return cls.from_state_dict(load_state_dict(path), resize=resize, dtype=dtype, batch_size=batch_size,
                                   what=f"pytorch-fid's FID Inception-v3 weight file {path}")

    def _features(self, chunk: np.ndarray) -> dict:
        """One padded chunk of uint8 images -> device arrays (dispatched asynchronously)."""
        x = jax.device_put(chunk, self._batch_sharding)
        return _network(self.graphdef, self.params, _preprocess(x, mode=self.resize))

    def __call__(self, images) -> dict[str, np.ndarray]:
        images = _check_images(images)
        n, chunk = len(images), self._chunk
        results, pending = [], None
        for start in range(0, n, chunk):
            x = images[start:start + chunk]
            if len(x) < chunk:
                x = np.concatenate([x, np.zeros((chunk - len(x),) + x.shape[1:], np.uint8)])
            out = self._features(x)
            if pending is not None:             # fetch the previous chunk while this one runs
                results.append(jax.device_get(pending))
            pending = out
        if pending is not None:
            results.append(jax.device_get(pending))
        return {k: (np.concatenate([r[k] for r in results])[:n] if results else np.zeros((0, d), np.float32))
                for k, d in FEATURE_DIMS.items()}

    def __repr__(self) -> str:
        return (f"Inception(resize={self.resize!r}, dtype={self.dtype!r}, batch_size={self.batch_size}, "
                f"fingerprint={self.fingerprint!r}, input {SIZE}x{SIZE})")
