"""The Omniglot data layer against the real data (no mocks). After the first run has built
the decode cache, this module runs in a few seconds."""
import io
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import (
    DataNotFoundError,
    TaskBatch,
    TaskSampler,
    load_image_folder,
    load_omniglot,
    preprocess_image,
    resolve_data_root,
)
from model.data.root import find_root

torch.set_num_threads(1)


def png_path(data, class_id, drawing=0):
    """The PNG of one cached image (classes and files are both in sorted order)."""
    key, alphabet, character = data.classes[class_id]
    folder = data.root / "omniglot-py" / f"images_{key}" / alphabet / character
    return sorted(folder.glob("*.png"))[drawing]


def image_index(data, class_id, drawing=0):
    return int(data.class_images[class_id][drawing])


# --- the dataset and its splits --------------------------------------------------------


def test_dataset_shape(omniglot):
    assert omniglot.images.shape == (32460, 28, 28) and omniglot.images.dtype == np.uint8
    assert omniglot.image_class.shape == (32460,)
    assert len(omniglot.classes) == 1623 and omniglot.classes == sorted(omniglot.classes)
    assert all(len(ix) == 20 for ix in omniglot.class_images)
    # strokes high on a zero background
    assert omniglot.images.mean() < 40 and omniglot.images.max() == 255
    assert np.median(omniglot.images) == 0


def test_split_counts(omniglot):
    counts = {part: len(omniglot.class_ids("vinyals", part)) for part in ("train", "val", "test")}
    assert counts == {"train": 1028, "val": 172, "test": 423}
    assert len(omniglot.class_ids("lake", "train")) == 964
    assert len(omniglot.class_ids("lake", "test")) == 659
    with pytest.raises(ValueError, match="val"):
        omniglot.class_ids("lake", "val")
    with pytest.raises(ValueError, match="split"):
        omniglot.class_ids("nope", "train")


@pytest.mark.parametrize("split,parts", [("vinyals", ("train", "val", "test")), ("lake", ("train", "test"))])
def test_splits_disjoint_and_covering(omniglot, split, parts):
    sets = [set(omniglot.class_ids(split, p)) for p in parts]
    assert sum(len(s) for s in sets) == len(set().union(*sets)) == 1623
    assert set().union(*sets) == set(range(1623))


def test_rotation_class_counts(omniglot):
    sizes = [len(TaskSampler(omniglot, "vinyals", p, 5, 1, 1, True, 0).class_set) for p in ("train", "val", "test")]
    assert sizes == [4112, 688, 1692]
    assert len(TaskSampler(omniglot, "vinyals", "train", 5, 1, 1, False, 0).class_set) == 1028


# --- the task sampler -------------------------------------------------------------------


def test_task_shapes(omniglot):
    sampler = TaskSampler(omniglot, "vinyals", "train", n_way=5, k_shot=3, q_query=2, rotations=True, seed=1)
    t = sampler.task(0, 0)
    assert t.support_x.shape == (15, 1, 28, 28) and t.support_x.dtype == torch.float32
    assert t.query_x.shape == (10, 1, 28, 28) and t.query_x.dtype == torch.float32
    assert t.support_y.dtype == torch.int64 and t.query_y.dtype == torch.int64
    assert t.support_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert t.query_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert 0.0 <= t.support_x.min() and t.support_x.max() <= 1.0 and t.support_x.max() > 0.5
    assert len(t.classes) == 5 and len(set(t.classes)) == 5

    batch = sampler.tasks(4, [0, 1, 2])
    assert isinstance(batch, TaskBatch) and len(batch) == 3
    assert batch.support_x.shape == (3, 15, 1, 28, 28) and batch.support_y.shape == (3, 15)
    assert batch.query_x.shape == (3, 10, 1, 28, 28) and batch.query_y.shape == (3, 10)
    # a batched task is the same task as drawn alone
    alone = sampler.task(4, 1)
    assert torch.equal(batch.support_x[1], alone.support_x) and torch.equal(batch.query_x[1], alone.query_x)
    assert batch.classes[1] == alone.classes


def test_support_and_query_disjoint(omniglot):
    sampler = TaskSampler(omniglot, "vinyals", "train", n_way=20, k_shot=5, q_query=15, rotations=True, seed=3)
    for index in range(20):
        t = sampler.task(0, index)
        rot_s = [t.classes[y][1] for y in t.support_y.tolist()]
        rot_q = [t.classes[y][1] for y in t.query_y.tolist()]
        support = set(zip(t.support_index.tolist(), rot_s))
        query = set(zip(t.query_index.tolist(), rot_q))
        assert len(support) == 100 and len(query) == 300  # no repeats inside either set
        assert not support & query
        # every image belongs to the base class of its label
        for idx, y in zip(t.support_index.tolist() + t.query_index.tolist(), t.support_y.tolist() + t.query_y.tolist()):
            assert omniglot.image_class[idx] == t.classes[y][0]


