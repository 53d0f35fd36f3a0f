"""Speed benchmarks: ``python -m nslib bench attacks|sensitivity|training``.

Each benchmark times nslib against an anchor run in the same process, on the same model and batch,
and prints throughput and the ratio. Timings synchronise the device around each timed region and
report the median of several repeats after warm-up.
"""
from __future__ import annotations

import statistics
import time

import torch

__all__ = ["timeit", "main"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_attacks(device: torch.device, quick: bool) -> None:
    raise NotImplementedError("bench attacks: being written (issue 4)")


def bench_sensitivity(device: torch.device, quick: bool) -> None:
    raise NotImplementedError("bench sensitivity: being written (issue 5)")


def bench_training(device: torch.device, quick: bool) -> None:
    raise NotImplementedError("bench training: being written (issue 6)")


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"nslib bench {args.what} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), torch {torch.__version__}")
    {"attacks": bench_attacks, "sensitivity": bench_sensitivity, "training": bench_training}[args.what](
        device, args.quick)
    return 0
