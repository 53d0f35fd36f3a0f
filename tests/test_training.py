"""Training: every method learns, the SNS penalty's gradient, lam=0 equals PGD-AT, exact resume,
parameter errors before any work, checkpoint contents, collapse detection, and SNS lowering the top-k
sensitivity. Tiny networks on the real MNIST-5k subset keep the file fast on two CPU cores."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nslib import attacks, data, methods, models, training
from nslib.sensitivity import neuron_sensitivity, top_k

EPS = 0.1  # Linf radius of every adversarial run here (MNIST pixels in [0, 1])


class Tiny(nn.Module):
    """conv-bn-relu (8 ch, stride 2) -> conv-relu (16 ch, stride 2) -> fc-relu (32) -> dropout -> fc (10).

    Separate ReLU modules, so each hooked layer's output is exactly zero where a neuron is off; batch
    norm and dropout exercise the train/eval and random-state paths of training.
    """

    def __init__(self, bn: bool = True, drop: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, stride=2)  # 28 -> 13
        self.bn1 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)  # 13 -> 6
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 6 * 6, 32)
        self.relu3 = nn.ReLU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x - 0.13)))))
        return self.fc2(self.drop(self.relu3(self.fc1(self.flatten(x)))))


LAYERS = ["relu1", "relu2", "relu3"]


def tiny(seed: int = 0, **kw) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(**kw)


def fast(**kw) -> dict:
    """Small, fast training arguments on the real MNIST-5k subset."""
    args = dict(epochs=2, batch_size=32, lr=0.1, n_train=400, val_size=100, val_n_adv=50, eps=EPS,
                attack_steps=2, val_attack_steps=2, progress=False, device="cpu", layers=LAYERS)
    args.update(kw)
    return args


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The networks here are tiny: one intra-op thread is faster than two, and far faster on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def batch():
    """64 real MNIST-5k training images, 6 or 7 of each class."""
    x, y = data.load("mnist5k", "train")
    _, idx = data.stratified_split(y, 64, seed=3)
    return x[idx], y[idx]


def state_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


# ----------------------------------------------------------------------------------------------
# every method learns

def method_loss(model, x, y, method, seed=0, eps=EPS):
    """The method's own loss on (x, y), attack regenerated against ``model`` (eval mode: no dropout)."""
    model.eval()
    x_adv = None
    if method != "standard":
        x_adv = attacks.pgd(model, x, y, eps=eps, steps=5, loss="kl" if method == "trades" else "ce", seed=seed)
    with torch.no_grad():
        loss, _, _ = training.training_loss(model, x, y, x_adv, method=method, layers=LAYERS, lam=0.01)
    return float(loss)


# At eps 0.15 a clean-trained network is far less robust than an adversarially trained one after
# three epochs; at 0.1 the two overlap at this budget. alpha 2.5 * eps / steps: the dataset's default
# step (0.01, meant for 40 steps) would let the 2-step training attack move only 0.02.
LEARN_EPS = 0.15
LEARN = dict(epochs=3, n_train=1000, lam=0.01, eps=LEARN_EPS, alpha=2.5 * LEARN_EPS / 2, val_n_adv=100)


def val_robust(model, eps=LEARN_EPS, n_val=100, n_adv=100, seed=0):
    """Robust accuracy on train()'s validation images, recomputed: PGD with the validation attack's
    settings (val_attack_steps=2, seed 0), counting examples classified correctly clean and attacked."""
    x, y = data.load("mnist5k", "train")
    _, hold = data.stratified_split(y, n_val, seed=seed)  # the hold-out train() makes
    x, y = x[hold][:n_adv], y[hold][:n_adv]
    model.eval()
    x_adv = attacks.pgd(model, x, y, eps=eps, steps=2, seed=0)
    with torch.no_grad():
        return int(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).sum()) / len(y)


