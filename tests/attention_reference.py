"""Float64 NumPy attention (forward and the textbook backward) and the check every kernel test runs
against it: a kernel `run(q, k, v)` on (B, L, H, D) inputs in `dtype`, its output and dQ/dK/dV, each
within `tol` of the reference relative to the reference's largest magnitude."""
import jax
import jax.numpy as jnp
import numpy as np

from arjax.ops.block_sparse import token_levels


def dense_mask(mask, lens, length):
    lvl = token_levels(mask, lens, length)
    return lvl[None, :] == lvl[:, None] if mask == "block_diagonal" else lvl[None, :] <= lvl[:, None]


def reference(q, k, v, g, mask, scale):
    """float64 attention output and the gradients of sum(out * g)."""
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v)
    dp = np.einsum("bqhd,bkhd->bhqk", g, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bhqk,bkhd->bqhd", ds, k) * scale
    dk = np.einsum("bhqk,bqhd->bkhd", ds, q) * scale
    dv = np.einsum("bhqk,bqhd->bkhd", p, g)
    return out, (dq, dk, dv)


def check_kernel(run, lens, mask, heads, dim, dtype, tol, seed, batch=2, scale=None):
    """`run(q, k, v, scale)` against float64 on fresh normal inputs."""
    length = sum(lens)
    rng = np.random.default_rng(seed)
    q, k, v, g = (rng.normal(size=(batch, length, heads, dim)) for _ in range(4))
    scale = dim ** -0.5 if scale is None else scale
    args = [jnp.asarray(x, dtype) for x in (q, k, v)]
    # the reference sees the inputs as the kernel does (rounded to dtype), so only the kernel's error counts
    q, k, v = (np.asarray(a, np.float64) for a in args)
    want, want_grads = reference(q, k, v, g, dense_mask(mask, lens, length), scale)
    with jax.default_matmul_precision("highest"):
        out, vjp = jax.vjp(lambda q, k, v: run(q, k, v, scale), *args)
        grads = vjp(jnp.asarray(g, dtype))
    for name, got, ref in [("out", out, want), *zip(("dq", "dk", "dv"), grads, want_grads)]:
        err = np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max()
        assert err < tol, f"{name}: relative error {err:.2e} (lens {lens}, mask {mask}, {heads}x{dim}, {dtype})"
