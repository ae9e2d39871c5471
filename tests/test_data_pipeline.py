"""The grain pipeline: image folders with bad files, process sharding, resumable iterators, VAR augmentation."""
import io
import itertools
import logging

import numpy as np
import pytest
from PIL import Image

from arjax.data import SKIPPED, ImageFolder, SyntheticShapes, make_dataset, make_source, process_shard
from arjax.data.transforms import to_pm1, var_eval_transform, var_train_transform

VALID_PER_CLASS = {"cat": 3, "dog": 2, "eel": 4}


def _write_image(path, size, seed, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """3 classes of small PNG/JPEG images (RGB, greyscale, RGBA), plus a corrupt and a truncated JPEG."""
    root = tmp_path_factory.mktemp("folder")
    seeds = itertools.count()
    for name, count in VALID_PER_CLASS.items():
        (root / name).mkdir()
        for k in range(count):
            mode = ("RGB", "L", "RGBA")[k % 3]
            ext = ".png" if mode == "RGBA" or k % 2 else ".JPG"
            _write_image(root / name / f"{k}{ext}", (40 + 7 * k, 36 + 3 * k), next(seeds), mode)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "eel" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)).save(jpeg, "JPEG")
    (root / "eel" / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    return root


# ------------------------------------------------------------------ image folders

def test_image_folder_lists_sorted_classes_and_files(image_root):
    folder = ImageFolder(image_root)
    assert folder.class_names == ["cat", "dog", "eel"]
    assert len(folder) == sum(VALID_PER_CLASS.values()) + 2  # the bad files are listed; decoding drops them
    assert np.bincount(folder.labels).tolist() == [3, 2, 6]
    assert folder.paths == sorted(folder.paths)
    assert not any(p.endswith(".txt") for p in folder.paths)
    assert folder[0]["label"].dtype == np.int32 and folder[0]["path"].endswith("0.JPG")


def test_image_folder_explains_a_bad_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path)


def test_unreadable_images_are_skipped_counted_and_logged(image_root, caplog):
    SKIPPED.reset()
    ds = make_dataset(ImageFolder(image_root), image_size=32, batch_size=2, seed=0, train=False)
    with caplog.at_level(logging.WARNING, logger="arjax.data.decode"):
        batches = list(ds)
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert images.shape == (sum(VALID_PER_CLASS.values()), 32, 32, 3) and images.dtype == np.float32
    assert -1 <= images.min() and images.max() <= 1
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert SKIPPED.count == 2
    assert sorted(p.rsplit("/", 1)[-1] for p in SKIPPED.recent) == ["corrupt.jpg", "truncated.jpg"]
    assert sum("skipping unreadable image" in r.getMessage() for r in caplog.records) == 2


def test_training_over_a_folder_with_bad_files_keeps_going(image_root):
    ds = make_dataset(ImageFolder(image_root), image_size=24, batch_size=4, seed=1, num_epochs=3)
    batches = list(ds)
    assert len(batches) == 3 * sum(VALID_PER_CLASS.values()) // 4  # full batches only
    assert all(b["image"].shape == (4, 24, 24, 3) for b in batches)


# ------------------------------------------------------------------ sharding and shuffling

