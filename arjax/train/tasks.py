"""What is trained: each task owns its model, loss, previews and export; the trainer owns the rest.

A task's parameters are a pure-dict pytree (what the optimiser, EMA and orbax see); the module is
rebuilt inside jitted code with `nnx.merge(graphdef, params)`. `Task` is the protocol the trainer
calls; `arjax.members.task_class(cfg.task)` finds a config's task (tokenizer kinds train with the
tasks below, generators with `arjax.train.generator_tasks`).
"""
from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from arjax import members, xla_cpu
from arjax.nn.discriminator import DiscriminatorConfig, PatchDiscriminator
from arjax.nn.init import abstract_module, create
from arjax.nn.lpips import load_lpips, lpips_distance
from arjax.ops.resample import resize_area
from arjax.train.generator_tasks import pure
from arjax.train.losses import disc_loss, generator_adv_loss, straight_through, vq_losses
from arjax.train.optim import make_optimizer


class Task(Protocol):
    """What the trainer calls. `phase(step)` is a static argument of the compiled step (one compile per
    distinct phase); `loss` returns (loss, (metrics, aux)) and `post_update` may change params/extra
    from aux after the optimiser step."""
    image_size: int

    def __init__(self, cfg) -> None: ...
    def init_params(self, seed: int) -> Any: ...
    def init_extra(self) -> Any: ...
    def constants(self) -> Any: ...
    def prepare_source(self, source, workdir, progress: bool) -> Any: ...
    def phase(self, step: int) -> Any: ...
    def compiler_options(self) -> dict | None: ...  # the train step's XLA options (None: XLA's defaults)
    def loss(self, params, extra, consts, batch, key, step, phase=None) -> tuple: ...
    def post_update(self, params, extra, aux, step, key) -> tuple: ...
    def preview(self, params, consts, batch, seed: int) -> tuple: ...
    def export_meta(self) -> dict: ...
    def export_params(self, params, consts) -> dict: ...


