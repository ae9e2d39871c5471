"""ADM-format image batches (.npz): read and write them without ever holding one whole in memory.

OpenAI's ADM evaluator takes an .npz whose `arr_0` is uint8 (N, H, W, 3), optionally with float64
statistics `mu`, `sigma` (pool3) and `mu_s`, `sigma_s` (sFID's spatial features) that take precedence
over statistics computed from `arr_0`. A 50k x 256 x 256 batch is 9.8 GB, so `arr_0` is read in row
chunks straight from its zip member (the .npy header gives shape and data offset) and written the
same way.

    batch = open_batch("samples.npz")            # reads headers only
    for chunk in batch.iter_images(100): ...     # uint8 (<=100, H, W, 3)
    write_batch("out.npz", num, (H, W, 3), chunks, extra={"mu": mu, "sigma": sigma})
"""
from __future__ import annotations

import os
import struct
import threading
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


# statistics name -> (mean key, covariance key), as ADM's evaluator names them
STAT_KEYS = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")   # a zip local file header (30 bytes)
_LOCAL_MAGIC = b"PK\x03\x04"


# ---- .npy headers inside a zip ---------------------------------------------------------------------
def _read_npy_header(fp, where: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of the .npy stream at fp's current position."""
    start = fp.tell()
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:  # 2.0 and 3.0 share the 4-byte length; an ASCII header decodes alike
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except ValueError as error:
        raise ValueError(f"{where} is not a valid .npy array: {error}") from error
    return shape, fortran, dtype, fp.tell() - start


def _member_name(zf: zipfile.ZipFile, key: str) -> str | None:
    name = f"{key}.npy"  # np.load reads only .npy members as arrays
    return name if name in zf.namelist() else None


def _statistics_problem(kind: str, mu, sigma) -> str | None:
    """Why (mu, sigma), each (shape, dtype) or None when absent, are not usable statistics; None if they are."""
    mu_key, sigma_key = STAT_KEYS[kind]
    if mu is None or sigma is None:
        have, lack = (mu_key, sigma_key) if sigma is None else (sigma_key, mu_key)
        return f"has `{have}` without `{lack}`: {kind} statistics need both"
    (mu_shape, mu_dtype), (sigma_shape, sigma_dtype) = mu, sigma
    if (len(mu_shape) == 1 and tuple(sigma_shape) == (mu_shape[0], mu_shape[0])
            and mu_dtype.kind == "f" and sigma_dtype.kind == "f"):
        return None
    return (f"has inconsistent {kind} statistics: `{mu_key}` is {mu_dtype} {tuple(mu_shape)}, `{sigma_key}` is "
            f"{sigma_dtype} {tuple(sigma_shape)} (expected float (d,) and (d, d))")


def _stored_offset(path: Path, info: zipfile.ZipInfo) -> int | None:
    """Absolute file offset of an uncompressed member's bytes (None if compressed), for O(1) seeks:
    Python's zip reader seeks forward by reading and discarding everything before the target."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if fields[0] != _LOCAL_MAGIC:
        raise ValueError(f"{path}: corrupt zip (no local header for {info.filename})")
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _member_header(zf: zipfile.ZipFile, name: str, where: str):
    with zf.open(name) as f:
        return _read_npy_header(f, where)


# ---- reading ---------------------------------------------------------------------------------------
class ImageBatch:
    """An ADM batch on disk: `num` images of `image_shape` (H, W, 3) uint8, read in row ranges.

    Uncompressed members (np.savez, write_batch) are read by direct seeks, so any range costs only its
    own bytes; np.savez_compressed members are decompressed from the start, and sequential calls reuse
    one open stream so a front-to-back pass stays linear.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such .npz file")
        try:
            with zipfile.ZipFile(self.path) as zf:
                self._scan(zf)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ValueError(f"{self.path} is not a readable .npz file ({type(error).__name__}: {error})") from error
        self._lock = threading.Lock()
        self._cursor = None   # [member stream, next row]: compressed members only

    def _scan(self, zf: zipfile.ZipFile) -> None:
        name = _member_name(zf, "arr_0")
        if name is None:
            keys = sorted(n[:-4] if n.endswith(".npy") else n for n in zf.namelist())
            raise ValueError(f"{self.path} has no `arr_0` array (keys found: {', '.join(keys) or 'none'})")
        shape, fortran, dtype, header_len = _member_header(zf, name, f"{self.path}:{name}")
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"{self.path}: arr_0 must be uint8 (N, H, W, 3) images; got {dtype} {shape}")
        if fortran:
            raise ValueError(f"{self.path}: arr_0 is stored in Fortran order; rows cannot be streamed "
                             "(save it with np.savez from a C-contiguous array)")
        self.num, self.image_shape = int(shape[0]), tuple(int(s) for s in shape[1:])
        self._row_bytes = int(np.prod(self.image_shape))
        info = zf.getinfo(name)
        if info.file_size != header_len + self.num * self._row_bytes:
            raise ValueError(f"{self.path}: arr_0 holds {info.file_size - header_len} data bytes but its header "
                             f"says {self.num} x {self.image_shape} (truncated or corrupt file)")
        self._member, self._header_len = name, header_len
        stored = _stored_offset(self.path, info)
        self._data_start = None if stored is None else stored + header_len
        self._stat_members = self._check_statistics(zf)

    def _check_statistics(self, zf: zipfile.ZipFile) -> dict:
        """Validate present statistics from their headers alone; their data is read by statistics()."""
        found = {}
        for kind, keys in STAT_KEYS.items():
            names = [_member_name(zf, key) for key in keys]
            if names == [None, None]:
                continue
            shapes = [None if n is None else _member_header(zf, n, f"{self.path}:{n}")[::2] for n in names]
            problem = _statistics_problem(kind, *shapes)
            if problem:
                raise ValueError(f"{self.path} {problem}")
            found[kind] = tuple(names)
        return found

    def __repr__(self) -> str:
        stats = ", ".join(self._stat_members) or "no"
        return f"ImageBatch({str(self.path)!r}: {self.num} x {self.image_shape}, {stats} statistics)"

    def __len__(self) -> int:
        return self.num

    # -- rows
    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.num:
            raise ValueError(f"{self.path}: rows [{start}, {stop}) are outside [0, {self.num})")

    def _read_rows(self, f, count: int) -> np.ndarray:
        out = np.empty((count, *self.image_shape), np.uint8)
        view, filled = memoryview(out.reshape(-1)), 0
        while filled < len(view):
            got = f.readinto(view[filled:])
            if not got:
                raise ValueError(f"{self.path}: arr_0 ended early (truncated file)")
            filled += got
        return out

    def _open_at(self, row: int):
        """A binary stream positioned at `row` of arr_0 (caller closes it; the zip goes with it)."""
        if self._data_start is not None:
            f = open(self.path, "rb")
            f.seek(self._data_start + row * self._row_bytes)
            return f
        zf = zipfile.ZipFile(self.path)
        f = zf.open(self._member)
        f.seek(self._header_len + row * self._row_bytes)
        zf.close()  # the member stream keeps its own reference to the file
        return f

    def iter_images(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """uint8 (b, H, W, 3) chunks of rows [start, stop), b = batch_size except maybe the last."""
        stop = self.num if stop is None else stop
        self._check_range(start, stop)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        with self._open_at(start) as f:
            for s in range(start, stop, batch_size):
                yield self._read_rows(f, min(batch_size, stop - s))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as uint8 (stop - start, H, W, 3)."""
        self._check_range(start, stop)
        if self._data_start is not None:
            with self._open_at(start) as f:
                return self._read_rows(f, stop - start)
        with self._lock:  # compressed: continue the previous read's stream when moving forward
            if self._cursor is None or self._cursor[1] > start:
                self.close()
                self._cursor = [self._open_at(start), start]
            f = self._cursor[0]
            f.seek((start - self._cursor[1]) * self._row_bytes, os.SEEK_CUR)
            rows = self._read_rows(f, stop - start)
            self._cursor[1] = stop
            return rows

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor[0].close()
            self._cursor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- statistics
    def statistics(self) -> dict:
        """{"pool3": (mu, sigma) or None, "spatial": (mu_s, sigma_s) or None}, float64."""
        out = dict.fromkeys(STAT_KEYS)
        if not self._stat_members:
            return out
        with zipfile.ZipFile(self.path) as zf:
            for kind, names in self._stat_members.items():
                arrays = []
                for name in names:
                    with zf.open(name) as f:
                        arrays.append(np.lib.format.read_array(f, allow_pickle=False).astype(np.float64))
                out[kind] = tuple(arrays)
        return out


def open_batch(path: str | os.PathLike) -> ImageBatch:
    return ImageBatch(path)


# ---- writing ---------------------------------------------------------------------------------------
def _npz_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: the output must be an .npz file (name ending in .npz)")
    return path


def _checked_chunks(chunks: Iterable[np.ndarray], num: int, image_shape: tuple, where: Path):
    """The chunks as C-contiguous uint8, failing loudly on a wrong dtype, shape or total."""
    written = 0
    for i, chunk in enumerate(chunks):
        chunk = np.asarray(chunk)
        if chunk.dtype != np.uint8 or chunk.ndim != 4 or chunk.shape[1:] != image_shape:
            raise ValueError(f"{where}: chunk {i} is {chunk.dtype} {chunk.shape}; expected uint8 (b, *{image_shape})")
        written += len(chunk)
        if written > num:
            raise ValueError(f"{where}: the chunks hold more than the {num} images announced")
        if len(chunk):
            yield np.ascontiguousarray(chunk)
    if written != num:
        raise ValueError(f"{where}: the chunks hold {written} images, not the {num} announced")


def _write_member(zf: zipfile.ZipFile, key: str, header: dict, blocks: Iterable) -> None:
    # force_zip64: sizes over 4 GiB are only known to fit once written, as np.savez does it too
    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for block in blocks:
            f.write(memoryview(block.reshape(-1)))


def write_batch(path: str | os.PathLike, num: int, image_shape, chunks: Iterable[np.ndarray],
                extra: dict | None = None) -> Path:
    """Stream `num` uint8 images of `image_shape` (H, W, 3) from `chunks` into `arr_0` of a new .npz
    (uncompressed, like np.savez), then the `extra` arrays (e.g. mu, sigma, mu_s, sigma_s). The file
    is written under a temporary name and renamed, so a killed run never leaves a half file."""
    path = _npz_path(path)
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or image_shape[-1] != 3 or num < 0:
        raise ValueError(f"{path}: need num >= 0 images of shape (H, W, 3); got {num} x {image_shape}")
    extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
    if "arr_0" in extra:
        raise ValueError(f"{path}: `extra` must not hold arr_0 (it comes from the chunks)")
    for kind, keys in STAT_KEYS.items():  # checked before hours of writing, not after
        given = [(extra[k].shape, extra[k].dtype) if k in extra else None for k in keys]
        problem = given != [None, None] and _statistics_problem(kind, *given)
        if problem:
            raise ValueError(f"{path}: `extra` {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (int(num), *image_shape)}
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            _write_member(zf, "arr_0", header, _checked_chunks(chunks, num, image_shape, path))
            for key, value in extra.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, value, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
