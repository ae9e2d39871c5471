"""`arjax eval ref`: an ADM-format reference batch from the user's images, with its statistics.

Sources: an image folder (class subfolders or flat), a TFDS split, an npz (each image through ADM's
centre crop, `adm_center_crop`; unreadable images are skipped and counted), or `builtin:N`, N images
of the built-in dataset (rendered at the size: the real images `arjax eval` compares samples with). Given an Inception, the batch also stores mu/sigma (pool3) and
mu_s/sigma_s (spatial) in float64, as OpenAI's reference batches do; the evaluator then uses them
instead of recomputing statistics from arr_0.
"""
from __future__ import annotations

import collections
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from arjax.data.decode import as_rgb
from arjax.data.folder import IMAGE_EXTENSIONS, ImageFolder
from arjax.eval.fid import batches, metrics

log = logging.getLogger(__name__)

BUILTIN = "builtin:"


def make_reference(source: str, out, size: int, *, limit: int | None = None, net=None, batch_size: int = 100,
                   progress: bool = True) -> Path:
    if size < 1:
        raise ValueError(f"--size must be >= 1; got {size}")
    if str(source).startswith(BUILTIN):
        out = _builtin_reference(source, out, size, limit)
    else:
        out = write_reference(source, out, size, limit=limit, progress=progress)
    if net is not None:
        add_statistics(out, net, batch_size=batch_size, progress=progress)
    return Path(out)


def _builtin_reference(source: str, out, size: int, limit: int | None) -> Path:
    from arjax.eval.real_data import REFERENCE_SEED, real_uint8
    try:
        count = int(source[len(BUILTIN):])
    except ValueError:
        raise ValueError(f"--source {source!r}: write builtin:N with N the number of images") from None
    count = min(count, limit) if limit else count
    if count < 1:
        raise ValueError(f"--source {source!r}: N must be >= 1")
    images, _ = real_uint8(count, size, REFERENCE_SEED)
    return batches.write_batch(out, count, (size, size, 3), [images])


