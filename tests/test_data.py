import gzip

import numpy as np
import pytest
import torch
from conftest import FASHION_DIR, write_idx, write_tiny_release

from mlp_experiments import data
from mlp_experiments.batches import DeviceBatches, LoaderBatches
from mlp_experiments.config.compose import compose_config
from mlp_experiments.errors import UserError


def test_read_idx_round_trip_gzipped_and_plain(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    for name in ("images.gz", "images"):
        tensor, md5 = data.read_idx(write_idx(tmp_path / name, images))
        assert tensor.dtype == torch.uint8
        assert torch.equal(tensor, torch.from_numpy(images.astype(np.uint8)))
        assert len(md5) == 32


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((3, 28, 28)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or damaged"):
        data.read_idx(path)


def test_read_idx_rejects_a_corrupted_gzip(tmp_path):
    path = write_idx(tmp_path / "images.gz", np.zeros((3, 28, 28)))
    raw = bytearray(path.read_bytes())
    raw[20:40] = b"\xff" * 20
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="corrupt"):
        data.read_idx(path)


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="not an IDX file"):
        data.read_idx(path)


def test_release_with_wrong_checksum_is_refused_unless_verify_is_off(tmp_path):
    write_tiny_release(tmp_path / "MNIST" / "raw")  # torchvision's layout under the root
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}", "data.val_size=20"]).data
    with pytest.raises(UserError, match="does not match the published mnist release"):
        data.load_dataset(cfg)
    cfg.verify = False
    dataset = data.load_dataset(cfg)
    assert len(dataset.train[0]) == 100 and len(dataset.val[0]) == 20
    assert len(dataset.test[0]) == 40
    assert dataset.classes[3] == "3"


def test_missing_data_names_where_it_looked_and_three_fixes(tmp_path, monkeypatch):
    import torchvision

    def no_network(self, *args, **kwargs):
        raise RuntimeError("Error downloading: <urlopen error Name or service not known>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}"]).data
    with pytest.raises(UserError) as error:
        data.load_dataset(cfg)
    message = str(error.value)
    assert str(tmp_path) in message and "Name or service not known" in message
    assert "1. data.root=" in message and "2. " in message and "3. run once" in message


def test_validation_split_is_disjoint_and_reproducible():
    images = torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1).expand(100, 28, 28)
    labels = torch.arange(100)
    (train_x, train_y), (val_x, val_y) = data.split_validation(images, labels, 30, seed=7)
    assert len(val_y) == 30 and len(train_y) == 70
    assert set(train_y.tolist()).isdisjoint(val_y.tolist())
    assert set(train_y.tolist()) | set(val_y.tolist()) == set(range(100))
    assert torch.equal(data.split_validation(images, labels, 30, seed=7)[1][1], val_y)
    assert not torch.equal(data.split_validation(images, labels, 30, seed=8)[1][1], val_y)


def test_validation_size_must_leave_training_examples():
    with pytest.raises(UserError, match="data.val_size=10"):
        data.split_validation(torch.zeros(10, 28, 28), torch.zeros(10), 10, seed=0)


CPU = torch.device("cpu")


@pytest.mark.parametrize("batches_class", [DeviceBatches, LoaderBatches])
def test_batches_yield_every_example_exactly_once_per_epoch(batches_class):
    images = torch.randint(0, 256, (103, 28, 28), dtype=torch.uint8)
    labels = torch.arange(103)
    batches = batches_class(images, labels, 10, CPU, shuffle=True)
    assert len(batches) == 11
    orders = []
    for epoch in (1, 2):
        seen = torch.cat([y for _, y in batches.epoch(seed=0, epoch=epoch)])
        assert sorted(seen.tolist()) == list(range(103))
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1])  # a fresh permutation each epoch
    again = torch.cat([y for _, y in batches.epoch(seed=0, epoch=1)])
    assert torch.equal(again, orders[0])  # the same (seed, epoch) draws the same order


@pytest.mark.parametrize("stats", [None, (0.1307, 0.3081)])
def test_device_batches_match_the_notes_to_tensor_and_normalize_path(stats):
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    labels = torch.arange(20)
    ours = list(DeviceBatches(images, labels, 8, CPU, False, stats).epoch(0, 0))
    notes = list(LoaderBatches(images, labels, 8, CPU, False, stats).epoch(0, 0))
    for (x_ours, y_ours), (x_notes, y_notes) in zip(ours, notes, strict=True):
        assert x_ours.shape == x_notes.shape == (len(y_ours), 1, 28, 28)
        assert torch.allclose(x_ours, x_notes, atol=1e-6)
        assert torch.equal(y_ours, y_notes)


def test_synthetic_data_is_deterministic():
    cfg = compose_config(["data=synthetic"]).data
    first, second = data.build_dataset(cfg), data.build_dataset(cfg)
    assert torch.equal(first.train[0], second.train[0]) and first.digest == second.digest
    cfg.seed = 1
    assert data.build_dataset(cfg).digest != first.digest


def test_a_dataset_is_built_once_per_process_for_the_same_settings():
    cfg = compose_config(["data=synthetic", "data.train_size=300"]).data
    first = data.load_dataset(cfg)
    assert data.load_dataset(cfg.copy()) is first
    cfg.val_size = 100
    other = data.load_dataset(cfg)
    assert other is not first and len(other.val[0]) == 100


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_is_found_and_verified(tmp_path):
    cfg = compose_config([f"data.root={tmp_path}"]).data  # nothing there: the Debian copy is next
    dataset = data.load_dataset(cfg)
    assert dataset.source == str(FASHION_DIR)
    assert [len(split[1]) for split in (dataset.train, dataset.val, dataset.test)] == [
        55000, 5000, 10000
    ]
    assert torch.bincount(dataset.test[1]).tolist() == [1000] * 10
    assert dataset.classes[9] == "ankle boot"
    with gzip.open(FASHION_DIR / "t10k-labels-idx1-ubyte.gz") as labels:
        assert dataset.test[1][:5].tolist() == list(labels.read()[8:13])
