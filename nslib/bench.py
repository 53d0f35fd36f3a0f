"""Speed benchmarks: ``python -m nslib bench attacks|sensitivity|training``.

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
from torch.utils.flop_counter import FlopCounterMode

from nslib import data, fast, models, store, training
from nslib.attacks import pgd
from nslib.evaluate import robust_accuracy
from nslib.models import build, default_layers
from nslib.sensitivity import neuron_sensitivity
from nslib.training import train

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


# Dense bf16 tensor-core peaks in FLOP/s (vendor datasheets, SXM parts, without sparsity).
_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def _bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _BF16_PEAK.items() if k in name), None)


def _bench_model(arch: str, device: torch.device, quick: bool):
    """ResNet-18 or SmallCNN trained on Fashion-MNIST for the benchmark, cached in outputs/bench/.

    Full: PGD-AT (the dataset's defaults: eps 0.1, PGD-10, step 0.02), so that robust accuracy is far
    from 0 and a precision change that weakens the attack shows; on a CPU one PGD-3 epoch on a subset.
    Quick: a few clean steps on 256 images.
    """
    kind = "_quick" if quick else ("_pgd_at_cpu" if device.type == "cpu" else "_pgd_at")  # different runs
    out = store.outputs_dir("bench", f"{arch}_fmnist{kind}")
    torch.manual_seed(0)
    model = models.build(arch, "fmnist")
    if quick:
        kw = dict(method="standard", epochs=1, batch_size=64, n_train=256, val_size=64, val_n_adv=16)
    elif device.type == "cpu":  # minutes on two cores: one PGD-3 epoch on 10,000 (ResNet-18: 500) images
        kw = dict(method="pgd_at", epochs=1, batch_size=128, n_train=500 if arch == "resnet18" else 10_000,
                  attack_steps=3, alpha=2.5 * 0.1 / 3, val_size=1000, val_n_adv=200, val_attack_steps=3)
    else:
        kw = dict(method="pgd_at", epochs=3 if arch == "resnet18" else 5, batch_size=128)
    training.train(model, "fmnist", seed=0, out_dir=out, device=device, progress=not quick, **kw)
    return model.to(device).eval()


def _attack_flops_per_image(model, x, steps: int) -> float:
    """FLOPs of one attack per image: ``steps`` x (forward + input-gradient backward) = ``steps`` x 2 x the
    forward's FLOPs (the gradient with respect to each layer's input costs what its forward costs; no
    weight gradients are computed). The forward is counted by torch's FlopCounterMode (convolutions and
    matrix multiplications) on the unfolded fp32 model."""
    x = x[:8]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return 2 * counter.get_total_flops() / x.shape[0] * steps


def _cpu_bf16_text() -> str:
    return "yes (auto runs bf16)" if fast.cpu_has_bf16() else "no (auto runs fp32; the goal needs AVX512-BF16 or AMX)"


def _plain_pgd(model, x, y, *, eps, alpha, steps):
    """Linf PGD as a plain PyTorch fp32 loop (uniform random start, signed steps, projection): the anchor."""
    model.eval()
    x_adv = (x + eps * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def _attack_variants(model, xb, yb, kw, device, torchattacks, forced_bf16=True):
    """``[(name, attack(xs, ys) -> x_adv, compiled)]``: the anchors first, then nslib's paths on ``device``."""
    cuda = device.type == "cuda"
    amp = fast.autocast_dtype("auto", device) is not None  # bf16 on CUDA and on CPUs with bf16 hardware
    variants = [("plain PyTorch fp32", lambda xs, ys: _plain_pgd(model, xs, ys, **kw), False)]
    if torchattacks is not None:
        ta = torchattacks.PGD(model, eps=kw["eps"], alpha=kw["alpha"], steps=kw["steps"], random_start=True)
        variants.append(("torchattacks fp32", lambda xs, ys: ta(xs, ys), False))
    variants.append(("nslib fp32", lambda xs, ys: pgd(model, xs, ys, seed=0, **kw), False))
    label = "fold+channels_last" + ("+bf16" if amp else "")
    quick_model = fast.prepare(model, example=xb[:16])
    variants.append((f"nslib {label} (auto)", lambda xs, ys, m=quick_model: pgd(m, xs, ys, seed=0, amp=amp, **kw),
                     False))
    if not cuda and not amp and forced_bf16:  # what "auto" avoids here: bf16 emulated without bf16 hardware
        variants.append(("nslib fold+channels_last+bf16 (forced)",
                         lambda xs, ys, m=quick_model: pgd(m, xs, ys, seed=0, amp=True, **kw), False))
    if cuda:
        for mode in (None, "max-autotune"):
            compiled = fast.prepare(model, example=xb[:16], compile=True, mode=mode)
            variants.append((f"nslib {label}+compile{'-' + mode if mode else ''}",
                             lambda xs, ys, m=compiled: pgd(m, xs, ys, seed=0, amp=True, **kw), True))
    return variants


