"""Datasets: a registry, loaders returning tensors, and a device-resident batch iterator.

``load(name, split)`` returns ``(x, y)``: x float32 [N, C, H, W] in [0, 1], y int64 [N].

| name | what | offline source |
|---|---|---|
| fmnist | Fashion-MNIST, 60,000 / 10,000, real | IDX files committed in data/fashion-mnist |
| mnist5k | MNIST, a real 5,000-image subset, split 4,000 / 1,000 | data/mnist5k/mnist5k.npz |
| mnist | MNIST, full | data/mnist (torchvision layout), else torchvision download |
| cifar10 | CIFAR-10, full | data/cifar-10-batches-py, else torchvision download |
| synthetic | random images shaped like any of the above | generated from a seed |

Embedded files are verified against their SHA-256 on first load in a process; a corrupt or truncated
file raises an error instead of yielding a wrong dataset.

Usage::

    x, y = nslib.data.load("fmnist", "train")
    for xb, yb in nslib.data.batches(x, y, batch_size=128, seed=0, device="cuda"):
        ...
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from nslib.store import data_dir

__all__ = ["DATASETS", "DatasetInfo", "load", "batches", "augment_crop_flip", "stratified_split",
           "DataUnavailable", "test_set"]


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    size: int
    classes: int
    mean: tuple
    std: tuple
    augment: bool  # random crop (4-pixel padding) + horizontal flip during training
    train_size: int
    test_size: int


DATASETS = {
    "fmnist": DatasetInfo(1, 28, 10, (0.2860,), (0.3530,), False, 60000, 10000),
    "mnist5k": DatasetInfo(1, 28, 10, (0.1307,), (0.3081,), False, 4000, 1000),
    "mnist": DatasetInfo(1, 28, 10, (0.1307,), (0.3081,), False, 60000, 10000),
    "cifar10": DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, 50000, 10000),
}
# "synthetic" borrows the shape of one of the above (argument ``like``).

CLASS_NAMES = {
    "fmnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"],
    "mnist5k": [str(i) for i in range(10)],
    "mnist": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}

# SHA-256 of the embedded files, checked before their first use in a process.
CHECKSUMS = {
    "fashion-mnist/train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "fashion-mnist/train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "fashion-mnist/t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "mnist5k/mnist5k.npz": "246e0c30eeea57c8d0037d3f38c8e00651ec204cc61b8022563e9aeeb9d756f4",
}
_verified: set[Path] = set()


class DataUnavailable(FileNotFoundError):
    """A dataset is neither on disk nor downloadable."""


def _verify(root: Path, rel: str) -> Path:
    path = root / rel
    if path in _verified:
        return path
    if not path.exists():
        raise DataUnavailable(f"missing embedded data file {path} (expected in the checkout's data/ folder; "
                              f"restore it with `git checkout -- data/{rel}`)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CHECKSUMS[rel]:
        raise ValueError(f"checksum mismatch for {path}: expected SHA-256 {CHECKSUMS[rel]}, got {digest}; "
                         f"the file is corrupt or truncated (restore it with `git checkout -- data/{rel}`)")
    _verified.add(path)
    return path


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).copy()
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: IDX header announces {dims} but holds {data.size} values")
    return data.reshape(dims)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if x.dim() == 3:
        x = x.unsqueeze(1)  # [N, 1, H, W]
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def stratified_split(y: torch.Tensor, n_holdout: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (keep, holdout): ``n_holdout`` examples held out with the class proportions of ``y``.

    Deterministic for a given seed; each class contributes ``round(n_holdout * share)`` examples
    (remainders go to the largest classes first).
    """
    y = torch.as_tensor(y)
    n = len(y)
    if not 0 < n_holdout < n:
        raise ValueError(f"n_holdout must be in (0, {n}), got {n_holdout}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(y, return_counts=True)
    quota = (counts.double() * n_holdout / n).floor().long()
    rest = n_holdout - int(quota.sum())
    order = torch.argsort(counts.double() * n_holdout / n - quota, descending=True, stable=True)
    quota[order[:rest]] += 1
    hold = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        idx = torch.nonzero(y == c).flatten()
        hold.append(idx[torch.randperm(len(idx), generator=g)[:q]])
    hold = torch.sort(torch.cat(hold)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[hold] = False
    return torch.nonzero(mask).flatten(), hold


def _load_fmnist(root: Path, split: str):
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_verify(root, f"fashion-mnist/{prefix}-images-idx3-ubyte.gz"))
    labels = _read_idx(_verify(root, f"fashion-mnist/{prefix}-labels-idx1-ubyte.gz"))
    return _to_tensors(images, labels)


def _load_mnist5k(root: Path, split: str):
    with np.load(_verify(root, "mnist5k/mnist5k.npz")) as f:
        images, labels = f["images"], f["labels"].astype(np.int64)
    # 100 test images per class, chosen by a fixed seed; the rest (400 per class) is train.
    train_idx, test_idx = stratified_split(torch.from_numpy(labels), 1000, seed=0)
    idx = (train_idx if split == "train" else test_idx).numpy()
    return _to_tensors(images[idx], labels[idx])


def _torchvision(name: str, root: Path, split: str, download: bool):
    import torchvision  # only the downloadable datasets need it, and importing it takes about a second

    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]
    folder = root / ("mnist" if name == "mnist" else "")
    need = {"mnist": f"{folder}/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte[.gz]",
            "cifar10": f"{root}/cifar-10-batches-py/{{data_batch_1..5,test_batch,batches.meta}}"}[name]
    try:
        ds = cls(str(folder), train=split == "train", download=False)
    except RuntimeError:
        if not download:
            raise DataUnavailable(f"dataset {name!r} is not on disk: put {need} there "
                                  f"(or call load(..., download=True) with internet access)") from None
        try:
            ds = cls(str(folder), train=split == "train", download=True)
        except Exception as e:  # offline: URLError, socket errors, ...
            raise DataUnavailable(f"dataset {name!r} is not on disk and could not be downloaded ({e}); "
                                  f"put {need} there") from e
    images = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    if images.ndim == 4:  # CIFAR: [N, H, W, C] -> [N, C, H, W]
        images = images.transpose(0, 3, 1, 2)
    return _to_tensors(images, np.asarray(ds.targets))


