"""``python -m nslib bench attacks``: PGD throughput of nslib beside torchattacks and a plain loop, and the timing
helpers every benchmark shares (:func:`timeit`, the plain PGD loop the anchors run).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nslib import data, fast, models, store, training
from nslib.attacks import pgd, pgd_step
from nslib.evaluate import robust_accuracy

__all__ = ["timeit", "bench_attacks"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
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
    from 0 and a precision change that weakens the attack shows; on a CPU SmallCNN one PGD-3 epoch on a subset,
    ResNet-18 one clean epoch on 3,000 images (it must learn something in a minute).
    Quick: a few clean steps on 256 images.
    """
    kind = "_quick" if quick else ("_cpu" if device.type == "cpu" else "_pgd_at")  # different runs
    out = store.outputs_dir("bench", f"{arch}_fmnist{kind}")
    torch.manual_seed(0)
    model = models.build(arch, "fmnist")
    if quick:
        kw = dict(method="standard", epochs=1, batch_size=64, n_train=256, val_size=64, val_n_adv=16)
    elif device.type == "cpu" and arch == "resnet18":  # a minute on two cores: clean, one epoch on 3,000 images
        # (PGD-AT on 500 images, tried before, stayed at chance: its robust-accuracy check said nothing)
        kw = dict(method="standard", epochs=1, batch_size=64, n_train=3000, val_size=500, val_n_adv=0)
    elif device.type == "cpu":  # a minute on two cores: one PGD-3 epoch on 10,000 images
        kw = dict(method="pgd_at", epochs=1, batch_size=128, n_train=10_000, attack_steps=3, alpha=pgd_step(0.1, 3),
                  val_size=1000, val_n_adv=200, val_attack_steps=3)
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


def cpu_bf16_text() -> str:
    return "yes (auto runs bf16)" if fast.cpu_has_bf16() else "no (auto runs fp32; the goal needs AVX512-BF16 or AMX)"