def test_validation_split_and_pgd_recompute_what_train_recorded():
    """A model's own validation images and validation PGD accuracy, read again after training (the reproduction's
    seed-spread rule does so on all of them), give exactly what train() recorded for its last epoch; the split holds
    out val_size images, disjoint from the kept ones, the same classes in each (stratified)."""
    model = tiny()
    result = training.train(model, "mnist5k", method="pgd_at", seed=5, **fast(epochs=1, val_size=80, val_n_adv=80))
    x, y = data.load("mnist5k", "train")
    keep, hold = training.validation_split(y, 80, seed=5)
    assert len(hold) == 80 and len(keep) + len(hold) == len(y)
    assert not set(keep.tolist()) & set(hold.tolist())
    assert torch.bincount(y[hold], minlength=10).tolist() == [8] * 10
    acc = training.validation_pgd(model, x[hold], y[hold], EPS, 2)
    assert acc == result["history"][-1]["val_pgd"]
    assert acc == val_robust(model, eps=EPS, n_val=80, n_adv=80, seed=5)  # recomputed independently
    with pytest.raises(ValueError, match="val_size must be smaller than the 4000 training images, got 4000"):
        training.validation_split(y, len(y), seed=0)


@pytest.fixture(scope="module")
def vanilla_val_robust():
    model = tiny()
    training.train(model, "mnist5k", method="standard", **fast(**LEARN))
    return val_robust(model)


@pytest.mark.parametrize("method", methods.METHODS)
def test_each_method_runs_and_reduces_its_loss(method, batch, vanilla_val_robust):
    x, y = batch
    model = tiny()
    before = method_loss(model, x, y, method, eps=LEARN_EPS)
    result = training.train(model, "mnist5k", method=method, **fast(**LEARN))
    after = method_loss(model, x, y, method, eps=LEARN_EPS)
    hist = result["history"]
    assert result["status"] == "done" and len(hist) == 3
    assert after < 0.8 * before, (before, after)  # measured: -47% (TRADES) to -88% (standard)
    assert hist[-1]["train_loss"] < 0.75 * hist[0]["train_loss"]  # measured: -36% (SNS) to -70%
    assert hist[-1]["val_clean"] > 0.6  # chance is 0.1; measured 0.71 (SNS) to 0.83
    if method != "standard":
        assert hist[-1]["eps"] == LEARN_EPS
        # the recorded number is what it claims, and training against the attack bought robustness:
        # measured 0.53 (SNS) to 0.61 (TRADES), the clean-trained network 0.37
        assert hist[-1]["val_pgd"] == pytest.approx(val_robust(model), abs=1e-9)
        assert hist[-1]["val_pgd"] > vanilla_val_robust + 0.1, (hist[-1]["val_pgd"], vanilla_val_robust)
    if method == "sns":
        assert hist[-1]["penalty"] > 0 and 0.0 <= hist[-1]["dead_fraction"] < 0.5


def test_attack_runs_in_eval_mode_and_the_update_in_train_mode():
    model = tiny()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].requires_grad)))
    training.train(model, "mnist5k", method="pgd_at", **fast(epochs=1, n_train=64, val_n_adv=0))
    attack = [training_mode for training_mode, grad in seen if grad]  # passes differentiated w.r.t. the input
    update = [training_mode for training_mode, grad in seen if not grad and training_mode]
    assert attack and not any(attack)
    assert len(update) == 64 // 32  # one adversarial pass per batch, in train mode
    assert not model.training  # handed back in eval mode


def test_eps_warmup_and_the_default_validation_split():
    res = training.train(tiny(), "mnist5k", method="pgd_at", eps_warmup_epochs=2,
                         **fast(epochs=3, n_train=64, val_size=None, val_n_adv=0))
    assert [h["eps"] for h in res["history"]] == pytest.approx([EPS / 2, EPS, EPS])
    assert res["params"]["val_size"] == training.VAL_SIZES["mnist5k"] == 500
    assert res["params"]["n_train"] == 64


# ----------------------------------------------------------------------------------------------
# the penalty

