"""Early stopping in the accuracy-only attacks (``early_stop=True``, what run_suite runs) and robust_accuracy's
skip_wrong: the answer is the full run's or stronger, example by example, and costs less.

Oracle: the full run itself. Each example's gradient is its own, so until an example is found adversarial its
iterates are the full run's; in float64 the batch size does not change them, so an example the early-stopping
attack leaves robust must be robust, with the very same iterate, under the full attack.
"""
import copy

import pytest
import torch

from nslib import attacks, evaluate

EPS = 0.2  # PGD-20 leaves about half of the clean-trained SmallCNN's first 100 test images robust at this radius

CASES = {
    "pgd": (attacks.pgd, dict(eps=EPS, steps=20, seed=0)),
    "pgd_restarts": (attacks.pgd, dict(eps=EPS, steps=10, seed=3, restarts=3)),
    "pgd_l2": (attacks.pgd, dict(eps=3.0, norm="l2", steps=10, seed=1)),
    "pgd_margin": (attacks.pgd, dict(eps=EPS, steps=10, seed=2, loss="margin")),
    "mim": (attacks.mim, dict(eps=0.25, steps=10)),
}


@pytest.fixture(scope="module")
def model64(trained_smallcnn):
    model, x, y = trained_smallcnn
    return copy.deepcopy(model).double().eval(), x[:100].double(), y[:100]


class _Counter:
    """Counts the examples the model's forward passes see."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += args[0].shape[0]


def _robust(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_early_stop_is_the_full_run_or_stronger_and_cheaper(model64, case):
    model, x, y = model64
    fn, kw = CASES[case]
    count = _Counter(model)
    full = fn(model, x, y, **kw)
    n_full, count.n = count.n, 0
    early = fn(model, x, y, early_stop=True, **kw)
    n_early = count.n
    count.handle.remove()
    r_full, r_early = _robust(model, full, y), _robust(model, early, y)
    assert 0.1 < float(r_full.float().mean()) < 0.9  # the attack breaks some examples, not all
    assert not bool((r_early & ~r_full).any())  # robust under early stopping => robust under the full run
    # ... with the full run's own last iterate (L2's step norm is a reduction: equal to rounding)
    assert torch.allclose(early[r_early], full[r_early], rtol=0, atol=1e-12)
    # the contracts: inside the ball and [0, 1]
    delta = (early - x).flatten(1)
    norm = delta.norm(dim=1) if kw.get("norm") == "l2" else delta.abs().amax(1)
    assert float(norm.max()) <= kw["eps"] + 1e-9 and float(early.min()) >= 0 and float(early.max()) <= 1
    # broken examples leave the batch: PGD (random start, large steps) breaks most early, saving at least a third
    # of the share broken; MIM starts at x with small steps and breaks late
    broken = 1 - float(r_early.float().mean())
    assert n_early < (1 - broken / 3 if fn is attacks.pgd else 1) * n_full, (n_early, n_full, broken)


def test_early_stop_returns_broken_examples_at_once(model64):
    """An example misclassified at the random start is returned there: with eps this large nearly every start is
    already adversarial, and the attack does almost no steps."""
    model, x, y = model64
    count = _Counter(model)
    attacks.pgd(model, x, y, eps=1.0, steps=20, seed=0, early_stop=True)
    count.handle.remove()
    assert count.n < 3 * len(x)  # the full run: 21 passes over x (20 steps + the check), here about one


def test_early_stop_with_kl_is_an_error(model64):
    model, x, y = model64
    with pytest.raises(ValueError, match="early_stop"):
        attacks.pgd(model, x, y, eps=0.1, loss="kl", early_stop=True)


@pytest.mark.slow
def test_robust_accuracy_attacks_only_what_is_right_clean(model64):
    """With skip_wrong the attack is called on the clean-correct examples only, and the outcomes equal attacking
    every example (MIM: deterministic; float64: batch-invariant); the suite turns early stopping on, says so, and
    its outcomes are the full attack's or stronger, example by example (the same random starts)."""
    model, x, y = model64
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.arange(len(y)) < 5, (pred + 1) % 10, y)  # five wrong clean by construction (the trained
    right = pred == y                                             # model's own errors depend on the thread count)
    seen = []

    def attack(m, xb, yb):
        seen.append(len(xb))
        return attacks.mim(m, xb, yb, eps=EPS, steps=5)

    res = evaluate.robust_accuracy(model, x, y, attack, batch_size=len(x), skip_wrong=True)
    every = evaluate.robust_accuracy(model, x, y, attack, batch_size=len(x))
    assert seen == [int(right.sum()), len(x)] and int(right.sum()) < len(x)  # a few wrong clean: skipped
    assert torch.equal(res.robust, every.robust) and 0 < res.correct_robust < res.correct_clean
    rows = evaluate.run_suite(model, x, y, [{"attack": "pgd", "eps": EPS, "steps": 10},
                                            {"attack": "pgd", "eps": EPS, "steps": 10, "early_stop": False}])
    assert rows[0]["early_stop"] and not rows[1]["early_stop"]
    assert all(a <= b for a, b in zip(rows[0]["outcomes"], rows[1]["outcomes"]))
    assert rows[0]["robust_accuracy"] <= rows[1]["robust_accuracy"]
