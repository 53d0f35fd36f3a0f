"""One process or many: the process group, sharding, gathering and rank-0 writes of the user commands.

Every command (``train``, ``evaluate``, ``analyze``) runs the same alone and under ``torchrun``
(``torchrun --nproc_per_node=N -m nslib train ...``): torchrun sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` then joins the process group (gloo on the CPU, NCCL on CUDA, one process per
device) and without them it does nothing, so the same code path serves both. The conventions:

- **Sharding by whole batches.** Evaluation and analysis split the test set into the batches one process
  would use (batch ``b`` starts at image ``b * batch_size`` and its attack is seeded with that start) and
  hand them out round-robin; every batch is computed exactly as one process computes it, so the counts and
  the per-example outcomes under N ranks equal those of one process bit for bit.
- **Training splits every global batch** across the ranks (DistributedDataParallel averages the
  gradients); random starts of the training attack are drawn per example (:func:`example_noise`: a
  function of the seed, the epoch and the example's index), so the split does not change them.
- **Rank 0 alone writes**, atomically; the other ranks return once their share is gathered.

Usage::

    device = nslib.distributed.setup("cpu")
    starts = nslib.distributed.my_batches(len(x), 128)           # this rank's batch starts
    parts = nslib.distributed.gather_batches({i: f(i) for i in starts})  # all ranks' values, in order
"""
from __future__ import annotations

import datetime
import os
import re
import signal
import sys

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["setup", "rank", "world", "is_main", "active", "my_batches", "gather_batches", "all_sum",
           "example_noise", "wrap_ddp", "split_batch", "check_batch", "starts", "sharded_mean", "shutdown",
           "terminate_raises", "PeerFailure", "ChecksFailed", "agree", "run_command"]

_LOST_PEER = re.compile(r"Connection (reset|closed)|Broken pipe|timed out|Timeout|NCCL|gloo", re.IGNORECASE)
_OWNED = []  # the process group setup() created (shutdown leaves one the caller made)
TIMEOUT_S = 1800  # a collective waits this long for a rank (rank 0 writing a large checkpoint, a slow batch)


class PeerFailure(RuntimeError):
    """Another rank stopped (it failed or was killed) while this one waited for it in a collective."""


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str | None = None) -> torch.device:
    """Join torchrun's process group when launched by it; the device this process computes on.

    Args: device: "cpu", "cuda" or None (CUDA when available). Under torchrun on CUDA each process takes
    ``cuda:LOCAL_RANK`` (NCCL); on the CPU the ranks share the machine (gloo).
    Raises: ValueError naming --device (CUDA asked where there is none, or fewer GPUs than local ranks).
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to this process")
    n = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if kind.startswith("cuda"):
        if n > 1 and local >= torch.cuda.device_count():
            raise ValueError(f"--device cuda: local rank {local} but only {torch.cuda.device_count()} GPUs; "
                             f"use --nproc_per_node <= the GPU count")
        kind = f"cuda:{local}" if n > 1 else kind
        if n > 1:
            torch.cuda.set_device(local)
    if n > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
        _OWNED.append(True)
    return torch.device(kind)


def shutdown() -> None:
    """Leave the process group :func:`setup` joined (every command ends with it, also after an error); a group
    the caller created stays (several commands in one process)."""
    if _OWNED and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED.clear()


def terminate_raises() -> None:
    """SIGTERM (torchrun stopping the other ranks when one failed) raises SystemExit, so ``finally`` blocks
    remove temporary folders: the run leaves nothing half-written."""
    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


def _collective(fn, *args):
    try:
        return fn(*args)
    except RuntimeError as e:  # gloo/NCCL: a peer closed its connection or timed out
        raise PeerFailure(f"another rank stopped while rank {rank()} waited for it ({str(e).splitlines()[0]})") \
            from None


# ----------------------------------------------------------------------------------------------------
# sharding and gathering

def my_batches(n: int, batch_size: int) -> list[int]:
    """The start indices of this rank's batches: batches of ``batch_size`` over ``n`` items, round-robin."""
    return list(range(rank() * batch_size, n, world() * batch_size))


def gather_batches(parts: dict) -> list:
    """Every rank's ``{start: value}`` merged, as a list of values in the order of their starts (all ranks).

    Values are anything picklable (CPU tensors, dicts); one process returns its own, sorted.
    """
    if active():
        everyone = [None] * world()
        _collective(dist.all_gather_object, everyone, parts)
        merged = {k: v for p in everyone for k, v in p.items()}
    else:
        merged = dict(parts)
    return [merged[k] for k in sorted(merged)]