class Smooth(nn.Module):
    """float64 conv (signed output) -> tanh -> fc: a smooth network for finite differences."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)  # 7 -> 3
        self.act = nn.Tanh()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(4 * 3 * 3, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(self.flatten(self.act(self.conv(x))))))


@pytest.mark.parametrize("k,relative", [(2, False), (0.5, False), (1, True), (1.0, True)])
def test_sns_penalty_gradient_matches_finite_differences(k, relative):
    torch.manual_seed(1)
    model = Smooth().double()
    x = torch.rand(5, 1, 7, 7, dtype=torch.float64) * 0.8 + 0.1
    x_adv = (x + 0.1 * (torch.rand_like(x) * 2 - 1)).clamp(0, 1)
    layers = ["conv", "fc1"]
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    class Penalty(nn.Module):  # lets functional_call substitute the parameters
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, xa, xb):
            return training.sns_penalty(self.net, xa, xb, layers=layers, k=k, relative=relative)

    penalty = Penalty()

    def f(xa, xb, *ps):
        return torch.func.functional_call(penalty, {"net." + n: p for n, p in zip(names, ps)}, (xa, xb))

    # no ties among the top-k: the selection is fixed under the finite-difference steps
    from nslib.sensitivity import capture
    with torch.no_grad(), capture(model, layers) as acts:
        model(x)
        clean = {n: acts[n] for n in layers}
        model(x_adv)
        for n in layers:
            a, b = clean[n], acts[n]
            s = (a - b).abs().reshape(5, a.shape[1], -1).mean((0, 2))
            gaps = s.sort().values.diff()
            assert gaps.min() > 1e-4 and (a - b).abs().min() > 1e-8
    xa, xb = x.clone().requires_grad_(True), x_adv.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (xa, xb) + params)
    assert float(f(x, x_adv, *params).detach()) > 0


def test_sns_penalty_is_the_top_k_mean_of_the_batch_sensitivity(batch):
    """Against an independent formula: per layer, the mean of the k largest sigma (from neuron_sensitivity)."""
    x, y = batch
    model = tiny().eval()
    x_adv = attacks.pgd(model, x, y, eps=EPS, steps=3, seed=0)
    sigma = neuron_sensitivity(model, x, x_adv, layers=LAYERS, batch_size=len(x))
    for k in (1, 3, 0.25):
        want = sum(s[top_k(s, k)].mean() for s in sigma.values())
        got = training.sns_penalty(model, x, x_adv, layers=LAYERS, k=k)
        assert math.isclose(float(got.detach()), float(want), rel_tol=1e-5)
    # the relative variant cannot be lowered by rescaling a layer's activations
    model2 = tiny().eval()
    with torch.no_grad():  # relu1 scaled by 7, relu2 by 7 * 3 (ReLU is positively homogeneous)
        model2.bn1.weight.mul_(7), model2.bn1.bias.mul_(7), model2.conv2.weight.mul_(3), model2.conv2.bias.mul_(21)
    with torch.no_grad():
        rel = training.sns_penalty(model, x, x_adv, layers=LAYERS[:2], relative=True)
        rel2 = training.sns_penalty(model2, x, x_adv, layers=LAYERS[:2], relative=True)
        ab = training.sns_penalty(model, x, x_adv, layers=LAYERS[:2])
        ab2 = training.sns_penalty(model2, x, x_adv, layers=LAYERS[:2])
    assert math.isclose(float(rel), float(rel2), rel_tol=1e-4)
    assert float(ab2) > 5 * float(ab)


def test_lam_zero_sns_loss_equals_pgd_at_loss(batch):
    x, y = batch
    model = tiny()  # batch norm and dropout, in train mode
    x_adv = attacks.pgd(model, x, y, eps=EPS, steps=3, seed=0)
    model.train()
    out = {}
    for method, kw in (("pgd_at", {}), ("sns", {"lam": 0.0, "base": "pgd_at"})):
        model.zero_grad()
        torch.manual_seed(7)  # same dropout draw
        loss, _, pen = training.training_loss(model, x, y, x_adv, method=method, layers=LAYERS, **kw)
        loss.backward()
        out[method] = (loss.detach(), [p.grad.clone() for p in model.parameters()], pen)
    assert torch.equal(out["sns"][0], out["pgd_at"][0])
    assert all(torch.equal(a, b) for a, b in zip(out["sns"][1], out["pgd_at"][1]))
    assert out["sns"][2] > 0  # the penalty is computed, only weighted by 0
    with torch.no_grad():  # and it is plain CE on the adversarial examples
        torch.manual_seed(7)
        assert torch.allclose(out["pgd_at"][0], F.cross_entropy(model(x_adv), y))


def test_trades_loss_matches_the_reference(batch):
    """TRADES's outer loss against yaodongyu/TRADES trades.py (trades_loss, after its inner loop), restated
    unmodified: CE on the clean logits + beta * summed KL / batch_size, three passes in train mode. Batch
    norm in train mode (each pass its own batch statistics); no dropout, since the reference draws a new
    mask in each pass and nslib shares one between the clean and the adversarial pass (methods.py)."""
    x, y = batch
    beta = 6.0  # the reference's CIFAR-10 and MNIST setting
    model = tiny(drop=0.0)
    x_adv = attacks.pgd(model, x, None, eps=EPS, steps=3, loss="kl", seed=0)
    model.train()
    grads = []
    for ours in (True, False):
        model.zero_grad()
        if ours:
            loss, logits, pen = training.training_loss(model, x, y, x_adv, method="trades", beta=beta)
            assert pen is None and torch.equal(logits, model(x))  # the clean logits (batch norm: batch stats)
        else:
            x_natural, batch_size = x, len(x)
            criterion_kl = nn.KLDivLoss(reduction="sum")  # size_average=False in the reference
            logits = model(x_natural)
            loss_natural = F.cross_entropy(logits, y)
            loss_robust = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                       F.softmax(model(x_natural), dim=1)) / batch_size
            loss = loss_natural + beta * loss_robust
            assert float(loss_robust.detach()) > 1e-3  # the KL term is there: the attack moved the prediction
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (ours, g_ours), (ref, g_ref) = grads
    assert torch.allclose(ours, ref, rtol=1e-6, atol=0), (float(ours), float(ref))
    g_ours, g_ref = torch.cat([g.flatten() for g in g_ours]), torch.cat([g.flatten() for g in g_ref])
    # fp32 through batch norm: each is about 4e-6 (relative) from the float64 gradient, and 4e-6 apart
    assert float((g_ours - g_ref).norm()) <= 2e-5 * float(g_ref.norm())


def test_trades_gradient_stays_finite_where_the_clean_softmax_underflows():
    """A confident clean prediction (a logit gap past fp32's exp range) makes the reference's softmax target exactly
    0 for the other classes, and its KL's gradient through the target NaN (0 * log 0); nslib's log-target KL has the
    same value and a finite gradient (a TRADES fine-tune of a vanilla model diverged on this)."""
    from nslib import methods
    clean = torch.tensor([[120.0, 0.0, -10.0], [2.0, 1.0, 0.0]], requires_grad=True)
    adv = torch.tensor([[100.0, 1.0, 0.0], [1.0, 2.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])
    cfg = training.TrainConfig(method="trades")
    loss, _ = methods._trades(clean, adv, y, cfg)
    loss.backward()
    assert torch.isfinite(clean.grad).all() and torch.isfinite(adv.grad).all()
    ref_clean = clean.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_clean, y) + 6.0 * F.kl_div(F.log_softmax(adv.detach(), 1), F.softmax(ref_clean, 1),
                                                         reduction="batchmean")
    ref.backward()
    assert torch.isnan(ref_clean.grad).any()  # the reference's form: NaN
    assert torch.allclose(loss.detach(), ref.detach(), rtol=1e-6)  # the same value


def test_lam_zero_sns_run_is_the_pgd_at_run():
    """Without batch norm, SNS at lam=0 draws the same random numbers and takes the same steps as PGD-AT."""
    states = {}
    for method in ("pgd_at", "sns"):
        model = tiny(bn=False)
        training.train(model, "mnist5k", method=method, **fast(epochs=1, n_train=200, lam=0.0, val_n_adv=0))
        states[method] = state_of(model)
    assert_same_state(states["sns"], states["pgd_at"])


def test_top_k_sensitivity_of_sns_is_lower_than_lam_zero():
    x_test, y_test = data.load("mnist5k", "test")
    _, idx = data.stratified_split(y_test, 200, seed=0)
    x_test, y_test = x_test[idx], y_test[idx]
    top = {}
    for lam in (0.0, 3.0):  # this tiny network needs a large lam to move the penalty; 10 collapses it
        model = tiny()
        res = training.train(model, "mnist5k", method="sns", **fast(epochs=3, n_train=600, lam=lam, k=0.25))
        assert res["status"] == "done" and res["history"][-1]["val_clean"] > 0.5
        x_adv = attacks.pgd(model, x_test, y_test, eps=EPS, steps=10, seed=1)  # held-out pairs, white-box
        sigma = neuron_sensitivity(model, x_test, x_adv, layers=LAYERS)
        top[lam] = sum(float(s[top_k(s, 0.25)].mean()) for s in sigma.values())
    assert top[3.0] < 0.8 * top[0.0], top  # measured: 0.38 vs 0.62


class CentreOnly(nn.Module):
    """Class 1 on the image that is 0.5 everywhere, class 0 on any other; its input gradient is zero.

    The all-0.5 image labelled 0 is misclassified clean and classified correctly after PGD (the
    random start moves it off the centre and the zero gradient never brings it back): adversarially
    correct, yet not robust.
    """

    def __init__(self):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(()))  # a parameter for SGD; a shared shift has no gradient

    def forward(self, x):
        centre = ((x - 0.5).abs().flatten(1).amax(1) == 0).float()  # [N]
        return 10 * torch.stack([1 - centre, centre], 1) + 0 * x.flatten(1).sum(1, keepdim=True) + self.shift


def test_validation_robust_accuracy_counts_clean_and_adversarial_correct_as_evaluate_does():
    torch.manual_seed(0)
    x = torch.rand(60, 1, 8, 8) * 0.4  # off the centre: class 0
    x[:20] = 0.5  # the centre: predicted 1
    y = torch.zeros(60, dtype=torch.long)
    y[40:] = 1  # off-centre images labelled 1: wrong clean and attacked
    res = training.train(CentreOnly(), (x, y), method="pgd_at", eps=0.1, epochs=1, batch_size=20, val_size=30,
                         val_n_adv=30, attack_steps=1, val_attack_steps=3, progress=False, device="cpu")
    _, hold = data.stratified_split(y, 30, seed=0)  # the validation images
    centre = (hold < 20).sum().item()
    off_centre_0 = ((hold >= 20) & (hold < 40)).sum().item()
    assert centre > 0 and off_centre_0 > 0
    # clean and attacked correct: only the off-centre class-0 images; attacked correct alone would add
    # the centre images
    record = res["history"][-1]
    assert record["val_pgd"] == pytest.approx(off_centre_0 / 30)
    assert record["val_clean"] == pytest.approx(off_centre_0 / 30)
    from functools import partial

    from nslib.evaluate import robust_accuracy
    ref = robust_accuracy(CentreOnly(), x[hold], y[hold], partial(attacks.pgd, eps=0.1, steps=3))
    assert ref.robust_accuracy == pytest.approx(record["val_pgd"])
    assert res["best"]["metric"] == record["val_pgd"]


# ----------------------------------------------------------------------------------------------
# resume, checkpoints, collapse

class Stop(Exception):
    pass


def stop_after(n):
    def callback(epoch, record):
        if epoch == n:
            raise Stop
    return callback


@pytest.mark.parametrize("method", ["standard", "pgd_at"])
def test_interrupted_and_resumed_run_ends_with_the_uninterrupted_weights(method, tmp_path):
    args = fast(method=method, epochs=3, n_train=200, layers=None)
    straight = tiny()
    training.train(straight, "mnist5k", out_dir=tmp_path / "straight", **args)

    with pytest.raises(Stop):
        training.train(tiny(), "mnist5k", out_dir=tmp_path / "resumed", callback=stop_after(1), **args)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 1
    resumed = tiny(seed=123)  # other initial weights: everything comes from the checkpoint
    torch.manual_seed(99)  # and another global random state
    res = training.train(resumed, "mnist5k", out_dir=tmp_path / "resumed", **args)
    assert res["status"] == "done" and [h["epoch"] for h in res["history"]] == [1, 2, 3]
    assert_same_state(state_of(resumed), state_of(straight))
    # a finished run is not trained again; other parameters in the same folder are refused
    again = training.train(tiny(), "mnist5k", out_dir=tmp_path / "resumed", **args)
    assert again["status"] == "done" and len(again["history"]) == 3
    with pytest.raises(ValueError, match="lr: stored 0.1, asked 0.2"):
        training.train(tiny(), "mnist5k", out_dir=tmp_path / "resumed", **{**args, "lr": 0.2})


def test_checkpoints_carry_provenance_and_load_checkpoint_rebuilds_the_model(tmp_path):
    torch.manual_seed(0)
    model = models.build("smallcnn", "mnist5k")
    res = training.train(model, "mnist5k", method="pgd_at", epochs=1, batch_size=32, n_train=64, val_size=50,
                         val_n_adv=20, attack_steps=1, val_attack_steps=1, seed=5, out_dir=tmp_path,
                         progress=False, device="cpu")
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(tmp_path / name, weights_only=False)
        assert ckpt["seed"] == 5 and ckpt["params"]["seed"] == 5
        assert ckpt["params"]["method"] == "pgd_at" and ckpt["params"]["eps"] == 0.3  # mnist5k default
        assert ckpt["params"]["attack_steps"] == 1 and ckpt["params"]["dataset"] == "mnist5k"
        prov = ckpt["provenance"]
        assert prov["nslib_version"] and prov["torch_version"] == torch.__version__
        assert prov["device"] == "cpu" and prov["params"]["seed"] == 5
    hist = training.read_history(tmp_path)
    assert hist["status"] == "done" and hist["provenance"]["params"]["method"] == "pgd_at"
    assert len(hist["history"]) == 1 and hist["best"]["epoch"] == 1

    loaded, info = training.load_checkpoint(tmp_path / "best.pt")
    assert isinstance(loaded, models.SmallCNN) and not loaded.training
    assert info["params"]["method"] == "pgd_at" and info["seed"] == 5 and info["status"] == "done"
    assert info["provenance"]["device"] == "cpu" and info["epoch"] == 1
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))
    assert res["best"]["metric"] == info["metric"]["val_pgd"]
    # a model nslib did not build cannot be rebuilt: say so, and accept it passed in
    plain = tiny()
    training.train(plain, "mnist5k", out_dir=tmp_path / "plain", **fast(epochs=1, n_train=50, layers=None))
    with pytest.raises(ValueError, match="pass model="):
        training.load_checkpoint(tmp_path / "plain" / "last.pt")
    again, _ = training.load_checkpoint(tmp_path / "plain" / "last.pt", model=tiny(seed=4))
    assert_same_state(state_of(again), state_of(plain))


def test_large_lam_collapses_and_is_recorded_as_such(tmp_path):
    model = tiny(drop=0.0)
    res = training.train(model, "mnist5k", method="sns", out_dir=tmp_path,
                         **fast(epochs=4, n_train=400, lam=100.0, lr=0.1, val_n_adv=0))
    assert res["status"] == "collapsed"
    assert len(res["history"]) < 4  # stopped early
    last = res["history"][-1]
    assert last["val_clean"] < 0.15 or last["dead_fraction"] > 0.5
    assert res["best"] is None and not (tmp_path / "best.pt").exists()
    assert training.read_history(tmp_path)["status"] == "collapsed"
    assert torch.load(tmp_path / "last.pt", weights_only=False)["status"] == "collapsed"


# ----------------------------------------------------------------------------------------------
# errors before any work

@pytest.fixture
def no_data(monkeypatch):
    """Loading data is work: the scalar checks must fail before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the parameters were checked")
    monkeypatch.setattr(data, "load", refuse)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "madry"}, "method must be one of"),
    ({"method": "sns", "k": 0}, "k must select at least one neuron"),
    ({"method": "sns", "k": 1.5}, "k as a fraction"),
    ({"method": "sns", "k": "10%"}, "k must be an int"),
    ({"method": "sns", "lam": -0.1}, "lam must be"),
    ({"method": "sns", "base": "sns"}, "base must be one of"),
    ({"method": "trades", "beta": -1}, "beta must be"),
    ({"method": "pgd_at", "eps": -0.1}, "eps must be"),
    ({"method": "pgd_at", "attack_steps": 0}, "attack_steps must be"),
    ({"epochs": 0}, "epochs must be"),
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"data": "imagenet"}, "data must be one of"),
])
def test_bad_parameters_fail_before_loading_data(kwargs, match, no_data, tmp_path):
    kwargs = {"data": "fmnist", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        training.train(tiny(), kwargs.pop("data"), out_dir=tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs,match", [
    ({"layers": ["relu9"]}, r"unknown layer 'relu9'.*relu1"),
    ({"layers": ["relu1", "relu1"]}, "must not repeat"),
    ({"layers": LAYERS, "k": 9}, r"k must be between 0 and the width 8 of layer 'relu1', got 9"),
])
def test_bad_layers_and_k_fail_before_training(kwargs, match, batch, tmp_path):
    model = tiny()
    before = state_of(model)
    with pytest.raises(ValueError, match=match):
        training.train(model, batch, method="sns", eps=EPS, out_dir=tmp_path / "run", progress=False, **kwargs)
    assert not (tmp_path / "run").exists()
    assert_same_state(state_of(model), before)


