"""The CPU fast path: bf16 autocast where the CPU has bf16 hardware, fp32 elsewhere, and a way to force either.

The oracles: the precision table of :func:`nslib.fast.autocast_dtype` (by construction), fp32 attacks as the
reference for bf16 ones (same robust accuracy within the binomial interval), and the contracts of every attack
(inside the ball and [0, 1]) under bf16.
"""
from __future__ import annotations

import pytest
import torch

from nslib import attacks, fast, training
from nslib.evaluate import robust_accuracy, wilson_interval


def test_autocast_dtype_follows_the_hardware(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda: False)
    assert fast.autocast_dtype("auto", cpu) is None
    assert fast.autocast_dtype("auto", cuda) is torch.bfloat16
    assert fast.autocast_dtype("bf16", cpu) is torch.bfloat16  # forced: allowed, slow without hardware
    assert fast.autocast_dtype("fp32", cuda) is None
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda: True)
    assert fast.autocast_dtype("auto", cpu) is torch.bfloat16
    assert fast.autocast_dtype("fp32", cpu) is None
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        fast.autocast_dtype("fp16", cpu)


def test_cpu_has_bf16_reads_the_override_and_the_cpu_flags(monkeypatch):
    monkeypatch.setenv("NSLIB_CPU_BF16", "1")
    assert fast.cpu_has_bf16() is True
    monkeypatch.setenv("NSLIB_CPU_BF16", "0")
    assert fast.cpu_has_bf16() is False
    monkeypatch.delenv("NSLIB_CPU_BF16")
    # the kernel's flags alone decide when torch's probes say no
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(fast, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    assert fast.cpu_has_bf16() is True
    monkeypatch.setattr(fast, "_cpuinfo_flags", lambda: {"avx2", "fma"})
    assert fast.cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert fast.cpu_has_bf16() is True


def test_bf16_pgd_keeps_the_contracts_and_the_fp32_robust_accuracy(trained_smallcnn):
    model, x, y = trained_smallcnn
    x, y = x[:64], y[:64]
    fp32 = robust_accuracy(model, x, y, lambda m, xs, ys: attacks.pgd(m, xs, ys, eps=0.15, steps=5, seed=0))
    x_adv = attacks.pgd(model, x, y, eps=0.15, steps=5, seed=0, amp=True)
    assert x_adv.dtype == torch.float32
    assert (x_adv.double() - x.double()).abs().amax() <= 0.15 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, attacks.pgd(model, x, y, eps=0.15, steps=5, seed=0))  # bf16 did run
    bf16 = robust_accuracy(model, x, y, lambda m, xs, ys: attacks.pgd(m, xs, ys, eps=0.15, steps=5, seed=0, amp=True))
    low, high = wilson_interval(round(fp32.robust_accuracy * 64), 64)
    assert 0 < fp32.robust_accuracy < 1 and low <= bf16.robust_accuracy <= high, (bf16, fp32)


@pytest.mark.parametrize("precision,expect", [("fp32", None), ("bf16", torch.bfloat16)])
def test_training_runs_at_the_asked_precision_on_cpu(precision, expect, monkeypatch):
    from nslib import data, models

    seen = []
    real = training._prepare

    def spy(*args, **kwargs):
        run = real(*args, **kwargs)
        seen.append((run.amp, run.cfg.channels_last))
        return run

    monkeypatch.setattr(training, "_prepare", spy)
    x, y = data.load("synthetic", like="fmnist", n=96, seed=0)
    torch.manual_seed(0)
    model = models.build("smallcnn", "fmnist")
    result = training.train(model, (x, y), method="pgd_at", epochs=1, batch_size=32, val_size=32, val_n_adv=8,
                            attack_steps=2, eps=0.1, precision=precision, device="cpu", progress=False)
    assert seen == [(expect, True)]  # channels_last on a CPU, in fp32 too (faster there)
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))


def test_attack_batch_is_cache_sized_on_cpu_and_large_on_gpu():
    assert fast.attack_batch("cpu") == 128 and fast.attack_batch(torch.device("cuda")) == 500
    assert fast.attack_batch("cpu", 7) == 7


def test_robust_accuracy_does_not_depend_on_the_batch_size_for_a_deterministic_attack(trained_smallcnn):
    """The CPU default batch (128) only regroups examples: an attack without random start gives the same
    counts at any batch size."""
    model, x, y = trained_smallcnn
    fgsm = lambda m, xs, ys: attacks.fgsm(m, xs, ys, eps=0.1)  # noqa: E731
    default = robust_accuracy(model, x, y, fgsm)
    assert default.robust_accuracy == robust_accuracy(model, x, y, fgsm, batch_size=200).robust_accuracy
    assert default.robust_accuracy == robust_accuracy(model, x, y, fgsm, batch_size=33).robust_accuracy