def all_sum(values: list[float]) -> list[float]:
    """Elementwise sums over the ranks of float64 numbers (counts stay exact below 2**53)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    _collective(dist.all_reduce, t)
    return t.cpu().tolist()


# ----------------------------------------------------------------------------------------------------
# training across ranks

_MASK = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2**32): a bijection whose
    output bits each depend on every input bit. Products may wrap in int64; their low 32 bits are exact."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK
    return h ^ (h >> 16)


def example_noise(index: torch.Tensor, shape, *, seed: int, kind: str = "uniform",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random numbers for each example that are a function of ``(seed, its index)`` alone.

    A torch generator draws a batch's numbers in sequence, so an example's random start depends on where
    it sits in its batch; these do not, so splitting a batch across ranks (or resuming with another
    number of ranks) leaves every example's start unchanged. Counter-based: a hash of (seed, index,
    position), on the device of ``index``, vectorised.

    Args: index: [N] int64 (the examples' indices in the training set, < 2**32); shape: one example's
    shape; seed: any int (mix the epoch in); kind: "uniform" in [0, 1) (24 bits) or "normal" (Box-Muller).
    Shapes: output [N, *shape] of ``dtype``.
    """
    if kind not in ("uniform", "normal"):
        raise ValueError(f"kind must be 'uniform' or 'normal', got {kind!r}")
    dev = index.device
    size = 1
    for s in shape:
        size *= int(s)
    s = _mix32(torch.tensor([seed & _MASK], device=dev)) ^ _mix32(torch.tensor([(seed >> 32) & _MASK], device=dev))
    key = _mix32(_mix32(index.long().view(-1, 1) & _MASK) ^ s)  # [N, 1]
    pos = torch.arange(size * (2 if kind == "normal" else 1), device=dev).view(1, -1)
    bits = _mix32(key ^ _mix32(pos))  # [N, size] (or 2 * size)
    u = (bits >> 8).double() * 2.0 ** -24
    if kind == "normal":
        u1, u2 = u[:, :size], u[:, size:]
        u = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * torch.pi * u2)
    return u.to(dtype).view(index.numel(), *shape)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when several ranks train (SyncBatchNorm on CUDA, where torch
    supports it: on the CPU each rank's batch norm keeps its own batch statistics); the model itself else."""
    if not active():
        return model

    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def split_batch(xb: torch.Tensor, index: torch.Tensor):
    """``(x, index, share)``: this rank's contiguous rows of a global batch and the factor that makes DDP's
    average of the ranks' mean losses the global batch's mean (1.0 in one process; sizes differ by <= 1)."""
    if not active():
        return xb, index, 1.0
    n, w, r = len(xb), world(), rank()
    base, extra = divmod(n, w)
    start = r * base + min(r, extra)
    part = slice(start, start + base + (1 if r < extra else 0))
    return xb[part], index[part], (part.stop - part.start) * w / n


def check_batch(batch_size: int) -> None:
    """Raises ValueError when a global batch of ``batch_size`` leaves a rank with no example."""
    if active() and batch_size < world():
        raise ValueError(f"batch_size ({batch_size}, the global batch) must be at least the number of ranks "
                         f"({world()})")


def starts(xb: torch.Tensor, index: torch.Tensor, seed: int, epoch: int, on: bool = True):
    """``noise(kind)`` for :func:`nslib.attacks.pgd_unchecked`: each example's start from (seed, epoch, index)
    by :func:`example_noise`; None when not ``on`` (starts drawn per batch from torch's generator)."""
    if not on:
        return None
    key = seed * 1_000_003 + epoch  # a new start for every example in every epoch
    return lambda kind: example_noise(index, xb.shape[1:], seed=key, kind=kind, dtype=xb.dtype)


def sharded_mean(fn, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """``fn(x, y)`` (a share of examples, e.g. an accuracy whose own batches are ``batch_size``) computed on
    this rank's batches and combined over the ranks; ``fn(x, y)`` itself in one process."""
    if not active():
        return fn(x, y)
    idx = [torch.arange(i, min(i + batch_size, len(x))) for i in my_batches(len(x), batch_size)]
    idx = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
    count = round(fn(x[idx], y[idx]) * len(idx)) if len(idx) else 0  # an exact count: shares of whole batches
    return all_sum([count])[0] / len(x)


# ----------------------------------------------------------------------------------------------------
# the commands

class ChecksFailed(ValueError):
    """A check before any work failed on some rank; every rank raises it, rank 0 alone prints it."""


def agree(error: Exception | None) -> None:
    """After the checks before any work: raise on every rank when any rank's checks failed (one message).

    Raises: the ``error`` itself in one process; :class:`ChecksFailed` with the first failing rank's message
    under torchrun (the same message on all ranks is printed once, by rank 0).
    """
    if not active():
        if error is not None:
            raise error
        return
    msgs = [None] * world()
    _collective(dist.all_gather_object, msgs, None if error is None else str(error))
    bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if bad:
        r, m = bad[0]
        raise ChecksFailed(m if all(x == m for _, x in bad) else f"rank {r}: {m}")


def run_command(name: str, work, args) -> int:
    """Run ``work(args)`` (a command's body, which calls :func:`setup` and :func:`agree`) with the exit codes
    and messages of every command: 2 and one line for a bad input, 1 when a rank stopped, 130 on Ctrl-C.
    The process group is left in every case; SIGTERM unwinds like Ctrl-C, so nothing half-written stays."""

    terminate_raises()
    try:
        return work(args)
    except ChecksFailed as e:
        if is_main():
            print(f"nslib {name}: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"nslib {name}: {_who()}{e}", file=sys.stderr)
        return 2
    except PeerFailure as e:
        print(f"nslib {name}: {e}; stopped, nothing half-written (rank 0 writes only complete results)",
              file=sys.stderr)
        return 1
    except RuntimeError as e:  # DDP's all-reduce inside backward() reports a lost peer as a plain RuntimeError
        if not (active() and _LOST_PEER.search(str(e))):
            raise
        print(f"nslib {name}: another rank stopped while rank {rank()} waited for it ({str(e).splitlines()[0][:200]}); "
              f"stopped, nothing half-written (rank 0 writes only complete results)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit) as e:
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
        print(f"\nnslib {name}: {_who()}stopped ({'Ctrl-C' if code == 130 else f'signal, exit {code}'}); "
              f"nothing half-written", file=sys.stderr)
        return code
    finally:
        shutdown()


def _who() -> str:
    return f"rank {rank()}: " if active() else ""