class IndexSource:
    """Record i carries i, so a batch tells which examples it holds."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"tokens": np.array([i]), "label": np.int32(i % 3)}


def _indices(ds):
    return [int(t) for b in ds for t in b["tokens"][:, 0]]


def test_evaluation_slices_by_process_are_disjoint_and_cover_the_data():
    slices = [list(process_shard(103, p, 2)) for p in range(2)]
    assert not set(slices[0]) & set(slices[1])
    assert sorted(slices[0] + slices[1]) == list(range(103))
    seen = [_indices(make_dataset(IndexSource(103), batch_size=1, seed=5, train=False,
                                  process_index=p, process_count=2)) for p in range(2)]
    assert seen == slices
    with pytest.raises(ValueError, match="process_index"):
        process_shard(10, 2, 2)


@pytest.mark.parametrize("processes", [2, 4])
def test_training_processes_read_their_rows_of_the_single_process_global_batch(processes):
    """Process p's batch s is rows [p B, (p+1) B) of the one-process batch s: the global batch does not
    depend on how many processes read it (what a run moving between process counts relies on)."""
    local = 3
    single = [b["tokens"][:, 0].tolist() for b in
              make_dataset(IndexSource(40), batch_size=local * processes, seed=7, num_epochs=2)]
    per_process = [[b["tokens"][:, 0].tolist() for b in
                    make_dataset(IndexSource(40), batch_size=local, seed=7, num_epochs=2,
                                 process_index=p, process_count=processes)] for p in range(processes)]
    assert all(len(rows) == len(single) for rows in per_process)
    joined = [sum((per_process[p][s] for p in range(processes)), []) for s in range(len(single))]
    assert joined == single
    # resuming at a position (what a change of process count does) continues the same stream
    later = make_dataset(IndexSource(40), batch_size=local, seed=7, num_epochs=2, process_index=1,
                         process_count=processes, start_position=2 * local)
    assert [b["tokens"][:, 0].tolist() for b in later] == per_process[1][2:]


def test_each_epoch_is_a_new_permutation_fixed_by_the_seed():
    order = _indices(make_dataset(IndexSource(20), batch_size=5, seed=3, num_epochs=2))
    first, second = order[:20], order[20:]
    assert sorted(first) == sorted(second) == list(range(20))
    assert first != second and first != list(range(20))
    assert order == _indices(make_dataset(IndexSource(20), batch_size=5, seed=3, num_epochs=2))
    assert order != _indices(make_dataset(IndexSource(20), batch_size=5, seed=4, num_epochs=2))


def test_evaluation_reads_in_order_once_and_keeps_the_last_partial_batch():
    batches = list(make_dataset(IndexSource(7), batch_size=3, seed=0, train=False))
    assert [b["tokens"][:, 0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]


# ------------------------------------------------------------------ resuming

def _assert_resume_matches(make, skip, take):
    """Batches after a save/restore into a freshly built dataset equal the uninterrupted run's, bitwise."""
    reference = list(itertools.islice(iter(make()), skip + take))
    interrupted = iter(make())
    for _ in range(skip):
        next(interrupted)
    state = interrupted.get_state()
    resumed = iter(make())
    resumed.set_state(state)
    for want, got in zip(reference[skip:], itertools.islice(resumed, take), strict=True):
        assert want.keys() == got.keys()
        for key in want:
            assert want[key].tobytes() == got[key].tobytes(), key


def test_resumed_iterator_yields_the_same_batches_across_epochs():
    source = SyntheticShapes(20, 32, seed=2)  # 5 batches per epoch: the resume crosses a boundary
    _assert_resume_matches(lambda: make_dataset(source, image_size=28, batch_size=4, seed=9), skip=3, take=5)


def test_resume_is_exact_when_bad_files_are_dropped(image_root):
    folder = ImageFolder(image_root)
    _assert_resume_matches(lambda: make_dataset(folder, image_size=16, batch_size=3, seed=4), skip=4, take=4)


# ------------------------------------------------------------------ augmentation

def test_train_crop_and_flip_are_a_crop_of_the_resized_image_and_deterministic():
    # 36 = round(32 * 1.125), so the resize is the identity and every output is an exact crop (or mirror).
    image = np.random.default_rng(0).integers(0, 256, (36, 50, 3), np.uint8)
    seen = set()
    for seed in range(40):
        out = var_train_transform(image, 32, np.random.default_rng(seed))
        again = var_train_transform(image, 32, np.random.default_rng(seed))
        assert np.array_equal(out, again)
        matches = [(flip, top, left) for flip in (False, True) for top in range(5) for left in range(19)
                   if np.array_equal((out[:, ::-1] if flip else out), image[top:top + 32, left:left + 32])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert {flip for flip, _, _ in seen} == {False, True}
    assert len({(top, left) for _, top, left in seen}) > 20


def test_eval_transform_is_a_centre_crop_without_flip():
    image = np.random.default_rng(0).integers(0, 256, (36, 50, 3), np.uint8)
    assert np.array_equal(var_eval_transform(image, 32), image[2:34, 9:41])


def test_augmented_batches_lie_in_pm1_and_depend_only_on_the_seed():
    source = SyntheticShapes(16, 40, seed=0)
    run = lambda seed: list(itertools.islice(iter(make_dataset(source, image_size=32, batch_size=8, seed=seed)), 2))
    a, b, c = run(1), run(1), run(2)
    for batch in a:
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        assert batch["label"].dtype == np.int32
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_each_epoch_draws_a_fresh_crop_and_flip_for_the_same_image():
    source = SyntheticShapes(4, 40, seed=0)  # labels 0..3 name the four images
    first, second = make_dataset(source, image_size=32, batch_size=4, seed=1, num_epochs=2)
    by_label = lambda batch: [batch["image"][list(batch["label"]).index(k)] for k in range(4)]
    assert not any(np.array_equal(a, b) for a, b in zip(by_label(first), by_label(second)))


def test_without_augmentation_synthetic_images_pass_through_exactly():
    source = make_source("synthetic", num_examples=6, image_size=24, seed=1)
    batch = next(iter(make_dataset(source, image_size=24, batch_size=6, seed=0, train=False, augment=False)))
    assert np.array_equal(batch["image"], np.stack([to_pm1(source[i]["image"]) for i in range(6)]))
    assert to_pm1(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]


def test_image_sources_need_an_image_size():
    with pytest.raises(ValueError, match="image_size"):
        make_dataset(SyntheticShapes(4, 16), batch_size=2, seed=0)