def test_tasks_are_a_function_of_seed_epoch_index(omniglot):
    def make(seed):
        return TaskSampler(omniglot, "vinyals", "train", n_way=5, k_shot=1, q_query=5, rotations=True, seed=seed)

    a, b = make(7), make(7)
    # different call order, fresh sampler: still the same task
    b.task(9, 9)
    b.task(0, 3)
    ta, tb = a.task(2, 5), b.task(2, 5)
    assert ta.classes == tb.classes
    assert torch.equal(ta.support_x, tb.support_x) and torch.equal(ta.query_x, tb.query_x)
    assert np.array_equal(ta.support_index, tb.support_index)

    def key(t):
        return (tuple(t.classes), tuple(t.support_index.tolist()), tuple(t.query_index.tolist()))

    others = [make(8).task(2, 5), a.task(3, 5), a.task(2, 6)]
    assert all(key(o) != key(ta) for o in others)
    # the part is part of the seed: val and train tasks differ beyond the class set
    val = TaskSampler(omniglot, "vinyals", "val", 5, 1, 5, True, 7).task(2, 5)
    assert key(val) != key(ta)


def test_rotations_rotate_the_cached_image(omniglot):
    sampler = TaskSampler(omniglot, "vinyals", "train", n_way=50, k_shot=2, q_query=1, rotations=True, seed=0)
    t = sampler.task(0, 0)
    assert {r for _, r in t.classes} == {0, 1, 2, 3}
    for x, y, idx in zip(t.support_x, t.support_y.tolist(), t.support_index.tolist()):
        rotation = t.classes[y][1]
        expected = np.rot90(omniglot.images[idx], rotation).astype(np.float32) / 255
        assert np.array_equal(x[0].numpy(), expected)
    plain = TaskSampler(omniglot, "vinyals", "train", n_way=50, k_shot=2, q_query=1, rotations=False, seed=0)
    t = plain.task(0, 0)
    assert {r for _, r in t.classes} == {0}
    assert np.array_equal(t.support_x[0, 0].numpy(), omniglot.images[t.support_index[0]] / np.float32(255))


@pytest.mark.parametrize("split", ["vinyals", "lake"])
def test_test_tasks_use_test_classes_only(omniglot, split):
    test_classes = set(omniglot.class_ids(split, "test"))
    sampler = TaskSampler(omniglot, split, "test", n_way=20, k_shot=1, q_query=1, rotations=True, seed=5)
    for index in range(25):
        assert {c for c, _ in sampler.task(1, index).classes} <= test_classes


@pytest.mark.parametrize(
    "kwargs,fields",
    [
        (dict(n_way=1693), ["n_way", "1692"]),
        (dict(n_way=424, rotations=False), ["n_way", "423"]),
        (dict(n_way=0), ["n_way"]),
        (dict(k_shot=0), ["k_shot"]),
        (dict(q_query=-1), ["q_query"]),
        (dict(k_shot=10, q_query=11), ["k_shot", "q_query", "20"]),
        (dict(rotations="yes"), ["rotations"]),
    ],
)
def test_impossible_tasks_name_the_field(omniglot, kwargs, fields):
    args = dict(n_way=5, k_shot=1, q_query=1, rotations=True, seed=0) | kwargs
    with pytest.raises(ValueError) as err:
        TaskSampler(omniglot, "vinyals", "test", **args)
    for f in fields:
        assert f in str(err.value)


def test_largest_possible_task(omniglot):
    t = TaskSampler(omniglot, "vinyals", "val", n_way=688, k_shot=10, q_query=10, rotations=True, seed=0).task(0, 0)
    assert t.support_x.shape == (6880, 1, 28, 28) and len(set(t.classes)) == 688


# --- finding the data -------------------------------------------------------------------


def test_missing_root_lists_where_it_looked(tmp_path, monkeypatch):
    missing = tmp_path / "no-omniglot-here"
    with pytest.raises(DataNotFoundError) as err:
        resolve_data_root(str(missing))
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert str(missing) in msg and "LAMANAS_DATA" in msg and "download-data" in msg

    monkeypatch.setenv("LAMANAS_DATA", str(tmp_path / "env-dir"))
    with pytest.raises(DataNotFoundError, match="env-dir"):
        resolve_data_root()

    places = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    with pytest.raises(DataNotFoundError) as err:
        find_root(places)
    assert all(str(p) in str(err.value) for p in places)


def test_root_forms(data_root, monkeypatch):
    assert resolve_data_root(str(data_root)) == data_root
    assert resolve_data_root(str(data_root / "omniglot-py")) == data_root
    monkeypatch.setenv("LAMANAS_DATA", str(data_root / "omniglot-py"))
    assert resolve_data_root() == data_root


