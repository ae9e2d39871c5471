"""Runs one piece of a multi-device test in its own process, where XLA_FLAGS (fake CPU devices) and
jax.distributed can be set before JAX starts. Driven by tests/test_sharding.py and test_multiprocess.py.

    python tests/multidevice_worker.py tokenizer OUT
    python tests/multidevice_worker.py sample OUT.npz
    python tests/multidevice_worker.py tiny-model OUT  |  sample-npz MODEL OUT.npz
    python tests/multidevice_worker.py eval-fid-npz SAMPLES.npz REF.npz INCEPTION OUT_DIR
    python tests/multidevice_worker.py train WORKDIR TOKENIZER DATA FSDP TENSOR [STEPS]
    python tests/multidevice_worker.py restore WORKDIR TOKENIZER DATA FSDP TENSOR OUT.npz

Multi-process: set ARJAX_COORDINATOR / ARJAX_NUM_PROCESSES / ARJAX_PROCESS_ID (arjax.parallel.initialize).
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


VAR_CONFIG = f"{REPO}/configs/quickstart.py:var"


def var_overrides(tokenizer_dir, data, fsdp, tensor, steps=4):
    return [
        f"tokenizer_dir={tokenizer_dir}", "model.depth=2", "model.embed_dim=64", "model.num_heads=4",
        "batch_size=8", f"steps={steps}", "log_every=1", "sample_every=0", "checkpoint.every=2",
        "checkpoint.keep=5", "data.kwargs.num_examples=64", "optim.warmup_steps=1", "sample.preview_classes=2",
        "sample.preview_per_class=1", f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]


def var_config(*args):
    from arjax.config import load_config
    return load_config(VAR_CONFIG, var_overrides(*args))


def make_tokenizer(out):
    from arjax.config import load_config
    from arjax.train.tasks import TokenizerTask
    from arjax.train.trainer import export
    cfg = load_config(f"{REPO}/configs/quickstart.py:tokenizer", [
        "tokenizer.ch_mult=(1,2)", "tokenizer.patch_nums=(1,2,4)", "tokenizer.vocab_size=64",
        "tokenizer.z_channels=8"])
    task = TokenizerTask(cfg)
    export(task, task.init_params(0), {}, Path(out))


def restore(workdir, tokenizer_dir, data, fsdp, tensor, out):
    """The latest checkpoint restored onto this process's mesh, and the next batch the resumed run reads."""
    import jax
    import numpy as np

    from arjax import parallel
    from arjax.data import make_dataset, make_source
    from arjax.train import checkpoint, trainer
    from arjax.train.generator_tasks import VARTask

    cfg = var_config(tokenizer_dir, data, fsdp, tensor)
    mesh = parallel.make_mesh(cfg.mesh.to_dict())
    task = VARTask(cfg)
    init_state = trainer.state_initializer(task, trainer.build_optimizer(cfg)[0], cfg)

    source = task.prepare_source(make_source("synthetic", num_examples=64, seed=0, image_size=task.image_size),
                                 Path(workdir), False)
    local = trainer._local_batch_size(cfg.batch_size, mesh)

    def dataset(start=0):
        return make_dataset(source, batch_size=local, seed=cfg.seed, process_index=jax.process_index(),
                            process_count=jax.process_count(), start_position=start)

    ckpt = checkpoint.RunCheckpointer(Path(workdir) / "checkpoints")
    state, it = trainer._resume(ckpt, parallel.sharded_abstract(init_state, mesh), iter(dataset()), dataset, local,
                                True)
    ckpt.close()
    flat = {parallel.path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
    np.savez(out, next_tokens=next(it)["tokens"], step=int(state["step"]), **{f"state/{k}": v for k, v in flat.items()})


def sample(out):
    """Samples of a freshly built tiny pipeline, 7 labels (not a multiple of the device count)."""
    import dataclasses

    import numpy as np

    import arjax
    from arjax.nn.models.var import VARConfig
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    pns = (1, 2, 3, 4)
    tok = VQVAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, vocab_size=128, z_channels=8, patch_nums=pns)
    model = VARConfig(depth=2, embed_dim=64, num_heads=2, vocab_size=128, cvae=8, patch_nums=pns, num_classes=10,
                      init_adaln_gamma=0.5, init_head=1.0)
    pipe = arjax.build({"family": "var", "tokenizer": dataclasses.asdict(tok), "model": dataclasses.asdict(model)})
    images, tokens = pipe.sample(np.arange(7) % 10, cfg=2.0, top_k=50, seed=3, return_tokens=True)
    np.savez(out, images=np.asarray(images), tokens=np.asarray(tokens), devices=len(images.sharding.device_set))


def tiny_model(out):
    """A saved tiny VAR model directory (deterministic initialisation)."""
    import dataclasses

    import arjax
    from arjax.nn.models.var import VARConfig
    from arjax.nn.tokenizers.msvq import VQVAEConfig
    tok = VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=(1, 2, 4),
                      using_sa=False)
    var = VARConfig(depth=1, embed_dim=32, num_heads=2, vocab_size=64, cvae=8, patch_nums=(1, 2, 4), num_classes=3,
                    init_head=1.0)
    arjax.save(arjax.build({"family": "var", "tokenizer": dataclasses.asdict(tok), "model": dataclasses.asdict(var)}),
               out)


def main(argv):
    cmd = argv[0]
    if cmd == "tokenizer":
        return make_tokenizer(argv[1])
    if cmd == "sample":
        return sample(argv[1])
    if cmd == "tiny-model":
        return tiny_model(argv[1])
    if cmd == "sample-npz":  # the real command line; joins a multi-process run from the environment
        from arjax.cli import main as arjax_main
        return arjax_main(["sample", "--checkpoint", argv[1], "--classes", "all", "--per-class", "5",
                           "--batch-size", "2", "--top-k", "20", "--npz", argv[2]])
    if cmd == "eval-fid-npz":  # the real command line, sharded over the processes of the run
        from arjax.cli import main as arjax_main
        return arjax_main(["eval", "fid", "--npz", argv[1], "--ref", argv[2], "--inception", argv[3], "--out", argv[4],
                           "--resize", "pytorch-fid", "--split-size", "8", "--pr-batch", "16", "--batch-size", "4",
                           "--inception-batch", "4"])
    workdir, tok, data, fsdp, tensor = argv[1], argv[2], *map(int, argv[3:6])
    if cmd == "train":  # the real command line (it joins the multi-process run from the environment)
        from arjax.cli import main as arjax_main
        steps = int(argv[6]) if len(argv) > 6 else 4
        sets = [a for o in var_overrides(tok, data, fsdp, tensor, steps) for a in ("--set", o)]
        return arjax_main(["train", "--config", VAR_CONFIG, "--workdir", workdir, *sets])
    from arjax import parallel
    parallel.initialize()
    if cmd == "restore":
        restore(workdir, tok, data, fsdp, tensor, argv[6])
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
