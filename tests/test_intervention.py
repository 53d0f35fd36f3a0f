"""Oracle tests for nslib.intervention: restoring all / none, a hand-computed partial patch, a planted
model whose adversarial effect sits in one neuron, and a torchvision ResNet-18."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from nslib import intervention
from nslib.intervention import intervene, intervention_curve, intervention_study, matched_choice


def chain(seed=0, c_in=1, size=6, classes=4):
    """stem -> body -> head; head depends only on body's output."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(nn.Conv2d(c_in, 4, 3, padding=1), nn.Tanh()),
        body=nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 5, 3, padding=1), bn=nn.BatchNorm2d(5), relu=nn.ReLU())),
        head=nn.Sequential(nn.Flatten(), nn.Linear(5 * size * size, 8), nn.ReLU(), nn.Linear(8, classes)),
    ))


def pairs(n, c=1, size=6, seed=0, noise=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size, size, generator=g)
    return x, (x + noise * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)


def hook_counts(model):
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_restore_all_gives_clean_logits_and_none_gives_adversarial(batch_size):
    model = chain().train()
    x, x_adv = pairs(7)
    before = hook_counts(model)
    model.eval()
    with torch.no_grad():
        clean = torch.cat([model(x[i:i + batch_size]) for i in range(0, 7, batch_size)])
        adv = torch.cat([model(x_adv[i:i + batch_size]) for i in range(0, 7, batch_size)])
    model.train()
    out_all = intervene(model, x, x_adv, "body", torch.arange(5), batch_size=batch_size)
    out_mask = intervene(model, x, x_adv, "body", torch.ones(5, dtype=torch.bool), batch_size=batch_size)
    out_none = intervene(model, x, x_adv, "body", [], batch_size=batch_size)
    assert torch.equal(out_all, clean) and torch.equal(out_mask, clean)
    assert torch.equal(out_none, adv)
    assert not torch.equal(clean, adv)
    assert model.training and hook_counts(model) == before


def test_partial_restore_and_zero_match_hand_computation():
    model = chain(1).eval()
    x, x_adv = pairs(5, seed=1)
    idx = [0, 3]
    with torch.no_grad():
        h_clean, h_adv = model.body(model.stem(x)), model.body(model.stem(x_adv))
        restored, zeroed = h_adv.clone(), h_adv.clone()
        restored[:, idx] = h_clean[:, idx]
        zeroed[:, idx] = 0.0
        want_restore, want_zero = model.head(restored), model.head(zeroed)
    torch.testing.assert_close(intervene(model, x, x_adv, "body", idx), want_restore, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(intervene(model, x, x_adv, "body", torch.tensor(idx), mode="zero"), want_zero,
                               atol=1e-6, rtol=1e-6)
    # a fully connected layer: units
    with torch.no_grad():
        h = model.head[:3]
        a_clean, a_adv = h(model.body(model.stem(x))), h(model.body(model.stem(x_adv)))
        a_adv[:, [1, 6]] = a_clean[:, [1, 6]]
        want = model.head[3](a_adv)
    torch.testing.assert_close(intervene(model, x, x_adv, "head.2", [1, 6]), want, atol=1e-6, rtol=1e-6)


def test_in_place_relu_after_patched_layer_does_not_corrupt_restore():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 3, 3, padding=1), relu=nn.ReLU(inplace=True),
                                      flat=nn.Flatten(), fc=nn.Linear(3 * 36, 4))).eval()
    x, x_adv = pairs(4)
    with torch.no_grad():
        clean = model(x)
    torch.testing.assert_close(intervene(model, x, x_adv, "conv", [0, 1, 2]), clean, atol=1e-6, rtol=0)


def test_errors_name_the_problem_and_leave_no_hooks():
    model = chain()
    x, x_adv = pairs(3)
    before = hook_counts(model)
    with pytest.raises(ValueError, match=r"layer 'body' has 5 neurons"):
        intervene(model, x, x_adv, "body", [0, 5])
    with pytest.raises(ValueError, match="nearest valid names"):
        intervene(model, x, x_adv, "bodyy", [0])
    with pytest.raises(ValueError, match="mode"):
        intervene(model, x, x_adv, "body", [0], mode="mean")
    with pytest.raises(ValueError, match="x_adv must have values"):
        intervene(model, x, x_adv - 1, "body", [0])
    with pytest.raises(TypeError, match="integer indices"):
        intervene(model, x, x_adv, "body", [0.5])
    assert hook_counts(model) == before


