"""FID / sFID / IS / precision-recall as OpenAI's ADM evaluator computes them.

    from arjax.eval import fid
    net = fid.Inception.from_file("pt_inception-2015-12-05-6726825d.pth", resize="pytorch-fid")
    out = net(images_uint8)            # {"pool3": (N, 2048), "spatial": (N, 2023), "logits": (N, 1008)}
    fid.frechet_distance(fid.statistics(a), fid.statistics(b))
    fid.inception_score(pool3, net.softmax_w, split_size=5000)
    fid.precision_recall(ref_pool3, sample_pool3, k=3, batch_size=10000)   # -> (precision, recall)

`arjax eval fid | recon | ref` (arjax/eval/fid/commands.py) run the whole protocol, streamed and resumable.
"""
from arjax.eval.fid.batches import ImageBatch, open_batch, write_batch
from arjax.eval.fid.inception import Inception
from arjax.eval.fid.metrics import (RunningStatistics, frechet_distance, inception_score, precision_recall,
                                    statistics)
from arjax.eval.fid.reference import write_reference

__all__ = ["ImageBatch", "Inception", "RunningStatistics", "frechet_distance", "inception_score", "open_batch",
           "precision_recall", "statistics", "write_batch", "write_reference"]
