"""Attacks: analytic oracles (linear models), the torchattacks reference, strength orderings on a trained
SmallCNN, and property tests (bounds, no mutation, mode and grads restored, batch consistency)."""
from __future__ import annotations

import copy
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from nslib import attacks, models
from nslib.attacks import fgsm, mim, pgd
from nslib.evaluate import autoattack
from nslib.minnorm import cw_l2

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


def trades_inner_loop(model, x_natural, noise, *, step_size, epsilon, perturb_steps):
    """TRADES's inner maximisation, restated unmodified from yaodongyu/TRADES trades.py (trades_loss),
    the start's noise passed in (the reference draws ``torch.randn(x_natural.shape).cuda()``)."""
    criterion_kl = nn.KLDivLoss(reduction="sum")  # size_average=False in the reference
    x_adv = x_natural.detach() + 0.001 * noise.detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def test_kl_pgd_matches_trades_inner_loop(cnn_data):
    """loss="kl" is TRADES's inner maximisation: same start (x + 0.001 N(0, 1), unclipped), step, projection.

    The start is drawn as pgd draws it (restart 0's generator), so the two runs must agree pixel by pixel;
    clipping the start to [0, 1] (as nslib once did) changes 62% of them here."""
    model, x, _ = cnn_data
    eps, alpha, steps, seed = 0.3, 0.01, 5, 3
    ours = pgd(model, x, None, eps=eps, alpha=alpha, steps=steps, loss="kl", seed=seed)
    noise = torch.randn(x.shape, generator=attacks.restart_generator(x.device, seed, 0))
    assert bool(((x + 0.001 * noise) < 0).any())  # the start leaves [0, 1]: the case where clipping matters
    ref = trades_inner_loop(model, x, noise, step_size=alpha, epsilon=eps, perturb_steps=steps)
    same = torch.isclose(ours, ref, rtol=0, atol=1e-6).float().mean()
    assert same >= 0.999, float(same)  # a sign may flip where the gradient is ~0 (rounding)
    assert float(linf(ours, x).max()) <= eps and 0 <= float(ours.min()) and float(ours.max()) <= 1
    p_nat = F.softmax(model(x), 1).detach()

    def kl(z):
        return F.kl_div(F.log_softmax(model(z), 1), p_nat, reduction="none").sum(1)

    assert bool((kl(ours) > 100 * kl(x + 0.001 * noise)).all())  # it moved far away from the clean prediction


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_pgd_unchecked_has_the_iterates_of_pgd(cnn_data, loss):
    """Training's attack (attacks.pgd_unchecked) is pgd without the checks: the same iterates, so TRADES
    training also starts unclipped."""
    model, x, y = cnn_data
    kw = dict(eps=0.3, alpha=0.01, steps=3, loss=loss, seed=5)
    assert torch.equal(attacks.pgd_unchecked(model, x, y, **kw), pgd(model, x, y, **kw))


# ----------------------------------------------------------------------------------------------------------
# reference: torchattacks, random start off, eval mode, same step size, mean cross-entropy


@pytest.fixture(scope="module")
def torchattacks():
    if os.environ.get("CI"):  # `make test` installs the reference: on CI its absence is a failure, not a skip
        import torchattacks as module
        return module
    return pytest.importorskip("torchattacks")


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd_l2", "mim"])
def test_matches_torchattacks(cnn_data, torchattacks, name):
    model, x, y = cnn_data
    # float64: in float32 one image of 16 crosses a ReLU kink differently after a 1e-7 rounding difference
    # (torch 2.14, pgd_l2) and the two trajectories part; in float64 they agree to 1e-8 on every image.
    model, x = copy.deepcopy(model).double(), x.double()
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


def test_margin_is_right_for_negative_logits():
    logits = torch.tensor([[-5.0, -1.0, -3.0], [-2.0, -9.0, -4.0]])
    y = torch.tensor([1, 0])
    assert torch.equal(attacks.margin(logits, y), torch.tensor([-2.0, -2.0]))  # both correctly classified


