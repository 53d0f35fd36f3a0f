"""Data larger than memory: folders of images (torchvision ``ImageFolder`` layout) streamed in batches.

The kit's small datasets are tensors resident on the device (:mod:`nslib.data`); a folder
``ROOT/<class>/<image>`` is read batch by batch by a DataLoader with worker processes instead, so an
ImageNet-class set trains and evaluates without being loaded whole. Batches follow the same rules as the
resident path, so one process and N ranks see the same examples:

- training: every epoch is a permutation drawn from the seed alone; each global batch of it is split across
  the ranks and each rank reads only its own rows (:func:`epoch_batches`, a distributed batch sampler);
- evaluation: batches of the fixed order, dealt round-robin to the ranks (:func:`loader`).

Images are read as RGB (or grayscale with ``channels=1``), resized and centre-cropped to ``size`` when
given, and returned in [0, 1].

Usage::

    ds = nslib.streams.image_folder("data/my_images", size=224)
    for index, x, y in nslib.streams.loader(ds, [[0, 1, 2], [3, 4]], workers=4): ...
"""
from __future__ import annotations

from pathlib import Path

import torch

from nslib import checks, data as data_mod, distributed

__all__ = ["is_folder", "image_folder", "loader", "load_indices", "targets", "epoch_batches", "subset", "Stream",
           "check_images", "resident", "epoch"]


def is_folder(spec) -> bool:
    """True when ``spec`` names a directory (a ``--data`` of images in ImageFolder layout)."""
    return isinstance(spec, (str, Path)) and Path(spec).is_dir()


def image_folder(root, *, size: int | None = None, channels: int = 3):
    """A torchvision ``ImageFolder`` over ``root`` giving ``(x [C, H, W] float in [0, 1], class index)``.

    Args: root: a folder with one subfolder of images per class; size: resize the shorter side and centre-crop
    to ``size`` x ``size`` (None: images as stored, which must then share one size); channels: 3 (RGB) or 1.
    Raises: ValueError naming --data (no class folders, no images) or --image-size.
    """
    from torchvision import datasets, transforms  # only folders of images need torchvision (a second to import)

    root = Path(root)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"--image-size must be a positive int, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    steps = [transforms.Grayscale(1)] if channels == 1 else []  # ImageFolder reads RGB
    if size is not None:
        steps += [transforms.Resize(size), transforms.CenterCrop(size)]
    try:
        return datasets.ImageFolder(str(root), transform=transforms.Compose(steps + [transforms.ToTensor()]))
    except (FileNotFoundError, RuntimeError) as e:  # torchvision: no class folder, or no valid image in one
        raise ValueError(f"--data {root}: not a folder of images in ImageFolder layout (ROOT/<class>/<image>): "
                         f"{e}") from None


def _collate(batch):
    try:
        return torch.utils.data.default_collate(batch)
    except RuntimeError as e:  # images of different sizes
        raise ValueError(f"--data: the images of a batch differ in size ({e}); pass --image-size") from None


