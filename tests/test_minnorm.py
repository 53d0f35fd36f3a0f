"""Minimal-norm attacks (nslib.minnorm): FMN against the closed-form minimum of linear models, its contracts,
its strength against C&W-L2 on a trained SmallCNN, and min_norm_accuracy's label check."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from nslib import evaluate
from nslib.minnorm import cw_l2, fmn

# ----------------------------------------------------------------------------------------------------------
# helpers


class Linear(nn.Module):
    """z = W x + b on flattened images: the minimal perturbation is the projection onto the nearest
    hyperplane z_j = z_y."""

    def __init__(self, d=16, classes=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, d, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g) * 0.1)

    def forward(self, x):
        return self.fc(x.flatten(1))


def distance(a, b, norm):
    delta = (a.double() - b.double()).flatten(1)
    return delta.norm(dim=1) if norm == "l2" else delta.abs().amax(1)


def linear_optimum(model, x, norm):
    """Per example: the exact minimal norm, min over j != y of |z_j - z_y| / ||w_j - w_y||_* (dual norm),
    and the point it reaches (x moved onto that hyperplane), without the [0, 1] box."""
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    w = model.fc.weight.detach()
    dw = w[None] - w[y][:, None]  # [N, classes, d]: w_j - w_y
    gap = logits.gather(1, y[:, None]) - logits  # [N, classes], >= 0
    dual = dw.norm(dim=2) if norm == "l2" else dw.abs().sum(2)
    dist = gap / dual.clamp_min(1e-12)
    dist[torch.arange(len(y)), y] = float("inf")
    opt, j = dist.min(1)  # [N]
    d = dw[torch.arange(len(y)), j]  # [N, d]
    step = d / d.norm(dim=1, keepdim=True) if norm == "l2" else d.sign()
    return y, opt, x.flatten(1) + step * opt[:, None]


# ----------------------------------------------------------------------------------------------------------
# oracle: linear models, inputs well inside [0, 1]


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("classes", [2, 10])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_fmn_finds_the_closed_form_minimum(norm, classes, n):
    torch.manual_seed(0)
    model = Linear(16, classes, seed=1)
    x = torch.rand(n, 1, 4, 4) * 0.4 + 0.3
    y, opt, target = linear_optimum(model, x, norm)
    assert bool(((target > 0) & (target < 1)).all())  # the minimal perturbation stays inside the box
    x_adv = fmn(model, x, y, norm=norm, steps=100)
    assert bool((model(x_adv).argmax(1) != y).all())  # every example succeeded
    ratio = distance(x_adv, x, norm) / opt.double()
    assert float(ratio.max()) <= 1.05 and float(ratio.min()) >= 0.999, ratio


def off_runner_up(model, norm, n=8):
    """``n`` inputs inside [0, 1] whose nearest decision boundary is not the runner-up class's (the class an
    untargeted margin follows), with their exact minimal norms."""
    torch.manual_seed(0)
    x = torch.rand(2000, 1, 4, 4) * 0.4 + 0.3
    y, opt, target = linear_optimum(model, x, norm)
    with torch.no_grad():
        logits = model(x)
    runner_up = logits.scatter(1, y[:, None], float("-inf")).argmax(1)
    w = model.fc.weight.detach()
    dw = w[None] - w[y][:, None]
    dual = dw.norm(dim=2) if norm == "l2" else dw.abs().sum(2)
    dist = (logits.gather(1, y[:, None]) - logits) / dual.clamp_min(1e-12)
    dist[torch.arange(len(y)), y] = float("inf")
    keep = (dist.argmin(1) != runner_up) & ((target > 0.02) & (target < 0.98)).all(1)
    assert int(keep.sum()) >= n
    return x[keep][:n], y[keep][:n], opt[keep][:n]


@pytest.mark.parametrize("attack", ["fmn-l2", "fmn-linf", "cw_l2"])
def test_min_norm_attacks_reach_a_boundary_that_is_not_the_runner_ups(attack):
    """Untargeted, both attacks follow the highest other class and stop up to 1.3x past the minimum;
    the targeted run toward the class with the nearest linearised boundary reaches it."""
    model = Linear(16, 10, seed=1)
    norm = "linf" if attack.endswith("linf") else "l2"
    x, y, opt = off_runner_up(model, norm)
    if attack == "cw_l2":
        x_adv = cw_l2(model, x, y, steps=100, binary_search_steps=6)
    else:
        x_adv = fmn(model, x, y, norm=norm, steps=100)
    assert bool((model(x_adv).argmax(1) != y).all())
    ratio = distance(x_adv, x, norm) / opt.double()
    assert float(ratio.max()) <= 1.01 and float(ratio.min()) >= 0.999, ratio
    if attack == "fmn-l2":  # the untargeted attack alone does not (the finding)
        alone = distance(fmn(model, x, y, steps=100, targets=0), x, "l2") / opt.double()
        assert float(alone.max()) > 1.05


def test_fmn_from_starting_points():
    """A warm start (the far side of the boundary) is bisected toward x; a start that is not adversarial is
    ignored for its example (that one starts at x)."""
    model = Linear(16, 2, seed=3)
    torch.manual_seed(0)
    x = torch.rand(4, 1, 4, 4) * 0.4 + 0.3
    y, opt, target = linear_optimum(model, x, "l2")
    far = (x.flatten(1) + 3 * (target - x.flatten(1))).clamp(0, 1).view_as(x)  # 3x past the hyperplane
    far[0] = x[0]  # not adversarial
    x_adv = fmn(model, x, y, steps=10, starting_points=far)
    assert bool((model(x_adv).argmax(1) != y).all())
    assert float((distance(x_adv, x, "l2") / opt.double()).max()) <= 1.05
    with pytest.raises(ValueError, match="starting_points must be like x"):
        fmn(model, x, y, starting_points=far[:2])
    with pytest.raises(ValueError, match=r"starting_points must have values in \[0, 1\]"):
        fmn(model, x, y, starting_points=far + 2)


# ----------------------------------------------------------------------------------------------------------
# contracts


def tiny_cnn(seed=0):
    """A random conv net with batch norm and dropout (so train/eval mode matters)."""
    torch.manual_seed(seed)
    net = nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(1, 4, 3, padding=1)), ("bn", nn.BatchNorm2d(4)), ("relu", nn.ReLU()),
        ("flat", nn.Flatten()), ("drop", nn.Dropout(0.3)), ("fc", nn.Linear(4 * 6 * 6, 10))]))
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fmn_keeps_the_contracts(norm, dtype):
    model = tiny_cnn().to(dtype)
    model.train()
    model.drop.training = False  # a mixed state, restored exactly
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    grads = [(p, p.grad, p.grad.clone()) for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 6, 6, generator=g, dtype=dtype)
    x[x < 0.1], x[x > 0.9] = 0.0, 1.0  # exact bounds of the box
    y = torch.randint(0, 10, (5,), generator=g)
    x0, y0 = x.clone(), y.clone()
    x_adv = fmn(model, x, y, norm=norm, steps=20)
    assert torch.equal(x, x0) and torch.equal(y, y0), "the input was modified"
    assert model.training and model.conv.training and not model.drop.training, "modes were not restored"
    assert all(p.grad is gr and torch.equal(p.grad, v) for p, gr, v in grads), "a .grad changed"
    assert x_adv.shape == x.shape and x_adv.dtype == dtype and x_adv.device == x.device
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    model.eval()
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    moved = (x_adv != x).flatten(1).any(1)
    assert bool((moved <= wrong).all())  # every example it changed is adversarial; the others are x
    assert bool(wrong.any())
    alone = fmn(model, x[-1:], y[-1:], norm=norm, steps=20)  # an example alone gives what it gives in the batch
    assert torch.allclose(alone, x_adv[-1:], atol=1e-5)


def test_fmn_returns_the_input_where_it_fails():
    model = Linear(16, 3)
    with torch.no_grad():  # logits that do not depend on the input: nothing can be found
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([2.0, -1.0, 0.5]))
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 0, 1])  # examples 0, 1 cannot move; 2 is already wrong
    x_adv = fmn(model, x, y, steps=5)
    assert torch.equal(x_adv, x)  # example 2: misclassified at norm 0, so x is its smallest perturbation


def test_fmn_argument_errors():
    model, x, y = Linear(16, 10), torch.rand(2, 1, 4, 4), torch.tensor([1, 2])
    for kwargs, match in [({"norm": "L2"}, "norm must be one of 'linf', 'l2', got 'L2'"),
                          ({"steps": 0}, "steps must be an integer >= 1, got 0"),
                          ({"alpha_init": 0.0}, "alpha_init must be a finite number > 0"),
                          ({"alpha_final": -1.0}, "alpha_final must be a finite number >= 0"),
                          ({"gamma_init": 1.0}, r"gamma_init must be in \[0, 1\), got 1.0"),
                          ({"gamma_final": -0.1}, "gamma_final must be a finite number >= 0"),
                          ({"targets": -1}, "targets must be an integer >= 0, got -1")]:
        with pytest.raises(ValueError, match=match):
            fmn(model, x, y, **kwargs)
    with pytest.raises(ValueError, match="from 1 to 10"):
        fmn(model, x, torch.tensor([1, 10]))
    with pytest.raises(TypeError, match="int64"):
        fmn(model, x, y.float())


# ----------------------------------------------------------------------------------------------------------
# strength: FMN at no more gradients than C&W finds smaller perturbations


@pytest.mark.slow
def test_fmn_is_at_least_as_strong_as_cw_on_trained_smallcnn(trained_smallcnn, mnist5k_test):
    model = trained_smallcnn[0]
    x, y = mnist5k_test
    x, y = x[::50].clone(), y[::50].clone()  # 20 images, every class (the test split is sorted by class)
    x_fmn = fmn(model, x, y, steps=100)  # 100 gradients untargeted, 100 targeted (+9 to rank the classes)
    x_cw = cw_l2(model, x, y, steps=50, binary_search_steps=4, targets=0)  # up to 200 gradients (the classic)
    res = {name: evaluate.min_norm_accuracy(model, x, y, x_adv, radius=1.0)
           for name, x_adv in {"fmn": x_fmn, "cw": x_cw}.items()}
    fmn_norms, cw_norms = res["fmn"]["norms"], res["cw"]["norms"]
    assert res["fmn"]["clean_accuracy"] >= 0.9
    assert bool(torch.isfinite(fmn_norms).all())  # FMN succeeded everywhere
    assert res["fmn"]["median_norm"] <= res["cw"]["median_norm"], res
    assert res["fmn"]["robust_accuracy"] <= res["cw"]["robust_accuracy"], res
    assert float((fmn_norms <= cw_norms * 1.05).float().mean()) >= 0.9  # per example, not just on average


# ----------------------------------------------------------------------------------------------------------
# min_norm_accuracy: labels are checked against the model's output


@pytest.mark.parametrize("bad", [10, -1])
def test_min_norm_accuracy_rejects_labels_out_of_range(bad):
    model, x = Linear(16, 10), torch.rand(3, 1, 4, 4)
    y = torch.tensor([1, bad, 2])
    with pytest.raises(ValueError, match=r"^y must hold class indices in \[0, 9\] \(the model returns 10 logits\)"):
        evaluate.min_norm_accuracy(model, x, y, x.clone(), radius=0.5)


def test_run_suite_runs_fmn_as_a_min_norm_attack():
    model = Linear(16, 10, seed=1)
    torch.manual_seed(0)
    x = torch.rand(6, 1, 4, 4) * 0.4 + 0.3
    y, opt, target = linear_optimum(model, x, "l2")
    assert bool(((target > 0) & (target < 1)).all())
    radius = float(opt.sort().values[2:4].mean())  # between the 3rd and 4th smallest: half are robust
    rows = evaluate.run_suite(model, x, y, [{"attack": "fmn", "radius": radius},
                                            {"attack": "fmn", "norm": "linf", "steps": 30, "radius": 0.01}],
                              batch_size=4)
    assert rows[0]["label"] == "FMN-L2-100" and rows[1]["label"] == "FMN-Linf-30" and rows[0]["clean_accuracy"] == 1.0
    assert rows[0]["robust_accuracy"] == 0.5 and rows[0]["params"] == {"radius": radius}
    assert rows[0]["median_l2"] == pytest.approx(float(opt.median()), rel=0.01)
    assert rows[1]["median_linf"] > 0 and "median Linf" in evaluate.format_table(rows)
