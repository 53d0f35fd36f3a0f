"""Attacks: analytic oracles (linear models), the torchattacks reference, strength orderings on a trained
SmallCNN, and property tests (bounds, no mutation, mode and grads restored, batch consistency)."""
from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nslib import attacks, models
from nslib.attacks import cw_l2, fgsm, mim, pgd

# ----------------------------------------------------------------------------------------------------------
# helpers


class Linear(nn.Module):
    """z = W x + b on flattened images: the minimal perturbations have closed forms."""

    def __init__(self, shape=(1, 4, 4), classes=2, seed=0, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = shape[0] * shape[1] * shape[2]
        self.fc = nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, d, generator=g) * scale)
            self.fc.bias.copy_(torch.randn(classes, generator=g) * 0.1)

    def forward(self, x):
        return self.fc(x.flatten(1))


def tiny_cnn(channels=1, classes=10, size=6, seed=0, dtype=torch.float32):
    """A random conv net with batch norm and dropout (so train/eval mode matters)."""
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(channels, 4, 3, padding=1)), ("bn", nn.BatchNorm2d(4)), ("relu", nn.ReLU()),
        ("flat", nn.Flatten()), ("drop", nn.Dropout(0.3)), ("fc", nn.Linear(4 * size * size, classes))]))
    with torch.no_grad():  # non-trivial running statistics
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net.to(dtype)


def linf(a, b):
    return (a.double() - b.double()).flatten(1).abs().amax(1)


def l2(a, b):
    return (a.double() - b.double()).flatten(1).norm(dim=1)


@pytest.fixture(scope="module")
def cnn_data():
    """SmallCNN with a random (non-zero) last layer and 16 real MNIST-5k test images."""
    from nslib import data

    torch.manual_seed(0)
    model = models.build("smallcnn", "mnist5k")
    nn.init.normal_(model.classifier.fc3.weight, std=0.05)
    model.eval()
    x, y = data.load("mnist5k", "test")
    idx = torch.arange(16) * 61  # the test split is sorted by class: take every class
    return model, x[idx].clone(), y[idx].clone()


# ----------------------------------------------------------------------------------------------------------
# analytic oracles: a two-class linear model, inputs well inside [0, 1]


@pytest.fixture
def linear_case():
    torch.manual_seed(0)
    model = Linear((1, 4, 4), classes=2, seed=1)
    x = torch.rand(8, 1, 4, 4) * 0.4 + 0.3  # in [0.3, 0.7]; eps 0.1 keeps the ball inside [0, 1]
    y = model(x).argmax(1)
    y[::2] = 1 - y[::2]  # misclassified points too: the optimum does not depend on it
    w = model.fc.weight.detach()
    d = (w[1 - y] - w[y]).view(-1, 1, 4, 4)  # w_other - w_true, [N, 1, 4, 4]
    return model, x, y, d


@pytest.mark.parametrize("attack, kwargs", [
    (fgsm, {}),
    (pgd, {"steps": 10}),                            # default alpha: 10 * 2.5 eps / 10 >= 2 eps
    (pgd, {"steps": 5, "loss": "margin"}),
    (pgd, {"steps": 10, "restarts": 3, "seed": 2}),
    (pgd, {"steps": 10, "random_start": False}),
    (mim, {"steps": 10, "alpha": 0.02}),             # no random start: eps / alpha steps suffice
])
def test_linf_optimum_on_linear_model(linear_case, attack, kwargs):
    model, x, y, d = linear_case
    eps = 0.1
    x_adv = attack(model, x, y, eps=eps, **kwargs)
    expected = x + eps * d.sign()
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert float(linf(x_adv, x).max()) <= eps


def test_targeted_pgd_reaches_the_target_optimum(linear_case):
    model, x, y, d = linear_case
    x_adv = pgd(model, x, 1 - y, eps=0.1, steps=10, targeted=True, seed=0)  # toward the other class
    assert torch.allclose(x_adv, x + 0.1 * d.sign(), atol=1e-6)


def test_l2_pgd_reaches_the_l2_optimum(linear_case):
    model, x, y, d = linear_case
    eps = 0.3
    x_adv = pgd(model, x, y, eps=eps, norm="l2", steps=5, random_start=False)
    expected = x + eps * d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(x_adv, expected, atol=1e-5)
    assert float(l2(x_adv, x).max()) <= eps