class TokenizerTask:
    """VAR's multi-scale residual VQVAE: L1 + L2 reconstruction, commitment and codebook losses
    averaged over the partial f_hat of every scale, dead-code re-seeding from encoder features, and
    optionally an LPIPS perceptual loss (user-supplied VGG weights) and a PatchGAN discriminator
    trained by its own optimiser (its parameters and optimiser state live in `extra`)."""

    kind = "msvq"  # key of arjax.members.TOKENIZERS

    def __init__(self, cfg):
        self.cfg = cfg
        self.tok_kind = members.tokenizer_kind(self.kind)
        self.model_cfg = self.tok_kind.config_cls(**cfg.tokenizer.to_dict())
        self.graphdef = nnx.split(abstract_module(self.tok_kind.cls, self.model_cfg))[0]
        self.image_size = self.model_cfg.image_size
        d = cfg.disc
        self.use_disc = d.weight > 0
        if self.use_disc:
            self.disc_cfg = DiscriminatorConfig(ch=d.ch, num_layers=d.num_layers)
            self.disc_graphdef = nnx.split(abstract_module(PatchDiscriminator, self.disc_cfg))[0]
            self.disc_tx = make_optimizer(lambda _: d.lr, weight_decay=0.0, b1=d.b1, b2=d.b2,
                                          grad_clip=d.grad_clip)
        if cfg.loss.perceptual < 0 or d.weight < 0:
            raise ValueError("loss.perceptual and disc.weight must be >= 0 (0 turns them off)")
        if cfg.loss.perceptual > 0 and not (cfg.loss.lpips_vgg and cfg.loss.lpips_lin):
            raise ValueError("loss.perceptual > 0 needs the LPIPS weights: set loss.lpips_vgg (torchvision "
                             "vgg16-397923af.pth) and loss.lpips_lin (lpips weights/v0.1/vgg.pth), or "
                             "loss.perceptual=0")
        if cfg.loss.perceptual > 0 and self.image_size < 16:  # VGG pools 4 times before its last tap
            raise ValueError(f"loss.perceptual needs images of at least 16 px; this tokenizer makes "
                             f"{self.image_size} px")
        self.lpips = load_lpips(cfg.loss.lpips_vgg, cfg.loss.lpips_lin) if cfg.loss.perceptual > 0 else None

    def init_params(self, seed: int):
        return pure(create(self.tok_kind.cls, self.model_cfg, seed))

    def init_extra(self):
        v = self.model_cfg.vocab_size
        extra = {"code_use": jnp.full((v,), 1.0 / v, jnp.float32)}  # running share of each code's use
        if self.use_disc:
            disc = pure(create(PatchDiscriminator, self.disc_cfg, self.cfg.seed + 1))
            extra.update(disc=disc, disc_opt=self.disc_tx.init(disc))
        return extra

    def constants(self):
        return {"lpips": self.lpips[1]} if self.lpips else {}

    def phase(self, step: int) -> bool | None:
        """Whether the discriminator is on: before `disc.start` the step is compiled without it."""
        return step >= self.cfg.disc.start if self.use_disc else None

    def compiler_options(self) -> dict | None:
        """Convolution-heavy, like the tokenizer at inference: XLA:CPU's own convolutions (arjax.xla_cpu)."""
        return xla_cpu.compiler_options()

    def prepare_source(self, source, workdir, progress: bool):
        if self.cfg.data.cache_tokens:
            raise ValueError("data.cache_tokens applies to VAR training, not to the tokenizer")
        return source

    def loss(self, params, extra, consts, batch, key, step, phase=None):
        del key
        t = self.cfg.loss
        disc_on = self.use_disc and phase is not False
        vae = nnx.merge(self.graphdef, params)
        x = batch["image"]
        rec, idx_list, f, loss, metrics = self.reconstruct(vae, x)
        l1, l2 = jnp.mean(jnp.abs(rec - x)), jnp.mean(jnp.square(rec - x))
        loss = loss + t.l1 * l1 + t.l2 * l2
        if self.lpips:
            metrics["perceptual"] = jnp.mean(lpips_distance(self.lpips[0], consts["lpips"], rec, x))
            loss = loss + t.perceptual * metrics["perceptual"]
        if disc_on:
            fake_logits = nnx.merge(self.disc_graphdef, extra["disc"])(rec)
            metrics["adv"] = generator_adv_loss(fake_logits, self.cfg.disc.loss)
            loss = loss + jnp.where(step >= self.cfg.disc.start, self.cfg.disc.weight, 0.0) * metrics["adv"]
        counts = jnp.zeros((self.model_cfg.vocab_size,), jnp.float32)
        for idx in idx_list:
            counts = counts.at[idx.reshape(-1)].add(1.0)
        mse01 = jnp.mean(jnp.square((jnp.clip(rec, -1, 1) - x) / 2))
        metrics.update({"loss": loss, "l1": l1, "l2": l2,
                        "psnr": -10 * jnp.log10(mse01 + 1e-10), "usage": jnp.mean(counts > 0) * 100})
        aux = {"counts": counts, "features": jax.lax.stop_gradient(f)}
        if disc_on:
            aux.update(real=x, fake=jax.lax.stop_gradient(rec))
        return loss, (metrics, aux)

    def reconstruct(self, vae, x):
        """-> (full-size reconstruction, per-scale indices, encoder features, quantisation loss, metrics).
        The commitment and codebook losses are averaged over the partial f_hat of every scale."""
        t = self.cfg.loss
        f = vae.features(x)
        idx_list, fhats = vae.quantize.quantize(f, cumulative=True)
        commit, codebook = (sum(parts) / len(fhats) for parts in zip(*(vq_losses(f, fh, t.beta) for fh in fhats)))
        rec = vae.decoder(vae.post_quant_conv(straight_through(f, fhats[-1])))
        return rec, idx_list, f, commit + codebook, {"commit": commit, "codebook": codebook}

    def post_update(self, params, extra, aux, step, key):
        params, extra = self._reseed_dead_codes(params, extra, aux, step, key)
        if "fake" not in aux:  # no discriminator, or not yet (the phase before disc.start)
            return params, extra, {}
        return (params, *self._disc_update(extra, aux, step))

    def _reseed_dead_codes(self, params, extra, aux, step, key):
        """Codes whose running use fell below `dead_threshold / V` are re-seeded every `reset_every`
        steps with encoder feature vectors of the current batch (plus a little noise)."""
        t, v = self.cfg.loss, self.model_cfg.vocab_size
        use = t.use_decay * extra["code_use"] + (1 - t.use_decay) * aux["counts"] / jnp.sum(aux["counts"])
        feats = aux["features"].reshape(-1, aux["features"].shape[-1])
        k1, k2 = jax.random.split(key)
        pick = feats[jax.random.randint(k1, (v,), 0, feats.shape[0])]
        pick = pick + 0.01 * jnp.std(feats) * jax.random.normal(k2, pick.shape)
        dead = (use < t.dead_threshold / v) & (t.reset_every > 0) & ((step + 1) % max(t.reset_every, 1) == 0)
        codebook = params["quantize"]["embedding"]
        params = {**params, "quantize": {**params["quantize"],
                                         "embedding": jnp.where(dead[:, None], pick, codebook)}}
        return params, {**extra, "code_use": jnp.where(dead, 1.0 / v, use)}

    def _disc_update(self, extra, aux, step):
        """One optimiser step of the discriminator on (real, reconstruction); none before disc.start."""
        def d_loss(disc):
            d = nnx.merge(self.disc_graphdef, disc)
            return disc_loss(d(aux["real"]), d(aux["fake"]), self.cfg.disc.loss)

        value, grads = jax.value_and_grad(d_loss)(extra["disc"])
        updates, opt = self.disc_tx.update(grads, extra["disc_opt"], extra["disc"])
        on = step >= self.cfg.disc.start
        disc = jax.tree.map(lambda new, old: jnp.where(on, new, old), optax.apply_updates(extra["disc"], updates),
                            extra["disc"])
        opt = jax.tree.map(lambda new, old: jnp.where(on, new, old), opt, extra["disc_opt"])
        return {**extra, "disc": disc, "disc_opt": opt}, {"disc_loss": value}

    def preview(self, params, consts, batch, seed: int):
        """Top row real images, bottom row their reconstructions, in [0, 1]."""
        vae = nnx.merge(self.graphdef, params)
        x = batch["image"][:8]
        rec = vae.decode(vae.encode(x))
        return (jnp.concatenate([x, rec]) + 1) / 2, None

    def export_meta(self):
        return members.model_meta(self.kind, self.model_cfg)

    def export_params(self, params, consts):
        return {"tokenizer": params}


class FlexTokenizerTask(TokenizerTask):
    """FlexVAR's tokenizer (LlamaGen's VQ with an l2-normalised codebook, every scale quantised on its
    own) trained to reconstruct every scale: scale k's codes decode to the image area-resized to
    downsample * pn_k. The full-size scale carries the L1/L2 (and perceptual, adversarial) losses as
    for the msvq tokenizer; the smaller scales add `loss.scale_recon` x their mean L1 + L2."""
    kind = "flexvq"

    def reconstruct(self, vae, x):
        t, pns, ds = self.cfg.loss, self.model_cfg.patch_nums, self.model_cfg.downsample
        f = vae.features(x)  # also what dead codes are re-seeded from
        recs, vq, idx_list = vae.reconstruct_scales(x, pns, t.beta, features=f)
        small = [jnp.mean(jnp.abs(r - target)) + jnp.mean(jnp.square(r - target))
                 for r, target in ((r, resize_area(x, ds * pn)) for r, pn in zip(recs[:-1], pns[:-1]))]
        scale_rec = sum(small) / max(len(small), 1)
        return recs[-1], idx_list, f, vq + t.scale_recon * scale_rec, {"vq": vq, "scale_rec": scale_rec}