def _load_synthetic(split: str, like: str, n: int | None, seed: int):
    if like not in DATASETS:
        raise ValueError(f"like must be one of {', '.join(DATASETS)}, got {like!r}")
    info = DATASETS[like]
    n = n if n is not None else 1024
    g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    x = torch.rand(n, info.channels, info.size, info.size, generator=g)
    y = torch.randint(0, info.classes, (n,), generator=g)
    return x, y


def load(name: str, split: str = "train", root: str | Path | None = None, *, download: bool = True,
         like: str = "cifar10", n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Load dataset ``name`` ("fmnist", "mnist5k", "mnist", "cifar10", "synthetic") as CPU tensors.

    Args:
        name: dataset name, see the table in the module docstring.
        split: "train" or "test".
        root: folder holding the data (default: the checkout's data/ folder, or ``$NSLIB_DATA``).
        download: for "mnist"/"cifar10" absent from ``root``, try torchvision's download.
        like, n, seed: for "synthetic" only: the dataset whose shape to copy, the number of images
            (default 1,024) and the seed.

    Shapes: x [N, C, H, W] float32 in [0, 1]; y [N] int64.
    Raises: ValueError for an unknown name or split, or a corrupt embedded file; DataUnavailable when
        the data is neither on disk nor downloadable (the message names the files and folder).
    Usage: ``x, y = load("mnist5k", "test")``
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else data_dir()
    if name == "fmnist":
        return _load_fmnist(root, split)
    if name == "mnist5k":
        return _load_mnist5k(root, split)
    if name in ("mnist", "cifar10"):
        return _torchvision(name, root, split, download)
    if name == "synthetic":
        return _load_synthetic(split, like, n, seed)
    raise ValueError(f"name must be one of {', '.join(list(DATASETS) + ['synthetic'])}, got {name!r}")


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop with ``pad``-pixel zero padding and random horizontal flip, on x's device.

    Vectorised over the batch (one gather, no per-image loop). Shapes: x [N, C, H, W] -> same.
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [N, C, H+2p, W+2p]
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # [N, H]
    cols = torch.arange(w, device=x.device)[None].expand(n, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # [N, W]
    idx_r = rows[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, idx_r)  # [N, C, H, W+2p]
    idx_c = cols[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, idx_c)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
            augment: bool = False, device: str | torch.device | None = None,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over (x, y) batches with the data resident on ``device``.

    x may be float in [0, 1] or uint8 (converted to float per batch, which keeps a dataset 4x smaller
    on the device). The order is a permutation drawn from ``seed`` alone, so the same seed gives the
    same batches on any run (resume relies on this); augmentation (``augment=True``: random crop with
    4-pixel padding and horizontal flip) draws from a generator on the device seeded from ``seed`` too.
    Move x and y to the device once, before the epoch loop, to avoid a copy per epoch.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    device = torch.device(device) if device is not None else x.device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    n = len(x)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    else:
        order = torch.arange(n, device=device)
    gen = None
    if augment:
        gen = torch.Generator(device=device).manual_seed(seed + 1_000_003)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        xb = x[idx]
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb
        if augment:
            xb = augment_crop_flip(xb, generator=gen)
        yield xb, y[idx]


def test_set(dataset: str, n: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, class-stratified subset of ``n`` test images (all when None or n >= the split's size).

    The same call gives the same images everywhere, so every model is analysed on the same inputs.
    """
    x, y = load(dataset, "test")
    if n is None or n >= len(x):
        return x, y
    _, idx = stratified_split(y, n, seed=seed)
    return x[idx], y[idx]
