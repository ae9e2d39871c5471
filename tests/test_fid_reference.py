"""Reference sets: ADM's centre crop and writing a reference batch from folders and npz files."""
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from arjax.eval.fid.batches import open_batch, write_batch
from arjax.eval.fid.reference import adm_center_crop, reference_images, write_reference

SHAPE = (5, 7, 3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (37, *SHAPE), dtype=np.uint8)


# ---- ADM centre crop -------------------------------------------------------------------------------
def _gradient(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_adm_center_crop_steps():
    image = _gradient(400, 600)  # W 600 x H 400 -> 128: one halving, then bicubic
    pil = Image.fromarray(image).resize((300, 200), Image.Resampling.BOX)          # 400 >= 256; 200 < 256
    pil = pil.resize((192, 128), Image.Resampling.BICUBIC)                          # scale 128 / 200 = 0.64
    want = np.asarray(pil)[0:128, 32:160]                                           # (192 - 128) // 2 = 32
    np.testing.assert_array_equal(adm_center_crop(image, 128), want)

    image = _gradient(333, 250, seed=1)  # portrait W 250 x H 333 -> 64: rounding, odd crop
    pil = Image.fromarray(image).resize((125, 166), Image.Resampling.BOX)           # 250 >= 128; 125 < 128
    pil = pil.resize((64, 85), Image.Resampling.BICUBIC)                            # round(166 * 0.512) = 85
    want = np.asarray(pil)[10:74, 0:64]                                             # (85 - 64) // 2 = 10
    np.testing.assert_array_equal(adm_center_crop(image, 64), want)

    image = _gradient(300, 520, seed=2)  # W 520 x H 300 -> 64: two halvings (300 and 150 are >= 128)
    pil = Image.fromarray(image).resize((260, 150), Image.Resampling.BOX).resize((130, 75), Image.Resampling.BOX)
    pil = pil.resize((111, 64), Image.Resampling.BICUBIC)                           # round(130 * 64 / 75) = 111
    want = np.asarray(pil)[:, 23:87]                                                # (111 - 64) // 2 = 23
    np.testing.assert_array_equal(adm_center_crop(image, 64), want)

    image = _gradient(64, 64, seed=3)
    np.testing.assert_array_equal(adm_center_crop(image, 64), image)
    assert adm_center_crop(_gradient(30, 20)[..., 0], 16).shape == (16, 16, 3)     # grey -> RGB


# ---- reference sets --------------------------------------------------------------------------------
def _make_images(folder, layout):
    """A few PNGs of various sizes and modes plus a corrupt file; returns the readable files in the
    order a reference reads them."""
    rng = np.random.default_rng(3)
    specs = [("rgb.png", "RGB", (60, 80)), ("grey.png", "L", (90, 50)), ("rgba.png", "RGBA", (64, 64)),
             ("pal.png", "P", (40, 70))]
    files = []
    for i, (name, mode, (w, h)) in enumerate(specs):
        sub = folder / ("class_a" if i < 2 else "class_b") if layout == "classes" else folder
        sub.mkdir(parents=True, exist_ok=True)
        channels = {"RGB": 3, "L": 1, "RGBA": 4, "P": 1}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8).squeeze(-1 if channels == 1 else ())
        image = Image.fromarray(pixels, "L" if mode == "P" else mode)
        if mode == "P":
            image = image.convert("P")
        image.save(sub / name)
        files.append(sub / name)
    (files[0].parent / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not an image")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return sorted(files) if layout == "flat" else sorted(files, key=lambda p: (p.parent.name, p.name))


def _expected(files, size):
    return np.stack([adm_center_crop(np.asarray(Image.open(f).convert("RGB")), size) for f in files])


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_write_reference_from_folder(tmp_path, layout, caplog):
    files = _make_images(tmp_path / "images", layout)
    with caplog.at_level(logging.WARNING):
        out = write_reference(tmp_path / "images", tmp_path / "ref.npz", 32, batch_size=3, progress=False)
    batch = open_batch(out)
    assert (batch.num, batch.image_shape) == (4, (32, 32, 3))
    np.testing.assert_array_equal(batch.read(0, 4), _expected(files, 32))
    assert "skipped 1 unreadable" in caplog.text and "broken.png" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "ref.npz"]  # staging file removed


def test_reference_images_limit_and_skips(tmp_path):
    files = _make_images(tmp_path / "images", "flat")  # broken.png sorts first
    num, images = reference_images(tmp_path / "images", 16, limit=2, workers=1)
    got = list(images)
    assert num == 2 and len(got) == 2 and [n for n, _ in images.skipped] == [str(tmp_path / "images" / "broken.png")]
    np.testing.assert_array_equal(np.stack(got), _expected(files[:2], 16))
    # written: the first 2 readable images, though one candidate was skipped on the way
    batch = open_batch(write_reference(tmp_path / "images", tmp_path / "ref2.npz", 16, limit=2, progress=False))
    assert batch.num == 2
    np.testing.assert_array_equal(batch.read(0, 2), _expected(files[:2], 16))


def test_write_reference_from_npz(tmp_path, images):
    src = write_batch(tmp_path / "src.npz", 37, SHAPE, [images])
    same = open_batch(write_reference(src, tmp_path / "same.npz", 5, progress=False))
    cropped = open_batch(write_reference(src, tmp_path / "crop.npz", 4, limit=9, progress=False))
    assert same.image_shape == (5, 5, 3) and cropped.num == 9
    np.testing.assert_array_equal(cropped.read(0, 9), np.stack([adm_center_crop(im, 4) for im in images[:9]]))
    square = write_batch(tmp_path / "sq.npz", 3, (6, 6, 3), [np.stack([_gradient(6, 6, seed=s) for s in range(3)])])
    np.testing.assert_array_equal(open_batch(write_reference(square, tmp_path / "sq_ref.npz", 6, progress=False))
                                  .read(0, 3), open_batch(square).read(0, 3))


def test_reference_errors(tmp_path, monkeypatch):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty: no images found"):
        reference_images(tmp_path / "empty", 32)
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder or .npz"):
        reference_images(tmp_path / "nowhere", 32)
    with pytest.raises(ValueError, match=r"ref\.png: the output must be an \.npz"):
        write_reference(tmp_path / "empty", tmp_path / "ref.png", 32)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]"'):
        reference_images("imagenet2012:validation", 32)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="none of its 1 images could be read"):
        write_reference(tmp_path / "bad", tmp_path / "bad.npz", 8, progress=False)
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "bad.staging.npz").exists()