# ----------------------------------------------------------------------------------------------------------
# C&W-L2: the closed-form minimum on a linear model


def test_cw_l2_finds_the_closed_form_minimum():
    torch.manual_seed(0)
    model = Linear((1, 4, 4), classes=2, seed=1)
    x = torch.rand(32, 1, 4, 4) * 0.4 + 0.3
    logits = model(x).detach()
    y = logits.argmax(1)
    w = model.fc.weight.detach()
    dw = w[1 - y] - w[y]  # [N, d]
    optimum = -attacks.margin(logits, y) / dw.norm(dim=1)  # |margin| / ||w_true - w_other||
    target = x.flatten(1) + dw / dw.norm(dim=1, keepdim=True) * optimum[:, None]
    assert bool(((target > 0) & (target < 1)).all())  # the minimal perturbation stays inside the box
    x_adv = cw_l2(model, x, y, steps=100, binary_search_steps=6, lr=0.05)
    assert bool((model(x_adv).argmax(1) != y).all())  # every example succeeded
    ratio = l2(x_adv, x) / optimum.double()
    assert float(ratio.max()) <= 1.1 and float(ratio.min()) >= 0.999


def test_cw_l2_returns_the_input_where_it_fails():
    model = Linear((1, 4, 4), classes=3)
    with torch.no_grad():  # logits that do not depend on the input: nothing can be found
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([2.0, -1.0, 0.5]))
    x, y = torch.rand(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    assert torch.equal(cw_l2(model, x, y, steps=5, binary_search_steps=2), x)


# ----------------------------------------------------------------------------------------------------------
# properties over random models, shapes, eps and dtypes

ATTACKS = {  # name: (call, deterministic)
    "fgsm": (lambda m, x, y, eps: fgsm(m, x, y, eps=eps), True),
    "pgd": (lambda m, x, y, eps: pgd(m, x, y, eps=eps, steps=3, seed=0), False),
    "pgd_fixed": (lambda m, x, y, eps: pgd(m, x, y, eps=eps, steps=3, random_start=False), True),
    "pgd_l2": (lambda m, x, y, eps: pgd(m, x, y, eps=4 * eps, norm="l2", steps=3, restarts=2, seed=1), False),
    "pgd_l2_fixed": (lambda m, x, y, eps: pgd(m, x, y, eps=4 * eps, norm="l2", steps=3, random_start=False), True),
    "pgd_margin": (lambda m, x, y, eps: pgd(m, x, y, eps=eps, steps=3, loss="margin", restarts=2, seed=2), False),
    "pgd_kl": (lambda m, x, y, eps: pgd(m, x, None, eps=eps, steps=3, loss="kl", seed=3), False),
    "pgd_targeted": (lambda m, x, y, eps: pgd(m, x, (y + 1) % 10, eps=eps, steps=3, targeted=True,
                                              random_start=False), True),
    "mim": (lambda m, x, y, eps: mim(m, x, y, eps=eps, steps=3), True),
    "cw_l2": (lambda m, x, y, eps: cw_l2(m, x, y, steps=4, binary_search_steps=2, lr=0.1), True),
}
RADIUS = {"pgd_l2": 4.0, "pgd_l2_fixed": 4.0}  # l2 radius = factor * eps; cw_l2 has no radius


def _snapshot(model):
    return ([(m, m.training) for m in model.modules()],
            [(p, p.grad, p.grad.clone(), p.requires_grad) for p in model.parameters()])


def _assert_untouched(snapshot):
    modes, grads = snapshot
    assert all(m.training == t for m, t in modes), "train/eval flags were not restored"
    for p, g, values, req in grads:
        assert p.grad is g and torch.equal(p.grad, values) and p.requires_grad == req, "a .grad changed"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(ATTACKS)), n=st.integers(1, 4), channels=st.sampled_from([1, 3]),
       size=st.integers(3, 6), eps=st.floats(0.0, 0.5), dtype=st.sampled_from([torch.float32, torch.float64]),
       train=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_attack_properties(name, n, channels, size, eps, dtype, train, seed):
    call, deterministic = ATTACKS[name]
    model = tiny_cnn(channels, 10, size, seed=seed, dtype=dtype)
    model.train(train)
    model.drop.training = not train  # a mixed state, restored exactly
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=g, dtype=dtype)
    x[x < 0.1] = 0.0  # exact bounds of the box
    x[x > 0.9] = 1.0
    y = torch.randint(0, 10, (n,), generator=g)
    x0, y0 = x.clone(), y.clone()
    snap = _snapshot(model)
    x_adv = call(model, x, y, eps)
    assert torch.equal(x, x0) and torch.equal(y, y0), "the input was modified"
    _assert_untouched(snap)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    if name in RADIUS:
        assert float(l2(x_adv, x).max()) <= RADIUS[name] * eps
    elif name != "cw_l2":
        assert float(linf(x_adv, x).max()) <= eps
    if deterministic and n > 1:  # an example alone gives what it gives inside the batch
        alone = call(model, x[-1:], y[-1:], eps)
        close = torch.isclose(alone, x_adv[-1:], atol=1e-6 if dtype == torch.float32 else 1e-12)
        assert float(close.double().mean()) >= (0.99 if dtype == torch.float32 else 1.0)


