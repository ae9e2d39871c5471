"""LPIPS perceptual distance (Zhang et al. 2018, "v0.1" linear-calibrated VGG variant) in Flax NNX, NHWC.

Two images in [-1, 1] go through a fixed input scaling and the VGG16 conv stack; at relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3 the features are unit-normalised over channels, their squared difference is
weighted per channel by a learned 1x1 "lin" layer and averaged over space; the five results are summed.

The weights are never downloaded or shipped with arjax. The user supplies two files:
  * the torchvision VGG16 ImageNet weights, `vgg16-397923af.pth` (what `torchvision.models.vgg16(
    weights="IMAGENET1K_V1")` downloads); only the `features.*` tensors are used, `classifier.*` is ignored;
  * the LPIPS linear layers, `weights/v0.1/vgg.pth` of the `lpips` package (github.com/richzhang/
    PerceptualSimilarity), keys `lin{0..4}.model.1.weight`.
Either may be a `.safetensors` file instead (then torch is not needed). Without them LPIPS is off.

Usage (the params are a pure-dict pytree, so they can be passed into jitted code as a constant):
    graphdef, params = load_lpips("vgg16-397923af.pth", "vgg.pth")
    d = lpips_distance(graphdef, params, x, y)      # (B,), differentiable in x and y
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.convert.state_dict import fill_params, load_state_dict

# VGG16 conv channels per block; a 2x2 max-pool separates the blocks and the last conv of each is a tap.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# LPIPS's fixed input scaling: images in [-1, 1] -> roughly ImageNet-normalised.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# `features` is an nnx.Dict keyed by torchvision's Sequential index (ReLUs and pools take the gaps), so its
# paths already are the torch keys; the lin layers are a list whose torch keys are `lin{i}.model.1.*`.
RENAMES = [(r"^lin\.(\d)\.", r"lin\1.model.1.")]


def _vgg16_layout():
    """[(torchvision index, c_in, c_out, is_tap, pool_before)] for the 13 convs of vgg16.features."""
    layout, idx, cin = [], 0, 3
    for b, block in enumerate(VGG16_BLOCKS):
        for j, cout in enumerate(block):
            layout.append((idx, cin, cout, j == len(block) - 1, b > 0 and j == 0))
            idx, cin = idx + 2, cout      # conv, ReLU
        idx += 1                          # MaxPool2d
    return layout


def _unit_normalise(f, eps: float = 1e-10):
    """f / (||f||_C + eps). A where-guarded sqrt keeps the gradient finite at all-zero ReLU pixels."""
    n2 = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    norm = jnp.where(n2 > 0, jnp.sqrt(jnp.where(n2 > 0, n2, 1.0)), 0.0)
    return f / (norm + eps)


class LPIPS(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.layout = tuple(_vgg16_layout())
        self.features = nnx.Dict({str(i): nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
                                  for i, cin, cout, _, _ in self.layout})
        taps = [cout for _, _, cout, tap, _ in self.layout if tap]
        self.lin = nnx.List([nnx.Conv(c, 1, (1, 1), use_bias=False, rngs=rngs) for c in taps])

    def taps(self, x):
        """The five tapped VGG16 activations of NHWC images x (already scaled)."""
        out = []
        for i, _, _, tap, pool in self.layout:
            if pool:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            x = jax.nn.relu(self.features[str(i)](x))
            if tap:
                out.append(x)
        return out

    def __call__(self, x, y):
        """LPIPS distance between NHWC image batches x, y in [-1, 1]: shape (B,)."""
        b = x.shape[0]
        shift, scale = jnp.asarray(SHIFT, x.dtype), jnp.asarray(SCALE, x.dtype)
        h = (jnp.concatenate([x, y]) - shift) / scale   # one VGG pass for both batches
        total = 0.0
        for lin, f in zip(self.lin, self.taps(h)):
            f = _unit_normalise(f)
            total = total + jnp.mean(lin(jnp.square(f[:b] - f[b:])), axis=(1, 2, 3))
        return total


def load_lpips(vgg_path, lin_path) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, params) of LPIPS from a torchvision vgg16 file and the lpips `vgg.pth` lin file.

    Every needed tensor must be present with the right shape (ValueError naming it otherwise); tensors
    other than `classifier.*` that the model does not use are reported too, so a wrong file is caught.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LPIPS(rngs=nnx.Rngs(0))))
    sd = {**load_state_dict(vgg_path), **load_state_dict(lin_path)}
    params = fill_params(nnx.to_pure_dict(abstract), sd, renames=RENAMES, ignore=(r"classifier\..*",),
                         what=f"LPIPS ({vgg_path} + {lin_path})")
    return graphdef, jax.tree.map(jnp.asarray, params)


def lpips_distance(graphdef: nnx.GraphDef, params: dict, x, y):
    """Pure LPIPS(x, y) -> (B,) for use inside jitted code; the weights are constants (no gradient)."""
    return nnx.merge(graphdef, jax.lax.stop_gradient(params))(x, y)
