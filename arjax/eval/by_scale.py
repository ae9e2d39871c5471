"""Where does a next-scale generator lose class fidelity? (`arjax eval --by-scale`)

Real images of every class are encoded; row k keeps the first k scales of their tokens (teacher-forced)
and samples the rest conditioned on the true label. Row 0 is plain sampling, the last row the tokenizer's
reconstruction. The accuracy a row gains over the one above is what the generator's predictions at that
scale cost: e.g. a big jump on the last row says the finest scale is where samples go wrong.

    rows = scale_diagnosis(pipe, classifier, count=500, seed=1, cfg=4.0, top_k=900, top_p=0.96)
    print(format_scale_table(rows))
"""
from __future__ import annotations

import numpy as np

from arjax.eval.metrics import evaluate_samples
from arjax.eval.real_data import REFERENCE_SEED, real_images01
from arjax.ops import scales
from arjax.eval.run import check_builtin_classes

DIAGNOSIS_SEED = 4321  # its real images are neither the reference nor the floor set


def scale_diagnosis(pipe, classifier, *, count: int, seed: int, cfg: float, top_k: int, top_p: float,
                    batch_size: int = 100, sample_options=None) -> list[dict]:
    """One row per number of teacher-forced scales k = 0..K: class accuracy, shape accuracy, Frechet
    distance (to the REFERENCE_SEED real images) and per-class accuracy of the completed samples."""
    k_classes = check_builtin_classes(pipe)
    size = int(pipe.tokenizer.cfg.image_size)
    x01, labels = real_images01(count, size, DIAGNOSIS_SEED, k_classes)
    real, real_labels = real_images01(count, size, REFERENCE_SEED, k_classes)
    schedule = (sample_options or {}).get("patch_nums")  # FlexVAR: the schedule sampled
    tokens = np.concatenate([np.asarray(pipe.tokenizer.encode(x01[s:s + batch_size] * 2 - 1, schedule))
                             for s in range(0, count, batch_size)])
    pns = pipe.schedule(schedule)
    ends = [0, *(e for _, e in scales.begin_ends(pns))]
    rows = []
    for k in range(len(pns) + 1):
        known = np.broadcast_to(np.arange(tokens.shape[1]) < ends[k], tokens.shape)
        images = np.asarray(pipe.complete(tokens, known, labels, cfg=cfg, top_k=top_k, top_p=top_p, seed=seed,
                                          batch_size=batch_size, **(sample_options or {})), np.float32)
        m = evaluate_samples(classifier, images, labels, real, real_labels)
        rows.append({"forced_scales": list(pns[:k]), "class_accuracy": m["class_accuracy"],
                     "shape_accuracy": m["shape_accuracy"], "frechet_distance": m["frechet_distance"],
                     "per_class_accuracy": m["per_class_accuracy"]})
    return rows


def format_scale_table(rows: list[dict]) -> str:
    lines = ["by scale: the first k scales taken from real images, the rest sampled",
             f"  {'teacher-forced scales':<24s} {'class acc':>9s} {'shape':>6s} {'FD':>8s}   per class"]
    for r in rows:
        forced = ",".join(map(str, r["forced_scales"])) or "none (plain sampling)"
        per = " ".join("  -" if a is None else f"{a:3.0f}" for a in r["per_class_accuracy"])
        lines.append(f"  {forced:<24s} {r['class_accuracy']:8.1f}% {r['shape_accuracy']:5.1f}% "
                     f"{r['frechet_distance']:8.2f}   {per}")
    return "\n".join(lines)