def test_images_outside_unit_range_are_rejected(batch):
    x, y = batch
    with pytest.raises(ValueError, match=r"data x must have values in \[0, 1\]"):
        training.train(tiny(), (x * 2 - 0.5, y), method="pgd_at", eps=EPS, progress=False)
    with pytest.raises(ValueError, match="eps must be given"):
        training.train(tiny(), (x, y), method="pgd_at", progress=False)
    with pytest.raises(TypeError, match="data must be a dataset name"):
        training.train(tiny(), x, progress=False)


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_outside_the_models_classes_fail_before_training(bad, batch, tmp_path):
    x, y = batch
    y = y.clone()
    y[5] = bad
    model = tiny()
    before = state_of(model)
    lo, hi = min(bad, 0), max(bad, 9)
    with pytest.raises(ValueError, match=rf"data y must hold class indices in \[0, 9\] \(the model returns 10 "
                                         rf"logits\), got values from {lo} to {hi}"):
        training.train(model, (x, y), method="pgd_at", eps=EPS, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    assert_same_state(state_of(model), before)
    # the classes come from the model: a 5-way head cannot learn the dataset's 10 classes
    five = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 5))
    with pytest.raises(ValueError, match=r"in \[0, 4\] \(the model returns 5 logits\), got values from 0 to 9"):
        training.train(five, "mnist5k", progress=False)


class Aux(Tiny):
    """Returns logits with an auxiliary output, as some research code does."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict = as_dict

    def forward(self, x):
        logits = super().forward(x)
        return {"logits": logits, "features": x.flatten(1)} if self.as_dict else (logits, x.flatten(1))


@pytest.mark.parametrize("as_dict,match", [
    (False, r"model must return a logits tensor \[N, classes\], got a tuple of 2 items "
            r"\(Tensor \[2, 10\], Tensor \[2, 784\]\)"),
    (True, r"model must return a logits tensor \[N, classes\], got a dict with keys 'logits' "
           r"\(Tensor \[2, 10\]\), 'features' \(Tensor \[2, 784\]\)"),
])
def test_a_model_returning_a_tuple_or_dict_fails_before_training(as_dict, match, batch, tmp_path):
    torch.manual_seed(0)
    model = Aux(as_dict)
    before = state_of(model)
    for method in ("standard", "sns"):
        with pytest.raises(TypeError, match=match):
            training.train(model, batch, method=method, eps=EPS, layers=LAYERS, out_dir=tmp_path / "run",
                           progress=False)
    assert not (tmp_path / "run").exists()
    assert_same_state(state_of(model), before)
