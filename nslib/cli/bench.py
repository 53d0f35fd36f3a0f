"""Speed benchmarks: ``python -m nslib bench attacks|sensitivity|training`` (attacks: :mod:`nslib.cli.bench_attacks`).

Each benchmark times nslib against an anchor run in the same process, on the same model and batch,
and prints throughput and the ratio. Timings synchronise the device around each timed region and
report the median of several repeats after warm-up.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

from nslib import data, fast
from nslib.cli.bench_attacks import cpu_bf16_text, plain_pgd, sync, bench_attacks, timeit
from nslib.models import build, default_layers
from nslib.sensitivity import neuron_sensitivity
from nslib.training import train

__all__ = ["timeit", "main"]


def bench_sensitivity(device: torch.device, quick: bool) -> None:
    """Neuron sensitivity over N pairs, ResNet-18 (all 9 default layers), vs two plain forward passes.

    Goal: on a GPU, at most 1.3x the time of the two plain forward passes over the same
    pairs (no_grad, eval, same batch size), and peak memory that does not grow with N. Peak memory is
    reported beyond what was allocated before the call (the resident data grows with N by design);
    torch.cuda.max_memory_allocated on CUDA, n/a on CPU (torch's CPU allocator is invisible to
    tracemalloc). Data: random CIFAR-shaped images resident on the device, x_adv = x + uniform noise of
    8/255 (the cost does not depend on how x_adv was made). Median of ``repeats`` runs after a warm-up. Sizes:
    N 10,000 and 2,500 at batch 256 on a GPU; 1,000 and 250 at batch 125 on a CPU (minutes).
    """
    if quick:
        n, n_small, batch_size, repeats = 16, 8, 8, 1
    elif device.type == "cpu":  # about two minutes on two cores (the GPU sizes are hours of ResNet-18 passes here)
        n, n_small, batch_size, repeats = 1_000, 250, 125, 2
    else:
        n, n_small, batch_size, repeats = 10_000, 2_500, 256, 3
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
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return f"{(torch.cuda.max_memory_allocated(device) - base) / 2**20:.0f}"

    print(f"ResNet-18 (cifar10 shape), {len(layers)} layers ({', '.join(layers)}), batch {batch_size} pairs, "
          f"median of {repeats}")
    print(f"{'N':>7} {'2 forwards (s)':>15} {'sensitivity (s)':>16} {'speed':>6} {'pairs/s':>9} "
          f"{'peak MiB fwd':>13} {'peak MiB sens':>14}")
    for m in (n, n_small):
        t_fwd = timeit(lambda: forwards(m), device, repeats=repeats)
        t_sens = timeit(lambda: sensitivity(m), device, repeats=repeats)
        print(f"{m:>7} {t_fwd:>15.3f} {t_sens:>16.3f} {t_fwd / t_sens:>5.2f}x {m / t_sens:>9.0f} "
              f"{peak_mib(lambda: forwards(m)):>13} {peak_mib(lambda: sensitivity(m)):>14}")
    print("speed: sensitivity's speed as a multiple of the two plain forward passes' (higher is faster); goal on a "
          "GPU: >= 0.77x (at most 1.3x their time); peak memory the same for both N")


def _anchor_pgd_at_epoch(model, x, y, *, batch_size, eps, alpha, steps, lr, device) -> float:
    """Seconds for one epoch of a plain PyTorch fp32 PGD-AT loop (Madry): the training benchmark's anchor.

    Eval mode for the attack (uniform random start, signed steps, projection), train mode for the SGD
    step on CE(f(x'), y); no autocast, no channels_last, no checks; data resident on ``device``.
    """
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(device)
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx], y[idx]
        x_adv = plain_pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps)  # in eval mode
        model.train()
        loss = F.cross_entropy(model(x_adv), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def bench_training(device: torch.device, quick: bool) -> None:
    """Epoch time of adversarial training, nslib's ``train`` beside a plain PyTorch fp32 PGD-AT loop.

    Rows: PGD-AT (PGD-10) and SNS (on PGD-AT, default layers, k 10%, lam 0.01) on ResNet-18 with 50,000
    CIFAR-shaped synthetic images (eps 8/255, step 2/255), and PGD-AT on SmallCNN with the 60,000
    Fashion-MNIST training images (eps 0.1, step 0.02); batch 128, SGD. nslib's time is the step
    loop of a one-epoch ``train`` run (``history[0]["train_s"]``: attacks, updates and the final
    synchronisation; the per-epoch validation is excluded), its precision the default ("auto": bf16
    autocast and channels_last on CUDA and on CPUs with bf16 hardware, fp32 elsewhere). The anchor is a
    plain fp32 loop in this process on a fresh copy of the same model, the same data resident on the
    device and the same batch size. Before each timed run, a few batches warm the kernels up (cuDNN
    autotuning is on for both). On a CPU: SmallCNN PGD-AT, the anchor and SNS on 2,000 images, three
    interleaved rounds, medians; no ResNet-18.

    Goals on an H100: ResNet-18 PGD-AT epoch at most 5 s, SNS at most 1.2x PGD-AT, SmallCNN
    PGD-AT epoch at most 1.5 s. On a CPU with bf16 hardware: SmallCNN PGD-AT >= 1.7x the anchor. ``--quick`` runs tiny sizes (batch 8; ResNet-18 on 16 images with
    PGD-2, SmallCNN on 128 images), which only checks that the benchmark runs.
    """
    torch.backends.cudnn.benchmark = True
    cpu = device.type == "cpu" and not quick
    batch_size = 8 if quick else 128
    steps_r18 = 2 if quick else 10
    n_r18, n_val = (16, 8) if quick else (50_000, 500)
    n_fm = 128 if quick else (2_000 if cpu else 60_000)
    rounds = 3 if cpu else 1  # a CPU's timings swing: interleave and take the median (a GPU's are steady)

    def run(model, x, y, method, *, eps, alpha, steps, n_warm):
        """One timed epoch of ``train`` on (x, y) minus the last n_val images' hold-out: (seconds, n_train)."""
        kw = dict(method=method, epochs=1, batch_size=batch_size, lr=0.05, eps=eps, alpha=alpha,
                  attack_steps=steps, val_size=n_val, val_n_adv=min(100, n_val), val_attack_steps=steps,
                  progress=False, device=device, lam=0.01, base="pgd_at", k=0.1)
        warm = copy.deepcopy(model)
        train(warm, (x[:n_warm], y[:n_warm]), **kw)  # kernels, autotuning, allocator
        del warm
        result = train(model, (x, y), **kw)
        return result["history"][0]["train_s"], result["params"]["n_train"]

    def anchor(model, x, y, *, eps, alpha, steps, n_warm):
        model = model.to(device)
        xd, yd = x.to(device), y.to(device)
        kw = dict(batch_size=batch_size, eps=eps, alpha=alpha, steps=steps, lr=0.05, device=device)
        _anchor_pgd_at_epoch(copy.deepcopy(model), xd[:n_warm], yd[:n_warm], **kw)
        return _anchor_pgd_at_epoch(model, xd, yd, **kw)

    def row(label, seconds, n, anchor_s=None):
        text = f"{label:<34} {seconds:9.2f} s/epoch {n / seconds:10.0f} img/s"
        if anchor_s is not None:
            text += f"   anchor {anchor_s:8.2f} s ({n / anchor_s:8.0f} img/s)   speed {anchor_s / seconds:5.2f}x the anchor"
        print(text)

    amp = fast.amp_flag("auto", device)
    print(f"batch {batch_size}, SGD; nslib: train() step loop, precision auto "
          f"({'bf16 autocast, channels_last' if amp else 'fp32'}); anchor: plain fp32 loop")
    n_warm = 2 * batch_size + n_val
    t_at = t_sns = None  # ResNet-18's PGD-AT and SNS epochs (GPU)
    if cpu:
        print(f"ResNet-18 rows skipped on a CPU (hours per epoch); this CPU has bf16 hardware: {cpu_bf16_text()}")
    else:
        # ResNet-18, CIFAR-shaped synthetic data; the last n_val images are the hold-out train() needs
        x, y = data.load("synthetic", like="cifar10", n=n_r18 + n_val, seed=0)
        eps, alpha = 8 / 255, 2 / 255
        torch.manual_seed(0)
        base = build("resnet18", "cifar10")
        t_at, n = run(copy.deepcopy(base), x, y, "pgd_at", eps=eps, alpha=alpha, steps=steps_r18, n_warm=n_warm)
        t_anchor = anchor(copy.deepcopy(base), x[:n], y[:n], eps=eps, alpha=alpha, steps=steps_r18,
                          n_warm=2 * batch_size)
        row(f"ResNet-18 PGD-AT (PGD-{steps_r18}), {n} img", t_at, n, t_anchor)
        t_sns, _ = run(copy.deepcopy(base), x, y, "sns", eps=eps, alpha=alpha, steps=steps_r18, n_warm=n_warm)
        row(f"ResNet-18 SNS (PGD-{steps_r18}), {n} img", t_sns, n)
        print(f"{'':<34} SNS speed {t_at / t_sns:.2f}x PGD-AT's (an epoch takes {t_sns / t_at:.2f} times as long)")
        del base
    # SmallCNN, Fashion-MNIST: all 60,000 training images trained on; 500 test images are the hold-out
    x_tr, y_tr = data.load("fmnist", "train")
    x_te, y_te = data.load("fmnist", "test")
    x = torch.cat([x_tr[:n_fm], x_te[:n_val]])
    y = torch.cat([y_tr[:n_fm], y_te[:n_val]])
    torch.manual_seed(0)
    base = build("smallcnn", "fmnist")
    args = dict(eps=0.1, alpha=0.02, steps=10)
    # interleaved, median of `rounds` (a CPU shared with other work swings 2x: one sequential run read 0.85x where
    # three interleaved read 1.46x); SNS in the same rounds, so its ratio to PGD-AT is paired too
    times = {"pgd_at": [], "anchor": [], "sns": []}
    for _ in range(rounds):
        t, n = run(copy.deepcopy(base), x, y, "pgd_at", n_warm=n_warm, **args)
        times["pgd_at"].append(t)
        times["anchor"].append(anchor(copy.deepcopy(base), x_tr[:n], y_tr[:n], n_warm=2 * batch_size, **args))
        if cpu:
            times["sns"].append(run(copy.deepcopy(base), x, y, "sns", n_warm=n_warm, **args)[0])
    t_fm, t_anchor = statistics.median(times["pgd_at"]), statistics.median(times["anchor"])
    row(f"SmallCNN fmnist PGD-AT (PGD-10), {n} img", t_fm, n, t_anchor)
    if cpu:
        t_sns = statistics.median(times["sns"])
        row(f"SmallCNN fmnist SNS (PGD-10), {n} img", t_sns, n)
        print(f"{'':<34} SNS speed {t_fm / t_sns:.2f}x PGD-AT's (an epoch takes {t_sns / t_fm:.2f} times as long)")
    print(f"SmallCNN rows: median of {rounds} interleaved rounds")
    _training_goals("cpu" if cpu else ("cuda" if device.type == "cuda" and not quick else None),
                    t_fm=t_fm, t_anchor=t_anchor, t_at=t_at, t_sns=t_sns)


def _training_goals(kind, *, t_fm, t_anchor, t_at=None, t_sns=None) -> None:
    """The training benchmark's goals, met or not: ``kind`` "cpu" (a CPU with bf16 hardware), "cuda" (an H100) or None."""
    def met(ok):
        return "met" if ok else "not met"
    if kind == "cpu":
        print(f"goal (CPU with bf16 hardware): SmallCNN PGD-AT epoch >= 1.7x the plain fp32 loop: "
              f"{met(t_fm <= t_anchor / 1.7)} ({t_anchor / t_fm:.2f}x); this CPU has bf16 hardware: {cpu_bf16_text()}")
    elif kind == "cuda":
        print(f"goals (H100): ResNet-18 PGD-AT <= 5 s: {met(t_at <= 5)}; SNS <= 1.2x PGD-AT: {met(t_sns <= 1.2 * t_at)}; "
              f"SmallCNN PGD-AT <= 1.5 s: {met(t_fm <= 1.5)}")
    else:
        print("goals are set for an H100 (full sizes); this run does not measure them")


def main(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"nslib bench {args.what} on {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), torch {torch.__version__}")
    {"attacks": bench_attacks, "sensitivity": bench_sensitivity, "training": bench_training}[args.what](
        device, args.quick)
    return 0
