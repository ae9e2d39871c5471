"""What is trained: each task owns its model, loss, previews and export; the trainer owns the rest.

A task's parameters are a pure-dict pytree (what the optimiser, EMA and orbax see); the module is
rebuilt inside jitted code with `nnx.merge(graphdef, params)`.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.init import abstract_module, create
from arjax.nn.models.var import VAR, VARConfig
from arjax.nn.tokenizers.msvq import MultiScaleVQVAE, VQVAEConfig
from arjax.sample.next_scale import sample_next_scale
from arjax.train import checkpoint
from arjax.train.losses import straight_through, token_cross_entropy, var_metrics, vq_losses


def _pure(module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


class TokenizerTask:
    """VAR's multi-scale residual VQVAE: L1 + L2 reconstruction, commitment and codebook losses
    averaged over the partial f_hat of every scale, and dead-code re-seeding from encoder features."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.model_cfg = VQVAEConfig(**cfg.tokenizer.to_dict())
        self.graphdef = nnx.split(abstract_module(MultiScaleVQVAE, self.model_cfg))[0]
        self.image_size = self.model_cfg.image_size

    def init_params(self, seed: int):
        return _pure(create(MultiScaleVQVAE, self.model_cfg, seed))

    def init_extra(self):  # running share of each code's use, for dead-code detection
        v = self.model_cfg.vocab_size
        return {"code_use": jnp.full((v,), 1.0 / v, jnp.float32)}

    def constants(self):
        return {}

    def loss(self, params, consts, batch, key):
        del consts, key
        t = self.cfg.loss
        vae = nnx.merge(self.graphdef, params)
        x = batch["image"]
        f = vae.features(x)
        idx_list, fhats = vae.quantize.quantize(f, cumulative=True)
        commit, codebook = (sum(parts) / len(fhats) for parts in zip(*(vq_losses(f, fh, t.beta) for fh in fhats)))
        rec = vae.decoder(vae.post_quant_conv(straight_through(f, fhats[-1])))
        l1, l2 = jnp.mean(jnp.abs(rec - x)), jnp.mean(jnp.square(rec - x))
        loss = t.l1 * l1 + t.l2 * l2 + commit + codebook
        counts = jnp.zeros((self.model_cfg.vocab_size,), jnp.float32)
        for idx in idx_list:
            counts = counts.at[idx.reshape(-1)].add(1.0)
        mse01 = jnp.mean(jnp.square((jnp.clip(rec, -1, 1) - x) / 2))
        metrics = {"loss": loss, "l1": l1, "l2": l2, "commit": commit, "codebook": codebook,
                   "psnr": -10 * jnp.log10(mse01 + 1e-10), "usage": jnp.mean(counts > 0) * 100}
        return loss, (metrics, {"counts": counts, "features": jax.lax.stop_gradient(f)})

    def post_update(self, params, extra, aux, step, key):
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
        return params, {"code_use": jnp.where(dead, 1.0 / v, use)}

    def preview(self, params, consts, batch, seed: int):
        """Top row real images, bottom row their reconstructions, in [0, 1]."""
        vae = nnx.merge(self.graphdef, params)
        x = batch["image"][:8]
        rec = vae.decode(vae.encode(x))
        return (jnp.concatenate([x, rec]) + 1) / 2, None

    def export_meta(self):
        return {"family": "msvq", "tokenizer": dataclasses.asdict(self.model_cfg)}

    def export_params(self, params, consts):
        return {"tokenizer": params}


class VARTask:
    """VAR on tokens of a frozen, already trained tokenizer (`cfg.tokenizer_dir`)."""

    def __init__(self, cfg):
        self.cfg = cfg
        meta = checkpoint.read_meta(cfg.tokenizer_dir)
        self.tok_cfg = VQVAEConfig(**meta["tokenizer"])
        tok_abstract = abstract_module(MultiScaleVQVAE, self.tok_cfg)
        self.tok_graphdef = nnx.split(tok_abstract)[0]
        self.tok_params = checkpoint.load_params(cfg.tokenizer_dir, {"tokenizer": _pure(tok_abstract)})["tokenizer"]
        model = dict(cfg.model.to_dict(), vocab_size=self.tok_cfg.vocab_size, cvae=self.tok_cfg.z_channels,
                     patch_nums=self.tok_cfg.patch_nums)
        self.model_cfg = VARConfig(**model)
        self.graphdef = nnx.split(abstract_module(VAR, self.model_cfg))[0]
        self.image_size = self.tok_cfg.image_size

    def init_params(self, seed: int):
        return _pure(create(VAR, self.model_cfg, seed))

    def init_extra(self):
        return {}

    def constants(self):
        return {"tokenizer": self.tok_params}

    def loss(self, params, consts, batch, key):
        tok = nnx.merge(self.tok_graphdef, consts["tokenizer"])
        mcfg, t = self.model_cfg, self.cfg.loss
        if "tokens" in batch:  # from a token cache
            tokens = batch["tokens"]
        else:
            tokens = jax.lax.stop_gradient(tok.encode(batch["image"]))
        x_in = jax.lax.stop_gradient(tok.quantize.indices_to_var_input(tokens))
        labels = batch["label"]
        drop = jax.random.bernoulli(key, t.class_dropout, labels.shape)
        labels = jnp.where(drop, mcfg.num_classes, labels)
        logits = nnx.merge(self.graphdef, params)(labels, x_in)
        # uniform 1/L token weights, mean over the batch
        loss = jnp.mean(token_cross_entropy(logits, tokens, t.label_smoothing))
        metrics = {"loss": loss, **var_metrics(logits, tokens, mcfg.scale_lens[-1])}
        return loss, (metrics, {})

    def post_update(self, params, extra, aux, step, key):
        return params, extra

    def preview(self, params, consts, batch, seed: int):
        """A few samples of each class, rows by class."""
        s = self.cfg.sample
        n_cls = min(self.model_cfg.num_classes, s.preview_classes)
        labels = jnp.repeat(jnp.arange(n_cls), s.preview_per_class)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(len(labels)))
        tok = nnx.merge(self.tok_graphdef, consts["tokenizer"])
        imgs, _, _ = sample_next_scale(tok, nnx.merge(self.graphdef, params), labels, keys, cfg=s.cfg,
                                       top_k=min(s.top_k, self.model_cfg.vocab_size), top_p=s.top_p)
        return imgs, labels

    def export_meta(self):
        return {"family": "var", "tokenizer": dataclasses.asdict(self.tok_cfg),
                "model": dataclasses.asdict(self.model_cfg)}

    def export_params(self, params, consts):
        return {"tokenizer": consts["tokenizer"], "model": params}


TASKS = {"tokenizer": TokenizerTask, "var": VARTask}