def test_matched_choice_total_is_close():
    s = torch.tensor([5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    for seed in range(5):
        idx = matched_choice(s, 5.0, seed=seed)
        # the prefix totals straddle the target, so the nearer one is within half an element
        assert abs(float(s[idx].sum()) - 5.0) <= float(s.max()) / 2 and len(set(idx.tolist())) == idx.numel()
    idx = matched_choice(torch.full((30,), 0.5), 5.0, seed=3)
    assert idx.numel() == 10 and not torch.equal(idx, matched_choice(torch.full((30,), 0.5), 5.0, seed=4))
    assert matched_choice(s, 0.0, seed=0, at_least_one=False).numel() == 0


class Planted(nn.Module):
    """Identity layer ``h`` over D features; the class is whether feature 0 exceeds 0.5."""

    def __init__(self, d):
        super().__init__()
        self.flat = nn.Flatten()
        self.h = nn.Linear(d, d)
        self.head = nn.Linear(d, 2)
        with torch.no_grad():
            self.h.weight.copy_(torch.eye(d))
            self.h.bias.zero_()
            self.head.weight.zero_()
            self.head.weight[0, 0], self.head.weight[1, 0] = -1.0, 1.0
            self.head.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x):
        return self.head(self.h(self.flat(x)))


def test_curve_on_planted_model_top_restores_everything():
    d, n = 20, 40
    g = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(n, 1, 1, d, generator=g)
    y = (torch.rand(n, generator=g) > 0.5).long()
    x[:, 0, 0, 0] = torch.where(y == 1, 0.8, 0.2)
    x_adv = (x + 0.05 * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    x_adv[:, 0, 0, 0] = 1.0 - x[:, 0, 0, 0]  # flip the decisive feature: every prediction wrong
    model = Planted(d)
    curve = intervention_curve(model, x, x_adv, y, "h", ks=[0, 1, 0.5, 1.0], seeds=[0, 1, 2])
    assert curve["n_select"] + curve["n_eval"] == n and curve["n_select"] == 20 and curve["width"] == d
    assert curve["clean_accuracy"] == 1.0 and curve["adv_accuracy"] == 0.0
    assert int(curve["sensitivity"].argmax()) == 0
    rows = curve["rows"]
    assert len(rows) == 4 * (2 + 2 * 3)
    acc = {(r["selection"], r["k"], r["seed"]): r["accuracy"] for r in rows}
    assert acc[("top", 0, None)] == 0.0 and acc[("random", 0, 0)] == 0.0
    assert acc[("top", 1, None)] == 1.0  # the one sensitive neuron carries the whole attack
    assert acc[("bottom", 1, None)] == 0.0 and acc[("bottom", 10, None)] == 0.0
    assert acc[("top", 20, None)] == 1.0 and acc[("bottom", 20, None)] == 1.0 and acc[("random", 20, 1)] == 1.0
    matched = [r for r in rows if r["selection"] == "matched" and r["k"] == 1]
    top_total = next(r["sensitivity_total"] for r in rows if r["selection"] == "top" and r["k"] == 1)
    assert all(r["neurons"] >= 1 for r in matched)
    assert all(abs(r["sensitivity_total"] - top_total) <= float(curve["sensitivity"].max()) for r in matched)
    zero = intervention_curve(model, x, x_adv, y, "h", ks=[1], selections=("top",), mode="zero",
                              sensitivity=curve["sensitivity"])
    # zeroing feature 0 leaves logits (0.5, -0.5): every example is called class 0
    assert zero["n_eval"] == n and zero["rows"][0]["accuracy"] == int((y == 0).sum()) / n


def test_curve_restoring_all_gives_clean_accuracy():
    model = chain(2).train()
    before = hook_counts(model)
    x, x_adv = pairs(12, seed=2, noise=0.5)
    y = torch.arange(12) % 4
    curve = intervention_curve(model, x, x_adv, y, "body", ks=[1.0], selections=("top", "random"), seeds=[0])
    assert model.training and hook_counts(model) == before
    for r in curve["rows"]:
        assert r["neurons"] == 5 and r["accuracy"] == curve["clean_accuracy"]
    with pytest.raises(ValueError, match="split"):
        intervention_curve(model, x, x_adv, y, "body", ks=[1], split=1.0)
    with pytest.raises(ValueError, match="selections"):
        intervention_curve(model, x, x_adv, y, "body", ks=[1], selections=("best",))
    with pytest.raises(ValueError, match="width 5 of layer 'body'"):
        intervention_curve(model, x, x_adv, y, "body", ks=[6])


def test_torchvision_resnet18_block_restore():
    import torchvision  # a hard dependency of nslib
    from nslib.models import wrap
    torch.manual_seed(0)
    model = wrap(torchvision.models.resnet18(num_classes=10), (0.5,) * 3, (0.25,) * 3).eval()
    x, x_adv = pairs(2, c=3, size=32, noise=0.05)
    with torch.no_grad():
        clean, adv = model(x), model(x_adv)
    torch.testing.assert_close(intervene(model, x, x_adv, "layer2.1", torch.arange(128)), clean, atol=1e-5, rtol=0)
    torch.testing.assert_close(intervene(model, x, x_adv, "layer2.1.conv1", []), adv, atol=1e-5, rtol=0)
    partial = intervene(model, x, x_adv, "layer2.1.conv1", [0, 5, 7])
    assert partial.shape == (2, 10) and not torch.allclose(partial, adv)


class Iterating(nn.Module):
    """Reads its Sequential's children one by one instead of calling it: the patched pass cannot skip the
    Sequential's computation, so the study must run whole passes here."""

    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 36, 4))

    def forward(self, x):
        for m in self.seq:
            x = m(x)
        return self.head(x)


