"""Datasets: shapes, ranges, class counts, checksums, the split and the device batch iterator."""
from __future__ import annotations

import shutil

import pytest
import torch

from nslib import data


@pytest.mark.parametrize("split,n,per_class", [("train", 60000, 6000), ("test", 10000, 1000)])
def test_fmnist_is_the_full_real_dataset(split, n, per_class):
    x, y = data.load("fmnist", split)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y, minlength=10).tolist() == [per_class] * 10
    # real images, not noise: the mean intensity of Fashion-MNIST is about 0.286
    assert abs(float(x.mean()) - 0.286) < 0.01


def test_mnist5k_split_is_stratified_disjoint_and_deterministic():
    xtr, ytr = data.load("mnist5k", "train")
    xte, yte = data.load("mnist5k", "test")
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert torch.bincount(ytr).tolist() == [400] * 10 and torch.bincount(yte).tolist() == [100] * 10
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    # no test image appears in train
    train_rows = {row.numpy().tobytes() for row in (xtr.view(4000, -1) * 255).round().byte()}
    assert not any(row.numpy().tobytes() in train_rows for row in (xte.view(1000, -1) * 255).round().byte())
    assert torch.equal(data.load("mnist5k", "test")[0], xte)
    assert abs(float(xtr.mean()) - 0.13) < 0.01  # MNIST's mean intensity


def test_corrupt_or_truncated_file_is_an_error(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data.data_dir() / "mnist5k", root / "mnist5k")
    path = root / "mnist5k" / "mnist5k.npz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.load("mnist5k", "train", root=root)
    path.unlink()
    with pytest.raises(data.DataUnavailable, match="mnist5k.npz"):
        data.load("mnist5k", "train", root=root)


def test_missing_download_dataset_names_files_and_folder(tmp_path):
    with pytest.raises(data.DataUnavailable, match="cifar-10-batches-py"):
        data.load("cifar10", "train", root=tmp_path, download=False)
    with pytest.raises(data.DataUnavailable, match=r"MNIST/raw"):
        data.load("mnist", "test", root=tmp_path, download=False)


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="name must be one of"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split must be"):
        data.load("fmnist", "val")


def test_synthetic_has_the_shape_of_its_model_dataset():
    x, y = data.load("synthetic", "train", like="cifar10", n=64, seed=3)
    assert x.shape == (64, 3, 32, 32) and y.shape == (64,) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x, data.load("synthetic", "train", like="cifar10", n=64, seed=3)[0])
    assert not torch.equal(x, data.load("synthetic", "test", like="cifar10", n=64, seed=3)[0])


def test_stratified_split_keeps_proportions():
    y = torch.tensor([0] * 90 + [1] * 10)
    keep, hold = data.stratified_split(y, 20, seed=0)
    assert len(hold) == 20 and len(keep) == 80
    assert torch.bincount(y[hold]).tolist() == [18, 2]
    assert set(keep.tolist()).isdisjoint(hold.tolist())


def test_batches_cover_each_example_once_and_are_seeded():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    got = list(data.batches(x, y, 4, seed=1))
    assert [len(b[1]) for b in got] == [4, 4, 2]
    ys = torch.cat([b[1] for b in got])
    assert sorted(ys.tolist()) == list(range(10))
    assert got[0][0].dtype == torch.float32  # uint8 converted per batch
    for xb, yb in got:  # images still match their labels
        assert torch.equal((xb[:, 0, 0, 0] * 255).round().long(), yb)
    assert torch.equal(ys, torch.cat([b[1] for b in data.batches(x, y, 4, seed=1)]))
    assert not torch.equal(ys, torch.cat([b[1] for b in data.batches(x, y, 4, seed=2)]))
    assert len(list(data.batches(x, y, 4, drop_last=True))) == 2


def test_crop_flip_is_a_shifted_possibly_mirrored_window():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    out = data.augment_crop_flip(x, pad=2)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