def bench_attacks(device: torch.device, quick: bool) -> None:
    """PGD throughput of nslib beside torchattacks, same process, model, batch and attack settings.

    Rows on CUDA: PGD-10 on ResNet-18 (batch 512, eps 0.1, step 0.025) and PGD-40 on SmallCNN (batch 1024,
    eps 0.1, step 0.01); on a CPU: PGD-10 on SmallCNN (batch 256, step 0.025) and PGD-2 on ResNet-18
    (batch 32). Models trained on Fashion-MNIST (cached in outputs/bench/), uniform random start.
    Variants: a plain PyTorch fp32 loop and torchattacks fp32 (the anchors; ratios are to the plain loop);
    nslib fp32; nslib on ``fast.prepare`` (batch norm folded, channels_last) at the "auto" precision (bf16
    autocast on CUDA and on CPUs with bf16 hardware, :func:`nslib.fast.cpu_has_bf16`); on a CPU without
    it, the same with bf16 forced (what "auto" avoids); on CUDA, compiled (default mode and
    "max-autotune"). Each prints images/s (median of timed repeats after a warm-up), its ratio to the
    anchor, the robust accuracy it gives on the test images with its 95% Wilson interval (verdicts by the
    fp32 model), its difference from nslib fp32, the fraction of the GPU's dense bf16 peak (2 x forward
    FLOPs per step) and, for compiled variants, the one-off compile time. Goals: on an H100 >= 4x the
    anchor on ResNet-18 PGD-10 and >= 2x on SmallCNN PGD-40; on a CPU with bf16 hardware >= 1.7x on
    SmallCNN; robust accuracy within the fp32 interval. Results go to outputs/bench/attacks.json.
    """
    try:
        import torchattacks  # optional: a test-only reference, imported where it is used
    except ImportError as e:  # its import also needs scipy
        torchattacks = None
        print(f"torchattacks unavailable ({e}); no torchattacks column")
    cuda = device.type == "cuda"
    peak = _bf16_peak(device)
    repeats = 2 if quick else 5
    x_test, y_test = data.load("fmnist", "test")
    if quick:
        cases = [("resnet18", 16, 2, 0.1, 0.025), ("smallcnn", 32, 4, 0.1, 0.01)]
    elif cuda:
        cases = [("resnet18", 512, 10, 0.1, 0.025), ("smallcnn", 1024, 40, 0.1, 0.01)]
    else:
        cases = [("smallcnn", 256, 10, 0.1, 0.025), ("resnet18", 32, 2, 0.1, 0.125)]
    records = []
    print(f"{'model':<9} {'attack':<7} {'batch':>5} {'variant':<40} {'img/s':>9} {'vs plain':>9} "
          f"{'robust % [95% interval]':>24} {'diff pts':>8} {'% bf16 peak':>11} {'compile s':>9}")
    for arch, batch, steps, eps, alpha in cases:
        model = _bench_model(arch, device, quick)
        n_eval = 2 * batch if quick else (2048 if cuda else (1024 if arch == "smallcnn" else 128))
        xe, ye = x_test[:n_eval].to(device), y_test[:n_eval].to(device)
        xb, yb = xe[:batch], ye[:batch]
        flops = _attack_flops_per_image(model, xb, steps)
        kw = dict(eps=eps, alpha=alpha, steps=steps)
        variants = _attack_variants(model, xb, yb, kw, device, torchattacks, forced_bf16=arch == "smallcnn" or quick)
        rows = []
        for name, attack, compiled in variants:
            try:
                _sync(device)
                t0 = time.perf_counter()
                attack(xb, yb)  # the first call compiles and autotunes, if anything
                _sync(device)
                first = time.perf_counter() - t0
                t = timeit(lambda: attack(xb, yb), device, repeats=repeats, warmup=1)
                torch.manual_seed(0)  # torchattacks draws its random start from the global generator
                acc = robust_accuracy(model, xe, ye, lambda m, xs, ys: attack(xs, ys), batch_size=batch)
            except Exception as e:  # a backend that cannot compile here: report it, go on
                print(f"{arch:<9} PGD-{steps:<3} {batch:>5} {name:<40} failed: {type(e).__name__}: {e}"[:300])
                continue
            rows.append(dict(model=arch, attack=f"PGD-{steps}", batch=batch, eps=eps, alpha=alpha, variant=name,
                             images_per_s=batch / t, robust_accuracy=acc.robust_accuracy, n_eval=n_eval,
                             interval=(acc.low, acc.high), flops_per_image=flops, steady_s=t,
                             first_call_s=first, compile_s=max(0.0, first - t) if compiled else None))
        anchor = next((r["images_per_s"] for r in rows if r["variant"].startswith("plain")), None)
        fp32 = next((r for r in rows if r["variant"] == "nslib fp32"), None)
        for r in rows:
            r["ratio_to_anchor"] = r["images_per_s"] / anchor if anchor else None
            r["diff_points"] = 100 * (r["robust_accuracy"] - fp32["robust_accuracy"]) if fp32 else None
            r["within_fp32_interval"] = (fp32["interval"][0] <= r["robust_accuracy"] <= fp32["interval"][1]) \
                if fp32 else None
            r["bf16_peak_fraction"] = r["images_per_s"] * flops / peak if peak else None
            cell = lambda v, fmt: format(v, fmt) if v is not None else "n/a"  # noqa: E731
            robust = f"{100 * r['robust_accuracy']:.2f} [{100 * r['interval'][0]:.1f}, {100 * r['interval'][1]:.1f}]"
            print(f"{arch:<9} PGD-{steps:<3} {batch:>5} {r['variant']:<40} {r['images_per_s']:>9.0f} "
                  f"{cell(r['ratio_to_anchor'], '.2f'):>8}x {robust:>24} "
                  f"{cell(r['diff_points'], '+.2f'):>8} {cell(r['bf16_peak_fraction'], '.2%'):>11} "
                  f"{cell(r['compile_s'], '.1f'):>9}")
        records += rows
    path = store.outputs_dir("bench", "attacks_quick.json" if quick else "attacks.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    store.save_json(path, {"provenance": store.provenance(device, quick=quick, repeats=repeats), "rows": records})
    if cuda:
        print(f"goals (H100): >= 4x the anchor on ResNet-18 PGD-10, >= 2x on SmallCNN PGD-40, robust accuracy "
              f"within 0.5 points of nslib fp32; written to {path}")
    else:
        print(f"goal (CPU with bf16 hardware): nslib (auto) >= 1.7x the plain fp32 loop on SmallCNN PGD-10, robust "
              f"accuracy within nslib fp32's interval; this CPU has bf16 hardware: {_cpu_bf16_text()}; "
              f"written to {path}")


def bench_sensitivity(device: torch.device, quick: bool) -> None:
    """Neuron sensitivity over N pairs, ResNet-18 (all 9 default layers), vs two plain forward passes.

    Goal: on a GPU, at most 1.3x the time of the two plain forward passes over the same
    pairs (no_grad, eval, same batch size), and peak memory that does not grow with N. Peak memory is
    reported beyond what was allocated before the call (the resident data grows with N by design);
    torch.cuda.max_memory_allocated on CUDA, n/a on CPU (torch's CPU allocator is invisible to
    tracemalloc). Data: random CIFAR-shaped images resident on the device, x_adv = x + uniform noise of
    8/255 (the cost does not depend on how x_adv was made). Median of ``repeats`` runs after a warm-up.
    """
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
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx], y[idx]
        x_adv = _plain_pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps)  # in eval mode
        model.train()
        loss = F.cross_entropy(model(x_adv), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
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
    autotuning is on for both). On a CPU: SmallCNN PGD-AT and SNS on 5,000 images; no ResNet-18.

    Goals on an H100: ResNet-18 PGD-AT epoch at most 5 s, SNS at most 1.2x PGD-AT, SmallCNN
    PGD-AT epoch at most 1.5 s. On a CPU with bf16 hardware: SmallCNN PGD-AT >= 1.7x the anchor. ``--quick`` runs tiny sizes (batch 8; ResNet-18 on 16 images with
    PGD-2, SmallCNN on 128 images), which only checks that the benchmark runs.
    """
    torch.backends.cudnn.benchmark = True
    cpu = device.type == "cpu" and not quick
    batch_size = 8 if quick else 128
    steps_r18 = 2 if quick else 10
    n_r18, n_val = (16, 8) if quick else (50_000, 500)
    n_fm = 128 if quick else (5_000 if cpu else 60_000)

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

    amp = fast.autocast_dtype("auto", device) is not None
    print(f"batch {batch_size}, SGD; nslib: train() step loop, precision auto "
          f"({'bf16 autocast, channels_last' if amp else 'fp32'}); anchor: plain fp32 loop")
    n_warm = 2 * batch_size + n_val
    t_at = t_sns = None  # ResNet-18's PGD-AT and SNS epochs (GPU)
    if cpu:
        print(f"ResNet-18 rows skipped on a CPU (hours per epoch); this CPU has bf16 hardware: {_cpu_bf16_text()}")
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
    t_fm, n = run(copy.deepcopy(base), x, y, "pgd_at", eps=0.1, alpha=0.02, steps=10, n_warm=n_warm)
    t_anchor = anchor(copy.deepcopy(base), x_tr[:n], y_tr[:n], eps=0.1, alpha=0.02, steps=10,
                      n_warm=2 * batch_size)
    row(f"SmallCNN fmnist PGD-AT (PGD-10), {n} img", t_fm, n, t_anchor)
    if cpu:
        t_sns, _ = run(copy.deepcopy(base), x, y, "sns", eps=0.1, alpha=0.02, steps=10, n_warm=n_warm)
        row(f"SmallCNN fmnist SNS (PGD-10), {n} img", t_sns, n)
    _training_goals("cpu" if cpu else ("cuda" if device.type == "cuda" and not quick else None),
                    t_fm=t_fm, t_anchor=t_anchor, t_at=t_at, t_sns=t_sns)


def _training_goals(kind, *, t_fm, t_anchor, t_at=None, t_sns=None) -> None:
    """The training benchmark's goals, met or not: ``kind`` "cpu" (a CPU with bf16 hardware), "cuda" (an H100) or None."""
    def met(ok):
        return "met" if ok else "not met"
    if kind == "cpu":
        print(f"goal (CPU with bf16 hardware): SmallCNN PGD-AT epoch >= 1.7x the plain fp32 loop: "
              f"{met(t_fm <= t_anchor / 1.7)} ({t_anchor / t_fm:.2f}x); this CPU has bf16 hardware: {_cpu_bf16_text()}")
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
