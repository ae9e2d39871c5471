"""Evaluation on the built-in dataset: a classifier trained on real images scores class-conditional
samples (share assigned to their class, Frechet distance of its features).

    metrics = evaluate_pipeline(arjax.load(DIR), per_class=50, seed=0, cfg=1.5, top_k=900, top_p=0.96,
                                classifier_dir=None)
    print(format_report(metrics))
"""
from arjax.eval.classifier import (REJECT, Classifier, get_classifier, load_classifier, train_classifier)
from arjax.eval.metrics import evaluate_samples, feature_stats, frechet_distance
from arjax.eval.run import evaluate_pipeline, format_report

__all__ = ["REJECT", "Classifier", "evaluate_pipeline", "evaluate_samples", "feature_stats", "format_report",
           "frechet_distance", "get_classifier", "load_classifier", "train_classifier"]