def plain_pgd(model, x, y, *, eps, alpha, steps):
    """Linf PGD as a plain PyTorch fp32 loop (uniform random start, signed steps, projection): the anchor."""
    model.eval()
    x_adv = (x + eps * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


@dataclass(frozen=True)
class _Variant:
    """One row of ``bench attacks``: ``attack(xs, ys) -> x_adv``; ``compiled``: its first call compiles;
    ``evaluation``: it stops early on each example once it is broken (what ``run_suite`` runs: the robust
    accuracy is the full attack's or lower, example by example, the work less), so only its evaluation speed
    compares with the others'."""
    name: str
    attack: Callable
    compiled: bool = False
    evaluation: bool = False


def _attack_variants(model, xb, yb, kw, device, torchattacks, forced_bf16=True) -> list[_Variant]:
    """The anchors first (a plain fp32 loop and torchattacks on the model as a user loads it: NCHW), then
    nslib's paths on ``device``."""
    cuda = device.type == "cuda"
    amp = fast.amp_flag("auto", device)  # bf16 on CUDA and on CPUs with bf16 hardware
    variants = [_Variant("plain PyTorch fp32", lambda xs, ys: plain_pgd(model, xs, ys, **kw))]
    if torchattacks is not None:
        ta = torchattacks.PGD(model, eps=kw["eps"], alpha=kw["alpha"], steps=kw["steps"], random_start=True)
        variants.append(_Variant("torchattacks fp32", lambda xs, ys: ta(xs, ys)))
    variants.append(_Variant("nslib fp32", lambda xs, ys: pgd(model, xs, ys, seed=0, **kw)))
    label = "fold+channels_last" + ("+bf16" if amp else "")
    quick_model = fast.prepare(copy.deepcopy(model), example=xb[:16])
    variants.append(_Variant(f"nslib {label} (auto)",
                             lambda xs, ys, m=quick_model: pgd(m, xs, ys, seed=0, amp=amp, **kw)))
    variants.append(_Variant("nslib evaluation (prepared, early stop)", lambda xs, ys, m=quick_model: pgd(
        m, xs, ys, seed=0, amp=amp, early_stop=True, **kw), evaluation=True))
    if not cuda and not amp and forced_bf16:  # what "auto" avoids here: bf16 emulated without bf16 hardware
        variants.append(_Variant("nslib fold+channels_last+bf16 (forced)",
                                 lambda xs, ys, m=quick_model: pgd(m, xs, ys, seed=0, amp=True, **kw)))
    if cuda:
        for mode in (None, "max-autotune"):
            compiled = fast.prepare(copy.deepcopy(model), example=xb[:16], compile=True, mode=mode)
            variants.append(_Variant(f"nslib {label}+compile{'-' + mode if mode else ''}",
                                     lambda xs, ys, m=compiled: pgd(m, xs, ys, seed=0, amp=True, **kw), True))
    return variants


def _matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """The machine's own large-matmul rate in GFLOP/s (fp32, n x n by n x n, median of ``repeats``): what "how close
    to the limit" is measured against, in the same run."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / timeit(lambda: a @ b, device, repeats=repeats, warmup=2) / 1e9


def bench_attacks(device: torch.device, quick: bool) -> None:
    """PGD throughput of nslib beside torchattacks and a plain loop, same process, model, batch and attack settings.

    Rows on CUDA: PGD-10 on ResNet-18 (batch 512, eps 0.1, step 0.025) and PGD-40 on SmallCNN (batch 1024,
    eps 0.1, step 0.01); on a CPU: PGD-10 on SmallCNN (batch 256, eps 0.1, step 0.025) and PGD-2 on ResNet-18
    (batch 32, eps 0.03, step 0.0375; its CPU model trains clean, so eps is smaller). Models trained on
    Fashion-MNIST (cached in outputs/bench/), uniform random start.
    Variants: a plain PyTorch fp32 loop and torchattacks fp32 on the model as a user loads it (NCHW, the
    anchors; ratios are speeds, to the plain loop); nslib fp32; nslib on ``fast.prepare`` (batch norm folded,
    channels_last) at the "auto" precision (bf16 autocast on CUDA and on CPUs with bf16 hardware,
    :func:`nslib.fast.cpu_has_bf16`); nslib's evaluation (early stopping: what ``run_suite`` and the
    reproduction's suite run); on a CPU without bf16 hardware, bf16
    forced (what "auto" avoids); on CUDA, compiled (default mode and "max-autotune").
    Columns: images/s of one attack call on the batch (median of timed repeats after a warm-up) and its speed
    against the plain loop; GFLOP/s achieved (2 x forward FLOPs per step); the robust accuracy it gives on the
    test images with its 95% Wilson interval, and the speed of that whole evaluation against the plain loop's
    (the one column where nslib's evaluation compares: it does less work for the same or a stronger answer);
    the fraction of the GPU's dense bf16 peak; for compiled variants the one-off compile time. The machine's own
    fp32 large-matmul GFLOP/s is measured in the same run. Goals: on an H100 >= 4x the anchor on ResNet-18
    PGD-10 and >= 2x on SmallCNN PGD-40; on a CPU, nslib's evaluation >= 1.3x the plain loop's and >= 1.1x
    torchattacks'. Results go to outputs/bench/attacks.json.
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
        cases = [("smallcnn", 256, 10, 0.1, 0.025), ("resnet18", 32, 2, 0.03, 0.0375)]
    matmul = _matmul_gflops(device, n=256 if quick else 2048)
    print(f"this device's fp32 matmul (2048 x 2048): {matmul:.0f} GFLOP/s")
    records = []
    print(f"{'model':<9} {'attack':<7} {'batch':>5} {'variant':<40} {'img/s':>7} {'speed':>6} {'GFLOP/s':>7} "
          f"{'robust % [95% interval]':>24} {'eval speed':>10} {'diff pts':>8} {'% bf16 peak':>11} {'compile s':>9}")
    for arch, batch, steps, eps, alpha in cases:
        # the anchors run the model as a user loads it: NCHW (training may leave channels_last weights behind)
        model = _bench_model(arch, device, quick).to(memory_format=torch.contiguous_format)
        n_eval = 2 * batch if quick else (2048 if cuda else (512 if arch == "smallcnn" else 128))
        xe, ye = x_test[:n_eval].to(device), y_test[:n_eval].to(device)
        xb, yb = xe[:batch], ye[:batch]
        flops = _attack_flops_per_image(model, xb, steps)
        kw = dict(eps=eps, alpha=alpha, steps=steps)
        variants = _attack_variants(model, xb, yb, kw, device, torchattacks, forced_bf16=arch == "smallcnn" or quick)
        rows = []
        for v in variants:
            slow = "forced" in v.name  # emulated bf16: minutes per repeat on a CPU; one timed run says enough
            try:
                sync(device)
                t0 = time.perf_counter()
                v.attack(xb, yb)  # the first call compiles and autotunes, if anything
                sync(device)
                first = time.perf_counter() - t0
                t = timeit(lambda: v.attack(xb, yb), device, repeats=1 if slow else repeats, warmup=0 if slow else 1)
                torch.manual_seed(0)  # torchattacks draws its random start from the global generator
                t0 = time.perf_counter()
                acc = robust_accuracy(model, xe, ye, lambda m, xs, ys: v.attack(xs, ys), batch_size=batch)
                sync(device)
                eval_s = time.perf_counter() - t0
            except Exception as e:  # a backend that cannot compile here: report it, go on
                print(f"{arch:<9} PGD-{steps:<3} {batch:>5} {v.name:<40} failed: {type(e).__name__}: {e}"[:300])
                continue
            rows.append(dict(model=arch, attack=f"PGD-{steps}", batch=batch, eps=eps, alpha=alpha, variant=v.name,
                             evaluation_only=v.evaluation, images_per_s=batch / t,
                             gflops=None if v.evaluation else batch / t * flops / 1e9,  # it does fewer than counted
                             matmul_gflops=matmul, robust_accuracy=acc.robust_accuracy, n_eval=n_eval,
                             interval=(acc.low, acc.high), eval_s=eval_s, flops_per_image=flops, steady_s=t,
                             first_call_s=first, compile_s=max(0.0, first - t) if v.compiled else None))
        _print_attack_rows(rows, arch, steps, batch, flops, peak)
        records += rows
    path = store.outputs_dir("bench", "attacks_quick.json" if quick else "attacks.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    store.save_json(path, {"provenance": store.provenance(device, quick=quick, repeats=repeats), "rows": records})
    print("speed: images/s of one attack call as a multiple of the plain loop's (the same work: nslib's evaluation "
          "row does less, so read its 'eval speed'); eval speed: the whole robust-accuracy evaluation, as a multiple "
          "of the plain loop's; both higher is faster")
    if cuda:
        print(f"goals (H100): >= 4x the anchor on ResNet-18 PGD-10, >= 2x on SmallCNN PGD-40, robust accuracy "
              f"within 0.5 points of nslib fp32; written to {path}")
    else:
        _cpu_attack_goals(records)
        print(f"this CPU has bf16 hardware: {cpu_bf16_text()}; written to {path}")


def _print_attack_rows(rows, arch, steps, batch, flops, peak) -> None:
    """Fill each row's ratios (speed and eval speed against the plain loop, difference from nslib fp32) and print it."""
    anchor = next((r for r in rows if r["variant"].startswith("plain")), None)
    fp32 = next((r for r in rows if r["variant"] == "nslib fp32"), None)
    for r in rows:
        r["ratio_to_anchor"] = r["images_per_s"] / anchor["images_per_s"] if anchor and not r["evaluation_only"] else None
        r["eval_speed_to_anchor"] = anchor["eval_s"] / r["eval_s"] if anchor else None
        r["diff_points"] = 100 * (r["robust_accuracy"] - fp32["robust_accuracy"]) if fp32 else None
        r["within_fp32_interval"] = (fp32["interval"][0] <= r["robust_accuracy"] <= fp32["interval"][1]) \
            if fp32 else None
        r["bf16_peak_fraction"] = r["images_per_s"] * flops / peak if peak else None
        cell = lambda v, fmt: format(v, fmt) if v is not None else "n/a"  # noqa: E731
        robust = f"{100 * r['robust_accuracy']:.2f} [{100 * r['interval'][0]:.1f}, {100 * r['interval'][1]:.1f}]"
        print(f"{arch:<9} PGD-{steps:<3} {batch:>5} {r['variant']:<40} {r['images_per_s']:>7.0f} "
              f"{cell(r['ratio_to_anchor'], '.2f'):>5}x {cell(r['gflops'], '.1f'):>7} {robust:>24} "
              f"{cell(r['eval_speed_to_anchor'], '.2f'):>9}x {cell(r['diff_points'], '+.2f'):>8} "
              f"{cell(r['bf16_peak_fraction'], '.2%'):>11} {cell(r['compile_s'], '.1f'):>9}")


def _cpu_attack_goals(records) -> None:
    """The CPU goals, met or not, per model: nslib's evaluation >= 1.3x the plain loop's and >= 1.1x torchattacks'."""
    for arch in dict.fromkeys(r["model"] for r in records):
        rows = {r["variant"]: r for r in records if r["model"] == arch}
        ours, ta = rows.get("nslib evaluation (prepared, early stop)"), rows.get("torchattacks fp32")
        kernel = rows.get("nslib fp32")
        if ours is None or kernel is None:
            continue
        vs_plain = ours["eval_speed_to_anchor"]
        vs_ta = ta["eval_s"] / ours["eval_s"] if ta else None
        print(f"goal (CPU), {arch}: nslib's evaluation >= 1.3x the plain loop's: "
              f"{'met' if vs_plain >= 1.3 else 'not met'} ({vs_plain:.2f}x); >= 1.1x torchattacks': "
              + ("n/a" if vs_ta is None else f"{'met' if vs_ta >= 1.1 else 'not met'} ({vs_ta:.2f}x)")
              + f"; nslib fp32's attack steps run at {kernel['gflops']:.0f} GFLOP/s, this CPU's large matmul at "
              f"{kernel['matmul_gflops']:.0f}")
