"""ADM-format .npz batches: streamed reads and writes, statistics."""

import numpy as np
import pytest
from conftest import FIXTURES

from arjax.eval.fid.batches import open_batch, write_batch

FID = FIXTURES / "fid"
SHAPE = (5, 7, 3)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (37, *SHAPE), dtype=np.uint8)


def _stats(d, seed=1):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T


@pytest.fixture(params=["write_batch", "savez", "savez_compressed"])
def batch_file(request, tmp_path, images):
    path = tmp_path / "b.npz"
    if request.param == "write_batch":  # ragged chunks, an empty one included
        write_batch(path, len(images), SHAPE, [images[:10], images[10:10], images[10:30], images[30:]])
    else:
        getattr(np, request.param)(path, images)
    return path


def _gather(chunks):
    return np.concatenate(chunks) if chunks else np.zeros((0, *SHAPE), np.uint8)


# ---- reading ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("start", [0, 3, 8, 36, 37])
def test_chunked_reads_equal_np_load(batch_file, images, start):
    with np.load(batch_file) as z:
        np.testing.assert_array_equal(z["arr_0"], images)
    batch = open_batch(batch_file)
    assert (batch.num, batch.image_shape) == (37, SHAPE)
    chunks = list(batch.iter_images(8, start=start))
    assert [len(c) for c in chunks[:-1]] == [8] * (len(chunks) - 1)  # only the last may be short
    assert all(c.dtype == np.uint8 and c.shape[1:] == SHAPE for c in chunks)
    np.testing.assert_array_equal(_gather(chunks), images[start:])


def test_read_ranges(batch_file, images):
    batch = open_batch(batch_file)
    # forward, backward and empty ranges (compressed members reuse or reopen their stream)
    for start, stop in [(5, 9), (20, 37), (1, 2), (0, 37), (12, 12), (30, 31)]:
        np.testing.assert_array_equal(batch.read(start, stop), images[start:stop])
    np.testing.assert_array_equal(_gather(list(batch.iter_images(6, start=4, stop=15))), images[4:15])
    with pytest.raises(ValueError, match=r"outside \[0, 37\)"):
        batch.read(30, 38)
    batch.close()


def test_fixture_batches_read_equal_np_load():
    if not (FID / "e2e_ref.npz").is_file():
        pytest.skip(reason=f"FID fixture {FID} is absent (set ARJAX_FIXTURES to the shared/fixtures folder)")
    for name in ("e2e_ref.npz", "e2e_sample.npz"):
        batch = open_batch(FID / name)
        with np.load(FID / name) as z:
            want = z["arr_0"]
        assert (batch.num, batch.image_shape) == (want.shape[0], want.shape[1:])
        np.testing.assert_array_equal(np.concatenate(list(batch.iter_images(10))), want)
        np.testing.assert_array_equal(batch.read(7, 19), want[7:19])
        assert batch.statistics() == {"pool3": None, "spatial": None}


def test_statistics(tmp_path, images):
    mu, sigma = _stats(4)
    mu_s, sigma_s = _stats(3, seed=2)
    both = write_batch(tmp_path / "both.npz", 37, SHAPE, [images],
                       extra={"mu": mu, "sigma": sigma, "mu_s": mu_s.astype(np.float32), "sigma_s": sigma_s})
    stats = open_batch(both).statistics()
    for got, want in zip(stats["pool3"] + stats["spatial"], (mu, sigma, mu_s.astype(np.float32), sigma_s)):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    np.savez_compressed(tmp_path / "pool.npz", images, mu=mu, sigma=sigma)
    stats = open_batch(tmp_path / "pool.npz").statistics()
    assert stats["spatial"] is None
    np.testing.assert_array_equal(stats["pool3"][1], sigma)


# ---- writing ---------------------------------------------------------------------------------------
def test_write_batch_checks_chunks(tmp_path, images):
    out = tmp_path / "w.npz"
    for chunks, match in [([images[:30]], "hold 30 images, not the 37"),
                          ([images, images[:1]], "more than the 37"),
                          ([images[:, :4]], r"chunk 0 is uint8 \(37, 4, 7, 3\)"),
                          ([images.astype(np.int16)], "chunk 0 is int16")]:
        with pytest.raises(ValueError, match=match):
            write_batch(out, 37, SHAPE, chunks)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary left behind


def test_write_batch_is_atomic(tmp_path, images):
    out = write_batch(tmp_path / "w.npz", 37, SHAPE, [images])

    def failing():
        yield images[:20]
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        write_batch(out, 37, SHAPE, failing())
    np.testing.assert_array_equal(open_batch(out).read(0, 37), images)  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_write_errors(tmp_path, images):
    with pytest.raises(ValueError, match=r"w\.npy: the output must be an \.npz"):
        write_batch(tmp_path / "w.npy", 37, SHAPE, [images])
    with pytest.raises(ValueError, match="`mu` without `sigma`"):
        write_batch(tmp_path / "w.npz", 37, SHAPE, [images], extra={"mu": np.zeros(3)})
    with pytest.raises(ValueError, match="inconsistent pool3"):
        write_batch(tmp_path / "w.npz", 37, SHAPE, [images], extra={"mu": np.zeros(3), "sigma": np.eye(4)})


# ---- reading errors --------------------------------------------------------------------------------
def test_open_errors(tmp_path, images):
    bad = tmp_path / "text.npz"
    bad.write_text("not a zip")
    cases = [(bad, "text.npz is not a readable .npz"),
             (np.savez, {"foo": images, "bar": 1}, r"no `arr_0` array \(keys found: bar, foo\)"),
             (np.savez, {"arr_0": images.astype(np.float32)}, r"must be uint8 \(N, H, W, 3\).*float32 \(37, 5, 7, 3\)"),
             (np.savez, {"arr_0": images[..., 0]}, r"uint8 \(37, 5, 7\)"),
             (np.savez, {"arr_0": images, "sigma": np.eye(2)}, "`sigma` without `mu`"),
             (np.savez, {"arr_0": images, "mu_s": np.zeros(2), "sigma_s": np.eye(3)},
              r"inconsistent spatial statistics: `mu_s` is float64 \(2,\), `sigma_s` is float64 \(3, 3\)")]
    for i, case in enumerate(cases):
        if len(case) == 2:
            path, match = case
        else:
            save, arrays, match = case
            path = tmp_path / f"case{i}.npz"
            save(path, **arrays)
        with pytest.raises(ValueError, match=match) as info:
            open_batch(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        open_batch(tmp_path / "missing.npz")