def test_kl_pgd_matches_trades_inner_loop(cnn_data):
    """loss="kl" is TRADES's inner maximisation: same start (x + 0.001 N(0, 1), clipped), step, projection."""
    model, x, _ = cnn_data
    eps, alpha, steps, seed = 0.3, 0.01, 5, 3
    ours = pgd(model, x, None, eps=eps, alpha=alpha, steps=steps, loss="kl", seed=seed)
    g = attacks._restart_generator(x.device, seed, 0)  # restart 0's generator
    # one deliberate difference: TRADES feeds its start unclipped (values below 0 on black pixels); nslib
    # clips it to [0, 1], the contract of every model input
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=g)).clamp(0.0, 1.0)
    p_nat = F.softmax(model(x), dim=1).detach()
    for _ in range(steps):  # TRADES trades.py, perturb_steps loop (KLDivLoss(size_average=False))
        x_adv.requires_grad_()
        loss_kl = nn.KLDivLoss(reduction="sum")(F.log_softmax(model(x_adv), dim=1), p_nat)
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + alpha * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    same = torch.isclose(ours, x_adv, atol=1e-6).float().mean()
    assert same >= 0.999
    def kl(z):
        return F.kl_div(F.log_softmax(model(z), 1), p_nat, reduction="none").sum(1)

    start = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert bool((kl(ours) > 100 * kl(start)).all())  # it moved far away from the clean prediction


# ----------------------------------------------------------------------------------------------------------
# reference: torchattacks, random start off, eval mode, same step size, mean cross-entropy


@pytest.fixture(scope="module")
def torchattacks():
    return pytest.importorskip("torchattacks")


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_l2", "mim"])
def test_matches_torchattacks(cnn_data, torchattacks, name):
    model, x, y = cnn_data
    eps = 0.3
    if name == "fgsm":
        ours, ref = fgsm(model, x, y, eps=eps), torchattacks.FGSM(model, eps=eps)
    elif name == "pgd":
        ours = pgd(model, x, y, eps=eps, alpha=0.02, steps=10, random_start=False)
        ref = torchattacks.PGD(model, eps=eps, alpha=0.02, steps=10, random_start=False)
    elif name == "pgd_l2":
        ours = pgd(model, x, y, eps=2.0, alpha=0.3, steps=10, norm="l2", random_start=False)
        ref = torchattacks.PGDL2(model, eps=2.0, alpha=0.3, steps=10, random_start=False)
    else:
        ours = mim(model, x, y, eps=eps, alpha=0.03, steps=10, decay=1.0)
        ref = torchattacks.MIFGSM(model, eps=eps, alpha=0.03, steps=10, decay=1.0)
    theirs = ref(x, y)
    same = torch.isclose(ours - x, theirs - x, atol=1e-5).float().mean()
    assert same >= 0.999, f"{name}: only {float(same):.4%} of coordinates agree with torchattacks"
    assert not torch.equal(ours, x)  # the model's gradients are not zero: the comparison means something


# ----------------------------------------------------------------------------------------------------------
# restarts, seeds, amp


def test_restarts_are_nested_and_keep_the_worst_case(cnn_data):
    model, x, y = cnn_data
    kw = dict(eps=0.15, steps=3, loss="ce", seed=7)
    margins = []
    for r in (1, 2, 4):
        x_adv = pgd(model, x, y, restarts=r, **kw)
        with torch.no_grad():
            margins.append(attacks.margin(model(x_adv), y))
    # each example's worst case can only get worse for the model as restarts are added
    assert bool((margins[1] >= margins[0]).all()) and bool((margins[2] >= margins[1]).all())
    assert bool((margins[2] > margins[0]).any())  # and restarts do something on this batch
    same = pgd(model, x, y, restarts=1, **kw)
    assert torch.equal(same, pgd(model, x, y, restarts=1, **kw))  # seeded: deterministic
    assert not torch.equal(same, pgd(model, x, y, restarts=1, **{**kw, "seed": 8}))


def test_seed_none_follows_torch_manual_seed(cnn_data):
    model, x, y = cnn_data
    torch.manual_seed(5)
    a = pgd(model, x, y, eps=0.1, steps=2)
    torch.manual_seed(5)
    assert torch.equal(a, pgd(model, x, y, eps=0.1, steps=2))


def test_amp_is_a_no_op_on_cpu(cnn_data):
    model, x, y = cnn_data
    a = pgd(model, x, y, eps=0.1, steps=3, seed=0, amp=True)
    assert torch.equal(a, pgd(model, x, y, eps=0.1, steps=3, seed=0))


def test_margin_is_right_for_negative_logits():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -9.0, -4.0]])
    y = torch.tensor([1, 0])
    assert torch.equal(attacks.margin(logits, y), torch.tensor([-2.0, -2.0]))  # both correctly classified
