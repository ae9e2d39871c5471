"""The one attention entry point used by every model.

`impl` names the implementation:

| impl     | what                                                              | runs on                  |
|----------|-------------------------------------------------------------------|--------------------------|
| "xla"    | dense reference: explicit boolean mask, float32 softmax            | everywhere               |
| "pallas" | block-sparse flash kernel, `arjax.ops.block_sparse` (Triton layout) | GPU; CPU interpreted     |
| "splash" | JAX's splash attention on a mask from scale_lens, `arjax.ops.splash` | TPU; CPU interpreted     |
| "auto"   | per target platform: "splash" on TPU, "pallas" on GPU (power-of-two head dim), "xla" on CPU |  |

Evidence for "auto": on one H100 the Pallas kernel made a VAR-d16 training step 1.7x faster than XLA
(benchmarks/RESULTS.md, 2026-11-24); on TPU splash is compiled ahead of time by the tests and by
`arjax plan` (temporaries fall by the (L x L) score matrices), its speed is not measured here (no TPU);
on CPU the kernels only run interpreted, so XLA, where a block-causal mask runs as a few dense attentions
(`scale_group_attention`: consecutive scales grouped to >= 64 queries, each group over its key prefix):
at 256 px 63% of the dense scores, no mask on the large scales, and the fastest of the three on this
project's 2-core CPU (benchmarks/vs_official.py, README). The target platform is the device kind of the mesh
being traced for (`jax.set_mesh`, e.g. a TPU topology compiled ahead of time from a CPU host), else the
default backend. KV-cached steps, where queries see every cached key and no mask applies, always take
the dense path. Under a multi-device mesh the kernels run per device on its rows of the batch and its
heads (`shard_map` over data x fsdp and tensor): q, k and v are never gathered. With "auto"/"xla",
block-diagonal masks (HMAR) run dense attention per scale on static slices: no L x L scores, and it
equals the masked result.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from arjax import parallel
from arjax.ops import scales

MASKS = ("block_causal", "block_diagonal", "causal", "none")
IMPLS = ("auto", "xla", "pallas", "splash")
KERNELS = {"gpu": "pallas", "tpu": "splash"}  # the kernel each platform runs; CPU interprets either


def build_mask(mask: str, scale_lens, q_len: int, k_len: int) -> np.ndarray | None:
    """Host-side boolean (q_len, k_len) mask, or None for no mask."""
    if mask == "none":
        return None
    if mask == "causal":  # with a KV cache the queries are the last q_len positions
        return np.tril(np.ones((q_len, k_len), bool), k_len - q_len)
    if q_len != k_len:  # next-scale KV-cached steps see everything cached: they pass mask="none"
        raise ValueError(f"mask={mask!r} needs as many queries as keys; got {q_len} and {k_len}")
    if scale_lens is None:
        raise ValueError(f"mask={mask!r} needs scale_lens")
    if sum(scale_lens) != q_len:
        raise ValueError(f"scale_lens sum to {sum(scale_lens)} tokens but the sequence has {q_len}")
    return {"block_causal": scales.block_causal_mask,
            "block_diagonal": scales.block_diagonal_mask}[mask](tuple(scale_lens))


def dense_attention(q, k, v, mask=None, *, scale: float | None = None):
    """q: (B, Lq, H, D), k/v: (B, Lk, H, D), mask: bool broadcastable to (B, H, Lq, Lk)."""
    if scale is None:
        scale = q.shape[-1] ** -0.5
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        s = jnp.where(mask, s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v,
                      preferred_element_type=jnp.float32).astype(q.dtype)


def attention(q, k, v, *, scale_lens=None, mask: str = "block_causal", impl: str = "auto",
              scale: float | None = None, interpret: bool = False):
    """q, k, v: (B, L, H, D); `scale_lens` tokens per scale; returns (B, Lq, H, D).

    `scale=None` means 1/sqrt(D). `interpret` runs the Pallas kernel in interpret mode (always on CPU).
    """
    if mask not in MASKS:
        raise ValueError(f"attention mask must be one of {MASKS}, got {mask!r}")
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {IMPLS}, got {impl!r}")
    platform = target_platform()
    impl = resolve_impl(impl, platform, q_len=q.shape[1], k_len=k.shape[1], head_dim=q.shape[-1])
    if impl in ("pallas", "splash"):
        if platform not in ("cpu", _platform_of(impl)):
            raise ValueError(f"attention impl={impl!r} is the {_platform_of(impl).upper()} kernel and cannot "
                             f"run on {platform}: use impl={KERNELS.get(platform, 'xla')!r} or 'auto'")
        return sharded_kernel(impl, q, k, v, scale_lens=scale_lens, mask=mask, scale=scale,
                              interpret=interpret or platform == "cpu")
    if mask == "block_diagonal":
        return per_scale_attention(q, k, v, scale_lens, scale=scale)
    if mask == "block_causal" and platform == "cpu":
        return scale_group_attention(q, k, v, scale_lens, scale=scale)
    m = build_mask(mask, scale_lens, q.shape[1], k.shape[1])
    return dense_attention(q, k, v, None if m is None else jnp.asarray(m), scale=scale)


def per_scale_attention(q, k, v, scale_lens, *, scale: float | None = None):
    """Block-diagonal attention as one dense attention per scale (static slices), concatenated: the
    cost is sum(n_k^2) instead of L^2, the result that of the masked dense softmax."""
    if q.shape[1] != k.shape[1] or scale_lens is None or sum(scale_lens) != q.shape[1]:
        build_mask("block_diagonal", scale_lens, q.shape[1], k.shape[1])  # raises the usual error
    outs, s = [], 0
    for n in scale_lens:
        outs.append(dense_attention(q[:, s:s + n], k[:, s:s + n], v[:, s:s + n], scale=scale))
        s += n
    return jnp.concatenate(outs, axis=1)


def scale_groups(scale_lens, min_queries: int = 64) -> list[tuple[int, ...]]:
    """Consecutive scales merged until a group holds >= min_queries queries (the last group takes the rest):
    many tiny attentions cost more in per-op overhead than the masked scores they skip."""
    groups, cur = [], []
    for n in scale_lens:
        cur.append(n)
        if sum(cur) >= min_queries:
            groups.append(tuple(cur))
            cur = []
    if cur:
        groups.append(tuple(cur))
    return groups


def scale_group_attention(q, k, v, scale_lens, *, scale: float | None = None):
    """Block-causal attention as one dense attention per group of scales (`scale_groups`) over the keys up to
    the group's end, concatenated: a group of one scale needs no mask (its queries see exactly that
    prefix); a group of several takes the block-causal mask's rows. Equals the masked dense result."""
    m = build_mask("block_causal", scale_lens, q.shape[1], k.shape[1])  # also checks the schedule
    outs, s = [], 0
    for group in scale_groups(scale_lens):
        e = s + sum(group)
        rows = None if len(group) == 1 else jnp.asarray(m[s:e, :e])
        outs.append(dense_attention(q[:, s:e], k[:, :e], v[:, :e], rows, scale=scale))
        s = e
    return jnp.concatenate(outs, axis=1)


