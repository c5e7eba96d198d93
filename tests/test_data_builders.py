"""TFDS builders: digits, image folder, arrays, catalog errors. No test touches the network."""

import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from jaxdiff import data


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    data.get_builder("digits", data_dir=path)
    return path


def _read_all(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


def test_digits_records_match_scikit_learn(digits_dir):
    builder = data.get_builder("digits", data_dir=digits_dir)
    reference = load_digits()
    n = data.DIGITS_NUM_TRAIN
    for split, sl in (("train", slice(0, n)), ("test", slice(n, None))):
        records = _read_all(builder, split)
        assert len(records) == len(reference.target[sl])
        images = np.stack([r["image"] for r in records])
        labels = np.array([r["label"] for r in records])
        assert images.shape == (len(records), 8, 8, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[..., 0], reference.images[sl].astype(np.uint8))
        np.testing.assert_array_equal(labels, reference.target[sl])
        assert [r["caption"].decode() for r in records[:3]] == [
            f"a handwritten digit {d}" for d in reference.target[sl][:3]
        ]
    meta = data.dataset_metadata(builder)
    assert meta.image_shape == (8, 8, 1) and meta.num_classes == 10 and meta.has_caption
    assert meta.split_sizes == {"train": 1500, "test": 297} and meta.pixel_max == 16


def test_digits_pipeline_maps_0_to_16_onto_minus1_to_1(digits_dir):
    it = data.make_pipeline(
        "digits",
        data_dir=digits_dir,
        split="test",
        global_batch_size=100,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
    )
    batches = list(it)
    assert [len(b["label"]) for b in batches] == [100, 100, 97]
    images = np.concatenate([b["image"] for b in batches])
    reference = load_digits()
    expected = reference.images[data.DIGITS_NUM_TRAIN :, :, :, None] / 8.0 - 1.0
    assert images.dtype == np.float32 and images.shape == (297, 8, 8, 1)
    np.testing.assert_array_equal(images, expected.astype(np.float32))
    assert images.min() == -1.0 and images.max() == 1.0
    labels = np.concatenate([b["label"] for b in batches])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, reference.target[data.DIGITS_NUM_TRAIN :])
    captions = np.concatenate([b["caption"] for b in batches])
    assert captions[5] == f"a handwritten digit {labels[5]}"


def test_prepared_dataset_is_reused(digits_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("prepared again")

    monkeypatch.setattr(data.Digits, "_split_generators", fail)
    builder = data.get_builder("digits", data_dir=digits_dir)
    assert len(builder.as_data_source(split="train")) == 1500


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _colour(value, h=6, w=5):
    return np.full((h, w, 3), value, np.uint8)


def test_image_folder_with_class_folders_and_captions(tmp_path):
    root = tmp_path / "pets"
    _write_png(root / "dog" / "b.png", _colour(30, 7, 9))
    _write_png(root / "cat" / "z.png", _colour(10))
    _write_png(root / "cat" / "a.png", _colour(20))
    (root / "cat" / "a.txt").write_text("a grey cat\n")
    builder = data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=root)
    records = _read_all(builder, "train")
    # Sorted by class, then path: cat/a, cat/z, dog/b.
    assert [int(r["image"][0, 0, 0]) for r in records] == [20, 10, 30]
    assert [r["label"] for r in records] == [0, 0, 1]
    assert [r["caption"].decode() for r in records] == ["a grey cat", "", ""]
    assert records[2]["image"].shape == (7, 9, 3)
    meta = data.dataset_metadata(builder)
    assert meta.class_names == ("cat", "dog") and meta.image_shape == (None, None, 3)
    it = data.make_pipeline(builder, global_batch_size=3, image_size=4, shuffle=False, num_epochs=1)
    batch = next(it)
    assert batch["image"].shape == (3, 4, 4, 3)
    np.testing.assert_allclose(batch["image"][:, 0, 0, 0], np.array([20, 10, 30]) / 127.5 - 1)