# ----------------------------------------------------------------------------------------------------------
# bad input is a clear error, for every attack


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


class ReturnsDict(ReturnsTuple):
    def forward(self, x):
        return {"logits": self.fc(x.flatten(1))}


class ReturnsProbs(ReturnsTuple):
    def forward(self, x):
        return self.fc(x.flatten(1)).softmax(1)


ENTRY = {
    "fgsm": lambda m, x, y, eps=0.1: fgsm(m, x, y, eps=eps),
    "pgd": lambda m, x, y, eps=0.1: pgd(m, x, y, eps=eps, steps=1),
    "mim": lambda m, x, y, eps=0.1: mim(m, x, y, eps=eps, steps=1),
    "cw_l2": lambda m, x, y, eps=0.1: cw_l2(m, x, y, c=eps if eps > 0 else -1.0, steps=1, binary_search_steps=1),
    "autoattack": lambda m, x, y, eps=0.1: autoattack(m, x, y, eps=eps, version="custom",
                                                              attacks=["apgd-ce"]),
}


@pytest.mark.parametrize("name", sorted(ENTRY))
def test_bad_input_is_a_clear_error(name):
    call = ENTRY[name]
    model = Linear((1, 4, 4), classes=10)
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    bad = x.clone()
    bad[0, 0, 0, 0] = 1.5
    with pytest.raises(ValueError, match=r"values in \[0, 1\], got min .* and max 1.5"):
        call(model, bad, y)
    with pytest.raises(ValueError, match="4-D batch"):
        call(model, x[0], y)
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        call(model, x, y[:1])
    with pytest.raises(ValueError, match="from 1 to 10"):
        call(model, x, torch.tensor([1, 10]))
    with pytest.raises(TypeError, match="int64"):
        call(model, x, y.float())
    with pytest.raises(ValueError, match="got -0.1" if name != "cw_l2" else "got -1.0"):
        call(model, x, y, eps=-0.1)
    with pytest.raises(TypeError, match="tuple of 2 items"):
        call(ReturnsTuple(), x, y)
    with pytest.raises(TypeError, match="dict with keys"):
        call(ReturnsDict(), x, y)
    with pytest.raises(ValueError, match="probabilities"):
        call(ReturnsProbs(), x, y)


def test_pgd_argument_errors():
    model, x, y = Linear((1, 4, 4), classes=10), torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="norm must be one of 'linf', 'l2', got 'L2'"):
        pgd(model, x, y, eps=0.1, norm="L2")
    with pytest.raises(ValueError, match="loss must be one of"):
        pgd(model, x, y, eps=0.1, loss="dlr")
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        pgd(model, x, y, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="targeted"):
        pgd(model, x, None, eps=0.1, loss="kl", targeted=True)
    with pytest.raises(TypeError, match="y must be a tensor"):
        pgd(model, x, None, eps=0.1)


