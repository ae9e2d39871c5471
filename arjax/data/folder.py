"""ImageNet-layout folders: root/<class name>/**/<image>, one subfolder per class.

The source only lists files; decoding happens in the pipeline (arjax.data.decode), where an
unreadable image is skipped and counted instead of crashing a run hours in.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def _image_files(class_dir: str) -> list[str]:
    """Image files under `class_dir`, recursively, sorted so the order never depends on the disk."""
    found = []
    for parent, dirs, files in os.walk(class_dir, followlinks=True):
        dirs.sort()
        found.extend(os.path.join(parent, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


class ImageFolder:
    """grain RandomAccessDataSource: record i is {"path": str, "label": int32}.

    Labels index `class_names`, the sorted subfolder names (as torchvision's ImageFolder does).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist (expected root/<class>/<image> files)")
        self.class_names = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not self.class_names:
            raise ValueError(f"image folder {self.root} has no class subfolders (expected root/<class>/<image> files)")
        paths, labels = [], []
        for label, name in enumerate(self.class_names):
            files = _image_files(os.path.join(self.root, name))
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            raise ValueError(f"image folder {self.root} has {len(self.class_names)} class folders but no images "
                             f"with extensions {', '.join(IMAGE_EXTENSIONS)}")
        self.paths = paths
        self.labels = np.asarray(labels, np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}: {len(self)} images, {self.num_classes} classes)"

    def __getitem__(self, index: int) -> dict:
        return {"path": self.paths[index], "label": self.labels[index]}