def test_image_folder_flat_and_with_splits(tmp_path):
    flat = tmp_path / "flat"
    for i in range(3):
        _write_png(flat / f"{i}.png", _colour(i))
    builder = data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=flat, channels=1)
    meta = data.dataset_metadata(builder)
    assert meta.num_classes is None and not meta.has_caption and meta.image_shape[2] == 1
    assert [int(r["image"][0, 0, 0]) for r in _read_all(builder, "train")] == [0, 1, 2]

    split = tmp_path / "split"
    _write_png(split / "train" / "x" / "0.png", _colour(1))
    _write_png(split / "train" / "y" / "0.png", _colour(2))
    _write_png(split / "test" / "y" / "0.png", _colour(3))
    (split / "test" / "x").mkdir()
    builder = data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=split)
    assert data.dataset_metadata(builder).split_sizes == {"train": 2, "test": 1}
    assert [r["label"] for r in _read_all(builder, "test")] == [1]


def test_image_folder_changed_content_is_prepared_anew(tmp_path):
    root = tmp_path / "imgs"
    _write_png(root / "0.png", _colour(0))
    first = data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=root)
    _write_png(root / "1.png", _colour(1))
    second = data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=root)
    assert first.data_path != second.data_path
    assert len(second.as_data_source(split="train")) == 2


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=tmp_path / "empty")
    with pytest.raises(ValueError, match="path="):
        data.get_builder("image_folder", data_dir=tmp_path / "tfds")
    mixed = tmp_path / "mixed"
    _write_png(mixed / "a.png", _colour(0))
    _write_png(mixed / "cls" / "b.png", _colour(0))
    with pytest.raises(ValueError, match="both images"):
        data.get_builder("image_folder", data_dir=tmp_path / "tfds", path=mixed)


def test_corrupt_image_names_the_file_and_leaves_no_dataset(tmp_path):
    root = tmp_path / "imgs"
    _write_png(root / "good.png", _colour(0))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    tfds_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match="broken.png"):
        data.get_builder("image_folder", data_dir=tfds_dir, path=root)
    assert list((tfds_dir / "image_folder").glob("*/1.0.0")) == []
    (root / "broken.png").unlink()
    builder = data.get_builder("image_folder", data_dir=tfds_dir, path=root)
    assert len(builder.as_data_source(split="train")) == 1


def test_array_dataset_round_trip_and_reuse(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 4, 3, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0])
    kwargs = dict(images=images, labels=labels, captions=[f"c{i}" for i in range(5)])
    builder = data.get_builder("arrays", data_dir=tmp_path, **kwargs)
    records = _read_all(builder, "train")
    np.testing.assert_array_equal(np.stack([r["image"] for r in records]), images)
    assert [r["label"] for r in records] == labels.tolist()
    assert records[4]["caption"] == b"c4"
    assert data.dataset_metadata(builder).num_classes == 3
    again = data.get_builder("arrays", data_dir=tmp_path, **kwargs)
    assert again.data_path == builder.data_path
    other = data.get_builder("arrays", data_dir=tmp_path, images=images[:2])
    assert other.data_path != builder.data_path
    with pytest.raises(ValueError, match="uint8"):
        data.get_builder("arrays", data_dir=tmp_path, images=images.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        data.get_builder("arrays", data_dir=tmp_path, images=images, labels=labels[:3])


def test_catalog_dataset_not_prepared_and_downloads_disabled(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match="download=True"):
        data.get_builder("mnist", data_dir=tmp_path)
    with pytest.raises(data.DatasetNotPreparedError, match="download=True"):
        data.make_pipeline("mnist", data_dir=tmp_path, global_batch_size=2)
    assert not (tmp_path / "mnist").exists()


def test_catalog_preparation_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
    def needs_tf(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(tfds.builder_cls("mnist"), "download_and_prepare", needs_tf)
    with pytest.raises(ImportError, match=r"pip install 'jaxdiff\[tf\]'"):
        data.get_builder("mnist", data_dir=tmp_path, download=True)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset'"):
        data.get_builder("no_such_dataset", data_dir=tmp_path)


def test_processes_sharing_a_data_dir_prepare_once(tmp_path):
    # Both start preparing at once; the lock makes the second reuse the first's files.
    script = (
        "import sys; from jaxdiff import data; "
        "b = data.get_builder('digits', data_dir=sys.argv[1]); "
        "print(len(b.as_data_source(split='train')))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert [out.split()[-1] for out, _ in results] == ["1500", "1500"]
    assert sum("Dataset digits downloaded and prepared" in out for out, _ in results) == 1
    assert [p.name for p in (tmp_path / "digits").iterdir()] == ["1.0.0"]


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXDIFF_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.delenv("JAXDIFF_DATA_DIR")
    assert data.default_data_dir().parts[-3:] == (".cache", "jaxdiff", "tensorflow_datasets")