def target_platform() -> str:
    """The platform being traced for: the mesh's devices (an ahead-of-time TPU topology included), else the
    default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None:
        return mesh.abstract_device.platform
    return jax.default_backend()


def _platform_of(kernel: str) -> str:
    return {v: k for k, v in KERNELS.items()}[kernel]


def resolve_impl(impl: str, platform: str, *, q_len: int, k_len: int, head_dim: int) -> str:
    """What "auto" means for this call (see the module docstring); other impls are returned as given,
    except that a kernel is never used for KV-cached steps (q_len != k_len)."""
    if q_len != k_len:
        return "xla"
    if impl != "auto":
        return impl
    kernel = KERNELS.get(platform)
    if kernel == "pallas" and head_dim & (head_dim - 1):  # Triton tiles are powers of two
        return "xla"
    return kernel or "xla"


def sharded_kernel(impl: str, q, k, v, *, scale_lens, mask: str, scale, interpret: bool):
    """The block-sparse kernel on each device's share of the batch (mesh axes data x fsdp) and of the heads
    (tensor), under `shard_map`; outside a multi-device mesh, the kernel as is."""
    if impl == "pallas":
        from arjax.ops.block_sparse import block_sparse_attention as kernel
    else:
        from arjax.ops.splash import splash_attention as kernel
    fn = functools.partial(kernel, scale_lens=scale_lens, mask=mask, scale=scale, interpret=interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v)
    spec = P(_dividing_axes(mesh, parallel.BATCH_AXES, q.shape[0]), None,
             _dividing_axes(mesh, ("tensor",), q.shape[2]), None)
    return jax.shard_map(fn, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def _dividing_axes(mesh, axes, size: int):
    """The mesh axes (of `axes`, larger than 1) that split a dimension of `size` evenly, or None. An
    indivisible dimension is kept whole on every device (gathered), which is correct but costs memory."""
    axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
    while axes and size % parallel._axis_size(mesh, axes):
        axes = axes[:-1]
    return axes or None