def test_mode_is_restored_when_the_model_raises():
    class Fails(Linear):
        calls = 0

        def forward(self, x):
            Fails.calls += 1
            if Fails.calls > 1:
                raise RuntimeError("boom")
            return super().forward(x)

    model = Fails((1, 4, 4), classes=10)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, torch.rand(2, 1, 4, 4), torch.tensor([1, 2]), eps=0.1)
    assert model.training


# ----------------------------------------------------------------------------------------------------------
# AutoAttack wrapper


def test_autoattack_keeps_the_contracts(one_thread):
    model = tiny_cnn(1, 10, 6, seed=0)
    model.train()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    x = torch.rand(4, 1, 6, 6)
    y = model.eval()(x).argmax(1)  # all correct clean, so every attack runs
    model.train()
    x0 = x.clone()
    snap = _snapshot(model)
    rng = torch.get_rng_state()
    x_adv, acc = autoattack(model, x, y, eps=0.05, version="custom", attacks=["fab-t", "apgd-ce"])
    assert torch.equal(x, x0)
    _assert_untouched(snap)
    assert torch.equal(torch.get_rng_state(), rng)  # its sub-attacks reseed torch; the state is restored
    assert list(acc) == ["clean", "fab-t", "apgd-ce"]
    assert acc["clean"] == 1.0  # each attack's accuracy: test_autoattack_matches_a_direct_call_of_the_reference
    assert float(linf(x_adv, x).max()) <= 0.05 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    with torch.no_grad():
        model.eval()
        robust = float(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).float().mean())
    assert robust == pytest.approx(acc["apgd-ce"], abs=1e-4)


def test_autoattack_matches_a_direct_call_of_the_reference(one_thread):
    """The wrapper returns the reference's x_adv (projected onto the exact eps-ball, where FAB's output
    lies an ulp outside it) and, per attack, the robust accuracy of the reference run up to that attack,
    recomputed from its x_adv (each sub-attack reseeds with ``seed``, so a shorter list is a prefix)."""
    from pyautoattack import AutoAttack

    model = tiny_cnn(1, 10, 6, seed=0).eval()
    torch.manual_seed(1)
    x = torch.rand(8, 1, 6, 6)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one misclassified clean
    eps, order = 0.05, ["apgd-ce", "fab-t"]
    x_adv, acc = autoattack(model, x, y, eps=eps, version="custom", attacks=order, seed=0)
    refs = []
    for k in range(1, len(order) + 1):
        with torch.random.fork_rng():
            aa = AutoAttack(model, norm="Linf", eps=eps, version="custom", attacks=order[:k], seed=0)
            refs.append(aa.run_standard_evaluation(x, y, batch_size=500)[0])
    lo, hi = attacks.linf_box(x, eps)
    assert torch.equal(x_adv, torch.min(torch.max(refs[-1], lo), hi))
    assert torch.allclose(x_adv, refs[-1], rtol=0, atol=1e-6)

    def robust(z):
        with torch.no_grad():
            return float(((model(x).argmax(1) == y) & (model(z).argmax(1) == y)).float().mean())

    expected = {"clean": robust(x), **{name: robust(r) for name, r in zip(order, refs)}}
    assert expected == {"clean": 0.875, "apgd-ce": 0.75, "fab-t": 0.5}  # each attack finds some
    assert acc == pytest.approx(expected, abs=1e-4) and list(acc) == list(expected)


def test_unwrapped_fab_adds_into_parameter_grads():
    """The premise of the wrapper's grad protection: the reference FAB does call .backward()."""
    from pyautoattack import AutoAttack

    model = tiny_cnn(1, 10, 6, seed=0).eval()
    x = torch.rand(4, 1, 6, 6)
    y = model(x).argmax(1)
    AutoAttack(model, eps=0.05, version="custom", attacks=["fab-t"], seed=0).run_standard_evaluation(x, y)
    assert model.fc.weight.grad is not None and bool(model.fc.weight.grad.abs().sum() > 0)