class _Indexed(torch.utils.data.Dataset):
    """``dataset`` with each item's index in front: ``(i, x, y)`` (a class: worker processes pickle it)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            x, y = self.dataset[i]
        except (OSError, ValueError, SyntaxError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated files
            path = self.dataset.samples[i][0] if hasattr(self.dataset, "samples") else f"image {i}"
            raise ValueError(f"--data: cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                             f"remove or replace it") from None
        return i, x, y


def loader(dataset, batches: list[list[int]], *, workers: int = 0):
    """``(index [B], x [B, C, H, W], y [B])`` for each list of dataset indices in ``batches``, in order,
    read by a DataLoader with ``workers`` worker processes. A file that cannot be read is a one-line ValueError
    naming it, from a worker process too (the DataLoader's own wrapping, with the worker's traceback, removed)."""
    yield from _one_line(torch.utils.data.DataLoader(_Indexed(dataset), batch_sampler=batches, num_workers=workers,
                                                     collate_fn=_collate, persistent_workers=False))


def _one_line(batches):
    try:
        yield from batches
    except ValueError as e:  # a worker's ValueError comes back as "Caught ValueError in DataLoader worker ..."
        last = str(e).strip().splitlines()[-1]
        if "Original Traceback" in str(e) and last.startswith("ValueError: "):
            raise ValueError(last[len("ValueError: "):]) from None
        raise


def load_indices(dataset, indices, *, workers: int = 0, batch_size: int = 256) -> tuple:
    """``(x, y)``: the images ``indices`` of ``dataset`` as resident tensors (a validation split, a test subset)."""
    idx = [int(i) for i in indices]
    parts = list(loader(dataset, [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)], workers=workers))
    if not parts:
        raise ValueError("--data: no images selected")
    return torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]).long()


def targets(dataset) -> torch.Tensor:
    """The class index of every image, read from the folder names (no image is opened)."""
    return torch.as_tensor(dataset.targets, dtype=torch.long)


def epoch_batches(dataset, indices: torch.Tensor, batch_size: int, *, seed: int, rank: int = 0, world: int = 1,
                  workers: int = 0, device=None):
    """One training epoch over ``dataset[indices]``: ``(x, index, share)`` of this rank for each global batch.

    The order is a permutation of ``indices`` drawn from ``seed`` alone (as :func:`nslib.data.batches`);
    each global batch of ``batch_size`` is cut into ``world`` contiguous parts (sizes differ by at most one)
    and rank ``rank`` reads only its own, with ``workers`` processes reading ahead. ``share`` weights the
    rank's mean loss so that DistributedDataParallel's average of the ranks is the global batch's mean.
    ``index`` is the position in ``indices`` (the training set's own numbering).
    """
    n = len(indices)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    plan, shares = [], []
    for i in range(0, n, batch_size):
        block = order[i:i + batch_size]
        base, extra = divmod(len(block), world)
        start = rank * base + min(rank, extra)
        mine = block[start:start + base + (1 if rank < extra else 0)]
        plan.append(mine)
        shares.append(len(mine) * world / len(block))
    reads = loader(dataset, [[int(indices[j]) for j in mine] for mine in plan], workers=workers)
    for mine, share, (_, xb, _) in zip(plan, shares, reads):
        xb = xb.to(device) if device is not None else xb
        yield xb, mine.to(xb.device), share


def subset(labels: torch.Tensor, n: int | None, seed: int = 0) -> torch.Tensor:
    """The indices of a fixed class-stratified subset of ``n`` (all when None or n >= the count), as
    :func:`nslib.data.test_set` picks its images."""
    if n is None or n >= len(labels):
        return torch.arange(len(labels))
    return data_mod.stratified_split(labels, n, seed=seed)[1]


class Stream:
    """Images of a dataset read on demand, indexed like the image tensor :func:`nslib.training.train` takes.

    It holds the dataset, which of its images are in (``indices``) and how many DataLoader workers read
    them. Indexing with an index tensor gives the sub-stream (the validation hold-out, a stratified subset),
    ``len`` and ``shape`` read no image but the first, and ``to(device)`` is the stream itself: batches are
    read, and moved to the device, by :func:`epoch`. Validation images are made resident by :func:`resident`.
    """

    def __init__(self, dataset, indices=None, *, workers: int = 0):
        self.dataset, self.workers = dataset, workers
        self.indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, idx) -> "Stream":
        return Stream(self.dataset, self.indices[idx], workers=self.workers)

    @property
    def shape(self) -> tuple:
        return (len(self), *self.dataset[int(self.indices[0])][0].shape)

    def to(self, *args, **kwargs) -> "Stream":
        return self


def check_images(x, name: str = "x") -> None:
    """:func:`nslib.checks.check_images` on a tensor; on a :class:`Stream`, on its first two images."""
    if isinstance(x, Stream):
        if len(x) == 0:
            raise ValueError(f"{name}: the folder holds no images")
        x = load_indices(x.dataset, x.indices[:2])[0]
    checks.check_images(x, name)


def resident(x):
    """A :class:`Stream`'s images as one tensor in memory (a tensor is returned as it is)."""
    return load_indices(x.dataset, x.indices, workers=x.workers)[0] if isinstance(x, Stream) else x


def epoch(x, batch_size: int, *, seed: int, augment: bool = False, device=None):
    """One training epoch of this rank: ``(x, index, share)`` per global batch (see :func:`epoch_batches`).

    A tensor: :func:`nslib.data.batches` (resident, augmented on the device) with each global batch split
    across the ranks by :func:`nslib.distributed.split_batch`; a :class:`Stream`: read by a DataLoader.
    """
    if isinstance(x, Stream):
        yield from epoch_batches(x.dataset, x.indices, batch_size, seed=seed, rank=distributed.rank(),
                                 world=distributed.world(), workers=x.workers, device=device)
        return
    # the examples' indices ride along as labels: the same order and images as data_mod.batches(x, y)
    for xb, ib in data_mod.batches(x, torch.arange(len(x), device=x.device), batch_size, shuffle=True, seed=seed,
                                   augment=augment):
        yield distributed.split_batch(xb, ib)