def test_cache_is_written_to_the_given_dir(omniglot, tmp_path):
    # A real subset of the data (3 characters from each set) keeps the decode short.
    mini = tmp_path / "mini"
    picked = [c for c in omniglot.classes if c[0] == "background"][:3] + [c for c in omniglot.classes if c[0] == "evaluation"][-3:]
    for key, alphabet, character in picked:
        rel = os.path.join("omniglot-py", f"images_{key}", alphabet, character)
        shutil.copytree(omniglot.root / rel, mini / rel)
    cache = tmp_path / "cache"
    data = load_omniglot(mini, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert files == [data.cache_path] and data.cache_path.parent == cache
    assert data.classes == picked and data.images.shape == (120, 28, 28)
    assert data.fingerprint != omniglot.fingerprint
    full_ids = [omniglot.classes.index(c) for c in picked]
    full_images = np.concatenate([omniglot.images[omniglot.class_images[i]] for i in full_ids])
    assert np.array_equal(data.images, full_images)

    # the second load reads the cache instead of writing it again
    written = data.cache_path.stat().st_mtime_ns
    again = load_omniglot(mini, cache_dir=cache)
    assert np.array_equal(again.images, data.images) and data.cache_path.stat().st_mtime_ns == written
    # a damaged cache is rebuilt, not trusted
    data.cache_path.write_bytes(b"not a zip")
    assert np.array_equal(load_omniglot(mini, cache_dir=cache).images, data.images)
    # another image size is another cache file
    small = load_omniglot(mini, size=14, cache_dir=cache)
    assert small.images.shape == (120, 14, 14) and len(list(cache.glob("*.npz"))) == 2
    assert not list(cache.glob("*.tmp"))


def test_cached_load_is_fast(omniglot):
    start = time.perf_counter()
    data = load_omniglot(omniglot.root)
    seconds = time.perf_counter() - start
    assert np.array_equal(data.images, omniglot.images)
    assert seconds < 5, f"cached load took {seconds:.2f} s"


def test_finding_data_and_images_needs_no_torch(data_root):
    # The backend and web app resolve the root and check user images without torch.
    code = (
        "import sys; from model.data import resolve_data_root, preprocess_image, load_image_folder; "
        "resolve_data_root(); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


# --- user images ------------------------------------------------------------------------


@pytest.mark.parametrize("class_id,drawing", [(0, 0), (500, 7), (1622, 19)])
def test_dataset_png_preprocesses_like_the_cache(omniglot, class_id, drawing):
    path = png_path(omniglot, class_id, drawing)
    expected = omniglot.images[image_index(omniglot, class_id, drawing)].astype(np.float32) / 255
    for src in (path, str(path), path.read_bytes(), Image.open(path)):
        x = preprocess_image(src)
        assert x.shape == (1, 28, 28) and x.dtype == np.float32
        assert np.array_equal(x[0], expected)


def test_polarity_is_detected(omniglot, tmp_path):
    path = png_path(omniglot, 42, 3)
    expected = preprocess_image(path)
    gray = Image.open(path).convert("L")
    # white strokes on black: kept as they are
    inverted = tmp_path / "inverted.png"
    Image.eval(gray, lambda v: 255 - v).save(inverted)
    assert np.array_equal(preprocess_image(inverted), expected)
    # colour image, dark strokes on light: converted and inverted
    buf = io.BytesIO()
    gray.convert("RGB").save(buf, format="BMP")
    assert np.array_equal(preprocess_image(buf.getvalue()), expected)
    # black ink on a transparent sheet: the transparent part is background
    ink = np.asarray(gray) < 128
    rgba = np.zeros((105, 105, 4), np.uint8)
    rgba[..., 3] = np.where(ink, 255, 0)
    assert np.array_equal(preprocess_image(Image.fromarray(rgba, "RGBA")), expected)
    # a lossy JPEG still lands close to the training pixels
    jpeg = tmp_path / "drawing.jpg"
    gray.save(jpeg, quality=90)
    assert np.abs(preprocess_image(jpeg) - expected).mean() < 0.05
    # non-square images are padded, not squashed
    assert preprocess_image(gray.crop((0, 0, 105, 60))).shape == (1, 28, 28)


def test_load_image_folder(omniglot, tmp_path):
    support = tmp_path / "support"
    for name, class_id in (("b_second", 10), ("a_first", 20)):
        (support / name).mkdir(parents=True)
        for drawing in (0, 1):
            shutil.copy(png_path(omniglot, class_id, drawing), support / name / f"{drawing}.png")
    classes, images, labels = load_image_folder(support)
    assert classes == ["a_first", "b_second"] and labels == [0, 0, 1, 1]
    assert np.array_equal(images[0][0], omniglot.images[image_index(omniglot, 20, 0)] / np.float32(255))
    assert np.array_equal(images[3][0], omniglot.images[image_index(omniglot, 10, 1)] / np.float32(255))

    query = tmp_path / "query"
    query.mkdir()
    shutil.copy(png_path(omniglot, 10, 5), query / "q1.png")
    Image.open(png_path(omniglot, 20, 5)).convert("RGB").save(query / "q0.jpg")
    (query / "notes.txt").write_text("not an image")
    classes, images, labels, paths = load_image_folder(query, return_paths=True)
    assert classes == [] and labels is None and [p.name for p in paths] == ["q0.jpg", "q1.png"]
    assert all(x.shape == (1, 28, 28) for x in images)

    shutil.copy(png_path(omniglot, 10, 6), support / "loose.png")
    with pytest.raises(ValueError, match="loose"):
        load_image_folder(support)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")