class Block(nn.Module):
    """A residual block (conv, in-place ReLU, conv, plus the input), as torchvision's ResNets hold them."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.relu, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(4), Block(4))
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def _model_cases():
    from nslib.models import build
    torch.manual_seed(0)
    small = build("smallcnn", "fmnist").eval()
    nn.init.normal_(small.classifier.fc3.weight, std=0.3)  # starts at zero: predictions would not move
    resnet = Residual().eval()
    inplace = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 3, 3, padding=1), relu=nn.ReLU(inplace=True),
                                        flat=nn.Flatten(), fc=nn.Linear(3 * 36, 4))).eval()
    return [(small, 1, 28, ["feature_extractor.relu2", "classifier.relu1"]),
            (chain(3), 1, 6, ["stem", "body.conv", "head.2"]),  # the model is the Sequential: no forward at all
            (resnet, 3, 8, ["blocks.0", "blocks.1.conv1"]),  # a block's conv: its parent is no Sequential
            (inplace, 1, 6, ["conv"]),  # ReLU(inplace=True) right after the patched layer
            (Iterating().eval(), 1, 6, ["seq.1"])]


@pytest.mark.parametrize("case", range(5))
def test_study_runs_only_the_rest_of_the_model_and_equals_whole_patched_passes(case):
    # Oracle: every configuration's accuracy from intervene(), which runs the whole model with the layer hooked
    # (what the study did for every configuration before it ran only what follows the layer).
    model, c, size, layers = _model_cases()[case]
    x, x_adv = pairs(40, c=c, size=size, seed=case, noise=0.4)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the model gets right on x: restoring moves accuracy
    ks, seeds = [0, 1, 0.5], [0, 1]
    study = intervention_study(model, x, x_adv, y, layers=layers, ks=ks, seeds=seeds, split_seed=5)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    ev = perm[20:]
    for mode, curves in study.items():
        for curve, layer in zip(curves, layers):
            assert curve["n_select"] == 20 and curve["n_eval"] == 20
            alone = intervention_curve(model, x, x_adv, y, layer, ks, seeds=seeds, mode=mode, split_seed=5)
            assert curve["rows"] == alone["rows"] and torch.equal(curve["sensitivity"], alone["sensitivity"])
            configs = intervention._configurations(curve["sensitivity"], layer, ks, intervention.SELECTIONS, seeds)
            for row, (_, _, _, idx) in zip(curve["rows"], configs):
                logits = intervene(model, x[ev], x_adv[ev], layer, idx, mode=mode)
                assert row["accuracy"] == int((logits.argmax(1) == y[ev]).sum()) / 20
    assert hook_counts(model) == hook_counts(_model_cases()[case][0]) and "forward" not in vars(model)


def test_curve_chooses_by_relative_sensitivity_when_asked():
    # relative=True read a tuple's first item once neuron_sensitivity returned a dict: a KeyError on every call
    from nslib.sensitivity import neuron_sensitivity
    model = chain(4).eval()
    x, x_adv = pairs(16, seed=4, noise=0.4)
    y = torch.arange(16) % 4
    curve = intervention_curve(model, x, x_adv, y, "body", ks=[1], selections=("top",), relative=True, split_seed=2)
    sel = torch.randperm(16, generator=torch.Generator().manual_seed(2))[:8]
    want = neuron_sensitivity(model, x[sel], x_adv[sel], layers=["body"], relative=True)["body"]
    assert torch.equal(curve["sensitivity"].nan_to_num(-1.0), want.nan_to_num(-1.0))