def test_autoattack_passes_its_check_warnings_on():
    class Noisy(nn.Module):  # randomised even in eval mode: AutoAttack's check flags it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(36, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) + 0.1 * torch.randn(x.shape[0], 10)

    x, y = torch.rand(3, 1, 6, 6), torch.tensor([0, 1, 2])
    with pytest.warns(UserWarning, match="randomized defense"):
        autoattack(Noisy(), x, y, eps=0.05, version="custom", attacks=["apgd-ce"])


# ----------------------------------------------------------------------------------------------------------
# strength on a trained SmallCNN


@pytest.mark.slow
def test_strength_ordering_on_trained_smallcnn(trained_smallcnn):
    """PGD-20 <= FGSM, restarts never help the model, AutoAttack <= PGD-20 (robust accuracy, per example
    where the attacks are nested). AutoAttack runs its two gradient attacks (APGD-CE, APGD-T): its FAB-T
    and Square cost minutes on two CPU cores (Square: 5,000 queries per robust example)."""
    from nslib.evaluate import robust_accuracy

    model, x, y = trained_smallcnn
    x, y = x[::5], y[::5]  # 40 images, every class
    eps = 0.25  # PGD-20 leaves about half of this clean-trained model's examples robust

    def robust(attack):
        return robust_accuracy(model, x, y, attack, batch_size=len(x)).robust

    r_fgsm = robust(lambda m, xb, yb: fgsm(m, xb, yb, eps=eps))
    r_pgd = robust(lambda m, xb, yb: pgd(m, xb, yb, eps=eps, steps=20, seed=0))
    r_pgd3 = robust(lambda m, xb, yb: pgd(m, xb, yb, eps=eps, steps=20, seed=0, restarts=3))
    r_aa = robust(lambda m, xb, yb: autoattack(m, xb, yb, eps=eps, version="custom",
                                                       attacks=["apgd-ce", "apgd-t"])[0])
    acc = {k: float(v.float().mean()) for k, v in
           {"fgsm": r_fgsm, "pgd": r_pgd, "pgd3": r_pgd3, "aa": r_aa}.items()}
    assert 0 < acc["pgd"] <= acc["fgsm"] < 1, acc  # not trivially 0 or 1
    assert bool((r_pgd3 <= r_pgd).all()), acc  # nested restarts never make an example robust again
    assert acc["aa"] <= acc["pgd"], acc


# ----------------------------------------------------------------------------------------------------------
# the fast path: batch norm folding and channels_last give the same function


def test_fold_bn_keeps_the_function_and_the_original():
    from nslib import fast

    torch.manual_seed(0)
    model = models.build("resnet18", "fmnist")
    for m in model.modules():  # non-trivial statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    folded = fast.prepare(model, example=x)  # folds and checks the logits against the original
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert folded.net.nslib_folded_bn == 20  # stem + 16 in the blocks + 3 shortcuts
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4)
    a = pgd(model, x, y, eps=0.1, steps=2, seed=0)
    b = pgd(folded, x, y, eps=0.1, steps=2, seed=0)
    assert float(torch.isclose(a, b, atol=1e-5).float().mean()) >= 0.99


def test_fold_bn_detects_a_batch_norm_that_does_not_follow_its_convolution():
    from nslib import fast

    class Misordered(nn.Module):  # registers conv then bn, but applies bn before conv
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = nn.BatchNorm2d(2)
            self.fc = nn.Linear(2 * 4 * 4, 3)

        def forward(self, x):
            return self.fc(self.conv(self.bn(x.expand(-1, 2, -1, -1))).flatten(1))

    model = Misordered()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.5)
        model.bn.running_var.fill_(0.1)
    with pytest.raises(ValueError, match="folding batch norm changed the logits"):
        fast.fold_bn(model, example=torch.rand(2, 1, 4, 4))