def add_statistics(path, net, *, batch_size: int = 100, progress: bool = True) -> None:
    """Append mu, sigma, mu_s, sigma_s (float64) of the batch's Inception features to its npz."""
    from tqdm import tqdm
    batch = batches.open_batch(path)
    pool3, spatial = metrics.RunningStatistics(), metrics.RunningStatistics()
    with tqdm(total=batch.num, desc="reference statistics", unit="img", disable=not progress) as bar:
        for images in batch.iter_images(batch_size):
            out = net(images)
            pool3.update(out["pool3"])
            spatial.update(out["spatial"])
            bar.update(len(images))
    (mu, sigma), (mu_s, sigma_s) = pool3.result(), spatial.result()
    # rewritten with the statistics (a temp file, then renamed), not appended in place: a kill mid-write
    # must never break a finished reference
    batches.write_batch(path, batch.num, batch.image_shape, batch.iter_images(batch_size),
                        extra={"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s})


# ---- images of a source, ADM-cropped ----------------------------------------------------------------
def adm_center_crop(image_uint8: np.ndarray, size: int) -> np.ndarray:
    """guided-diffusion's reference preprocessing: halve with BOX while the shorter side is >= 2 size
    (cheap and alias-free), BICUBIC so the shorter side is `size`, centre crop size x size."""
    pil = Image.fromarray(as_rgb(image_uint8))
    while min(pil.size) >= 2 * size:
        pil = pil.resize((pil.width // 2, pil.height // 2), Image.Resampling.BOX)
    scale = size / min(pil.size)
    target = (round(pil.width * scale), round(pil.height * scale))
    if target != pil.size:  # Pillow returns an unchanged copy at equal size; skip the work
        pil = pil.resize(target, Image.Resampling.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def _folder_files(root: Path) -> list[str]:
    """ImageFolder's class-major listing when root has class subfolders with images, else the images
    directly in root (a flat folder)."""
    try:
        return ImageFolder(root).paths
    except ValueError:  # no class subfolders, or none holding images
        pass
    files = sorted(e.path for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files in the folder "
                         "and in class subfolders)")
    return files


def _load_file(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # convert() decodes fully, so a corrupt file fails here


def _tfds(name: str, split: str):
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError as error:
        raise ImportError(f"reading the TFDS dataset {name!r} needs tensorflow_datasets: "
                          'pip install -e ".[tfds]"') from error
    from arjax.data.tfds_source import tfds_source
    return tfds_source(name, split)


def _npz_tasks(batch: batches.ImageBatch, chunk: int = 64):
    for s, images in zip(range(0, batch.num, chunk), batch.iter_images(chunk)):
        for i, image in enumerate(images):
            yield f"{batch.path}[{s + i}]", (lambda image=image: image)


def _source_tasks(source, split: str | None) -> tuple[int, Iterable]:
    """(candidate count, (name, load()) pairs) for any source kind; `split` applies to TFDS only."""
    path = Path(source)
    if path.is_dir():
        files = _folder_files(path)
        return len(files), ((f, (lambda f=f: _load_file(f))) for f in files)
    if path.is_file():
        batch = batches.open_batch(path)
        return batch.num, _npz_tasks(batch)
    text = str(source)
    if ":" not in text and split is None:
        raise FileNotFoundError(f"{source}: no such folder or .npz file (a TFDS dataset is named NAME:SPLIT, "
                                "e.g. imagenet2012:validation)")
    name, split = (text, split) if split is not None else text.rsplit(":", 1)
    records = _tfds(name, split)
    return len(records), ((f"{name}:{split}[{i}]", (lambda i=i: records[i]["image"])) for i in range(len(records)))


def _ordered_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """fn over items on a thread pool (Pillow decodes and resizes without the GIL), in order, with a
    bounded number in flight so memory stays flat."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ReferenceImages:
    """Iterator over the readable images of a source, each adm_center_crop-ed to size x size RGB.

    `num` is the number it will yield if no image is unreadable (an upper bound); unreadable images are
    skipped and listed in `skipped` (name, error), with a summary logged at the end.
    """

    def __init__(self, source, size: int, *, split: str | None = None, limit: int | None = None,
                 workers: int | None = None):
        self.source, self.size = source, size
        candidates, tasks = _source_tasks(source, split)
        self.num = candidates if limit is None else min(limit, candidates)
        self.skipped: list[tuple[str, str]] = []
        self._workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self._it = self._generate(tasks)

    def _prepare(self, task):
        name, load = task
        try:  # an image already size x size comes through adm_center_crop unchanged
            return name, adm_center_crop(np.asarray(load()), self.size)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            return name, error

    def _generate(self, tasks) -> Iterator[np.ndarray]:
        yielded = 0
        for name, result in _ordered_map(self._prepare, tasks, self._workers) if self.num else ():
            if isinstance(result, Exception):
                self.skipped.append((name, f"{type(result).__name__}: {result}"))
                log.warning("skipping unreadable image %s (%s)", name, self.skipped[-1][1])
                continue
            yield result
            yielded += 1
            if yielded == self.num:  # `limit` means the first N images that can be read
                break
        if self.skipped:
            shown = ", ".join(n for n, _ in self.skipped[:5]) + (", ..." if len(self.skipped) > 5 else "")
            log.warning("%s: skipped %d unreadable image(s): %s", self.source, len(self.skipped), shown)

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        return next(self._it)


def reference_images(source, size: int, *, split: str | None = None, limit: int | None = None,
                     workers: int | None = None) -> tuple[int, ReferenceImages]:
    """(num, iterator of uint8 (size, size, 3) images) of a reference set: an image folder (class
    subfolders or flat), a TFDS "name:split", or an .npz batch (re-cropped only if its size differs).
    `num` is an upper bound: it counts unreadable images too, which the iterator skips."""
    images = ReferenceImages(source, size, split=split, limit=limit, workers=workers)
    return images.num, images


def _batched(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    block = []
    for image in images:
        block.append(image)
        if len(block) == batch_size:
            yield np.stack(block)
            block = []
    if block:
        yield np.stack(block)


def write_reference(source, out: str | os.PathLike, size: int, *, limit: int | None = None,
                    batch_size: int = 256, progress: bool = True, workers: int | None = None) -> Path:
    """Write the reference images of `source` (see reference_images) as an ADM batch `out`.

    The count is known only once every image was decoded, so the images go into a staging file sized
    for all candidates; if some were unreadable its zero-filled tail is dropped by streaming the kept
    rows into `out` (one extra sequential copy, only in that case); otherwise it is just renamed.
    """
    from tqdm import tqdm
    out = batches._npz_path(out)
    num, images = reference_images(source, size, limit=limit, workers=workers)
    shape = (size, size, 3)
    staging = out.with_name(f"{out.stem}.staging.npz")

    done = 0

    def padded_chunks(bar):
        nonlocal done
        for chunk in _batched(images, batch_size):
            done += len(chunk)
            bar.update(len(chunk))
            yield chunk
        bar.set_postfix(skipped=len(images.skipped))
        for s in range(done, num, batch_size):  # skipped images leave the tail short
            yield np.zeros((min(batch_size, num - s), *shape), np.uint8)

    try:
        with tqdm(total=num, desc="reference images", unit="img", disable=not progress) as bar:
            batches.write_batch(staging, num, shape, padded_chunks(bar))
        kept = done  # not num - skipped: with a limit, later images replace skipped ones
        if kept == 0:
            raise ValueError(f"{source}: none of its {num} images could be read")
        if kept == num:
            os.replace(staging, out)
        else:
            batches.write_batch(out, kept, shape, batches.open_batch(staging).iter_images(batch_size, stop=kept))
    finally:
        staging.unlink(missing_ok=True)
    if progress and images.skipped:
        tqdm.write(f"{out}: {kept} images written, {len(images.skipped)} unreadable skipped "
                   f"(first: {images.skipped[0][0]})")
    return out
