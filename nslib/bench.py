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
    """Neuron sensitivity over N pairs, ResNet-18 (all 9 default layers), vs two plain forward passes.

    Goal (issue 5): on a GPU, at most 1.3x the time of the two plain forward passes over the same
    pairs (no_grad, eval, same batch size), and peak memory that does not grow with N. Peak memory is
    reported beyond what was allocated before the call (the resident data grows with N by design);
    torch.cuda.max_memory_allocated on CUDA, n/a on CPU (torch's CPU allocator is invisible to
    tracemalloc). Data: random CIFAR-shaped images resident on the device, x_adv = x + uniform noise of
    8/255 (the cost does not depend on how x_adv was made). Median of ``repeats`` runs after a warm-up.
    """
    from nslib.models import build, default_layers
    from nslib.sensitivity import neuron_sensitivity

    n, n_small, batch_size, repeats = (16, 8, 8, 1) if quick else (10_000, 2_500, 256, 3)
    torch.manual_seed(0)
    model = build("resnet18", "cifar10").to(device).eval()
    layers = default_layers(model)
    x = torch.rand(n, 3, 32, 32, device=device)  # [N, 3, 32, 32]
    x_adv = (x + (8 / 255) * (2 * torch.rand_like(x) - 1)).clamp(0, 1)

    def forwards(m):
        with torch.no_grad():
            for s in range(0, m, batch_size):
                model(x[s:s + batch_size])
                model(x_adv[s:s + batch_size])

    def sensitivity(m):
        neuron_sensitivity(model, x[:m], x_adv[:m], layers=layers, batch_size=batch_size)

    def peak_mib(fn) -> str:
        if device.type != "cuda":
            return "n/a"
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return f"{(torch.cuda.max_memory_allocated(device) - base) / 2**20:.0f}"

    print(f"ResNet-18 (cifar10 shape), {len(layers)} layers ({', '.join(layers)}), batch {batch_size} pairs, "
          f"median of {repeats}")
    print(f"{'N':>7} {'2 forwards (s)':>15} {'sensitivity (s)':>16} {'ratio':>6} {'pairs/s':>9} "
          f"{'peak MiB fwd':>13} {'peak MiB sens':>14}")
    for m in (n, n_small):
        t_fwd = timeit(lambda: forwards(m), device, repeats=repeats)
        t_sens = timeit(lambda: sensitivity(m), device, repeats=repeats)
        print(f"{m:>7} {t_fwd:>15.3f} {t_sens:>16.3f} {t_sens / t_fwd:>6.2f} {m / t_sens:>9.0f} "
              f"{peak_mib(lambda: forwards(m)):>13} {peak_mib(lambda: sensitivity(m)):>14}")
    print("goal: ratio <= 1.3 on a GPU; peak memory the same for both N")


def bench_training(device: torch.device, quick: bool) -> None:
    raise NotImplementedError("bench training: being written (issue 6)")


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"nslib bench {args.what} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), torch {torch.__version__}")
    {"attacks": bench_attacks, "sensitivity": bench_sensitivity, "training": bench_training}[args.what](
        device, args.quick)
    return 0
