"""nslib compare: the paired comparison of two evaluations against a hand computation, the large-sample paired Wald
interval, simulations with a known difference, and the files and messages of the command."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import nslib
from nslib import verdicts
from nslib.cli import compare as comparison


# ----------------------------------------------------------------------------------------------------
# the interval

def _wilson(k, n, z):
    """The Wilson score interval, written out here independently of nslib.evaluate.wilson_interval."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_newcombe_paired_by_hand():
    # 20 images: both robust 10, only A 5, only B 1, neither 4: p_a 0.75, p_b 0.55, difference 0.20
    a = [1] * 10 + [1] * 5 + [0] * 1 + [0] * 4
    b = [1] * 10 + [0] * 5 + [1] * 1 + [0] * 4
    z = stats.norm.ppf(0.975)
    l1, u1 = _wilson(15, 20, z)  # 0.7097 -+ 0.1784: 0.5313, 0.8882
    l2, u2 = _wilson(11, 20, z)  # 0.5420 -+ 0.1999: 0.3421, 0.7418
    phi = (10 * 4 - 5 * 1) / math.sqrt(15 * 5 * 11 * 9)  # 35 / sqrt(7425) = 0.4062
    low = 0.2 - math.sqrt((0.75 - l1) ** 2 - 2 * phi * (0.75 - l1) * (u2 - 0.55) + (u2 - 0.55) ** 2)
    high = 0.2 + math.sqrt((u1 - 0.75) ** 2 - 2 * phi * (u1 - 0.75) * (0.55 - l2) + (0.55 - l2) ** 2)
    # by hand: delta^2 = 0.2187^2 - 2 (0.4062)(0.2187)(0.1918) + 0.1918^2 = 0.05054, delta 0.2248;
    # eps^2 = 0.1382^2 - 2 (0.4062)(0.1382)(0.2079) + 0.2079^2 = 0.03898, eps 0.1974
    assert (round(low, 4), round(high, 4)) == (-0.0248, 0.3974)
    assert comparison.newcombe_paired(a, b) == pytest.approx((low, high), abs=1e-12)
    # identical outcomes: a point at zero only in the limit; the interval holds zero and is symmetric-ish
    lo, hi = comparison.newcombe_paired(a, a)
    assert lo < 0 < hi
    assert comparison.newcombe_paired([1] * 30, [0] * 30)[0] > 0.8  # every image differs: far above zero


def test_newcombe_paired_approaches_the_paired_wald_interval_for_many_images():
    rng = np.random.default_rng(0)
    n = 200_000
    u = rng.random(n)
    a = (u < 0.62).astype(int)
    b = ((u < 0.55) | (rng.random(n) < 0.05)).astype(int)
    d = a.mean() - b.mean()
    only_a, only_b = np.sum((a == 1) & (b == 0)), np.sum((a == 0) & (b == 1))
    se = math.sqrt((only_a + only_b) / n ** 2 - (only_a - only_b) ** 2 / n ** 3)  # McNemar's paired Wald
    lo, hi = comparison.newcombe_paired(a, b)
    assert lo == pytest.approx(d - 1.959964 * se, abs=2e-4) and hi == pytest.approx(d + 1.959964 * se, abs=2e-4)


def _paired(rng, n, p_b, gain, rho_latent=0.9):
    """n images, each with a latent difficulty shared by A and B (Gaussian copula, correlation rho_latent), B
    robust with probability p_b and A with p_b + gain: paired outcomes whose true difference is ``gain``."""
    z = rng.multivariate_normal([0, 0], [[1, rho_latent], [rho_latent, 1]], size=n)
    return (z[:, 0] < stats.norm.ppf(p_b + gain)).astype(int), (z[:, 1] < stats.norm.ppf(p_b)).astype(int)


def test_simulation_coverage_and_null_rate_of_one_evaluation_a_side():
    rng = np.random.default_rng(1)
    for gain in (0.0, 0.02, 0.05):
        covered, holds = 0, 0
        runs = 1000
        for _ in range(runs):
            a, b = _paired(rng, 1000, 0.6, gain)
            lo, hi = comparison.newcombe_paired(a, b)
            covered += lo <= gain <= hi
            holds += verdicts.judge(lo, hi, 0.01)[0] == "holds"
        assert 0.93 <= covered / runs <= 0.97, (gain, covered / runs)  # measured 0.944, 0.955, 0.945
        if gain == 0:
            assert holds / runs <= 0.05  # measured 0.029 (a one-sided 2.5% nominal)
        if gain == 0.05:
            assert holds / runs >= 0.9  # measured 0.987: a 5-point gain on 1,000 images is found


# ----------------------------------------------------------------------------------------------------
# evaluation folders as nslib evaluate writes them

def _evaluation(folder, outcomes: dict, *, index=None, labels=None, data="fmnist", eps=0.1):
    """A folder shaped as nslib evaluate's output: results.json (params, rows) and outcomes.csv."""
    folder.mkdir(parents=True)
    attacks = [k for k in outcomes if k != "clean"]
    n = len(outcomes["clean"])
    index = list(range(n)) if index is None else index
    labels = [i % 10 for i in index] if labels is None else labels
    rows = [{"attack": k, "accuracy": sum(v) / n, "n": n} for k, v in outcomes.items()]
    (folder / "results.json").write_text(json.dumps({"params": {"data": data, "eps": eps, "attacks": attacks,
                                                                "n": n}, "rows": rows}))
    head = ["index", "label", *outcomes]
    body = [",".join(map(str, [index[i], labels[i], *(outcomes[k][i] for k in outcomes)])) for i in range(n)]
    (folder / "outcomes.csv").write_text("\n".join([",".join(head), *body]) + "\n")
    return folder


def test_compare_one_evaluation_a_side_matches_images_by_index(tmp_path):
    rng = np.random.default_rng(2)
    a, b = _paired(rng, 300, 0.5, 0.2)
    clean = [1] * 300
    ea = _evaluation(tmp_path / "a", {"clean": clean, "PGD-20": a.tolist(), "FGSM": a.tolist()})
    # B evaluated the same images in another order, plus 20 more, and no FGSM
    order = rng.permutation(300).tolist()
    eb = _evaluation(tmp_path / "b", {"clean": [1] * 320, "PGD-20": [int(b[i]) for i in order] + [0] * 20},
                     index=order + list(range(300, 320)))
    r = nslib.compare(str(ea), str(eb), margin=0.01, names=("AT", "TRADES"))
    assert [c["attack"] for c in r["attacks"]] == ["clean", "PGD-20"] and r["n_images"] == 300
    assert r["dropped"] == {"AT": 0, "TRADES": 20}
    pgd = r["attacks"][1]
    assert pgd["effect"] == pytest.approx(a.mean() - b.mean())
    assert pgd["ci"] == pytest.approx(comparison.newcombe_paired(a, b))
    assert pgd["verdict"] == "holds" and pgd["a"]["accuracy"] == pytest.approx(a.mean())
    clean_c = r["attacks"][0]  # every image clean on both: no difference, but 300 images cannot bound it below 1 point
    assert clean_c["effect"] == 0 and clean_c["verdict"] == "inconclusive" and clean_c["ci"][1] > 0.01
    text = comparison.markdown(r)
    assert "| PGD-20 |" in text and "**holds**" in text and "Newcombe" in text


def test_compare_several_seeds_is_the_reproductions_rule(tmp_path):
    rng = np.random.default_rng(3)
    pa, pb = [], []
    for s in range(3):
        a, b = _paired(rng, 200, 0.6, 0.03)
        pa.append(_evaluation(tmp_path / f"a{s}", {"clean": [1] * 200, "PGD-20": a.tolist()}))
        pb.append(_evaluation(tmp_path / f"b{s}", {"clean": [1] * 200, "PGD-20": b.tolist()}))
    r = comparison.compare(pa, pb, margin=0.01)
    got = r["attacks"][1]
    ref = verdicts.compare([np.loadtxt(p / "outcomes.csv", delimiter=",", skiprows=1)[:, 3] for p in pa],
                           [np.loadtxt(p / "outcomes.csv", delimiter=",", skiprows=1)[:, 3] for p in pb], margin=0.01)
    assert got["ci"] == pytest.approx(ref["ci"]) and got["verdict"] == ref["verdict"] and got["n_seeds"] == 3
    assert got["a"]["n_seeds"] == 3 and 0 <= got["a"]["low"] <= got["a"]["accuracy"] <= got["a"]["high"] <= 1


@pytest.mark.parametrize("change, match", [
    ({"eps": 0.2}, "must evaluate the same eps"),
    ({"data": "mnist5k"}, "must evaluate the same data"),
    ({"labels": [9] * 10}, "different labels"),
    ({"index": list(range(100, 110))}, "share no test image"),
])
def test_compare_refuses_other_data_naming_it(tmp_path, change, match):
    ea = _evaluation(tmp_path / "a", {"clean": [1] * 10, "PGD-20": [1] * 10})
    eb = _evaluation(tmp_path / "b", {"clean": [1] * 10, "PGD-20": [0] * 10}, **change)
    with pytest.raises(ValueError, match=match):
        comparison.compare(ea, eb)


def test_compare_refuses_what_is_not_an_evaluation(tmp_path):
    ea = _evaluation(tmp_path / "a", {"clean": [1] * 10})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.json").write_text("{}")
    (tmp_path / "junk" / "outcomes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"B: .*missing is not an nslib evaluate output folder"):
        comparison.compare(ea, tmp_path / "missing")
    with pytest.raises(ValueError, match="B: .*junk holds a results.json or outcomes.csv nslib evaluate did not write"):
        comparison.compare(ea, tmp_path / "junk")
    with pytest.raises(ValueError, match="as many evaluations"):
        comparison.compare([ea, ea], [ea])
    with pytest.raises(ValueError, match="--margin"):
        comparison.compare(ea, ea, margin=2)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nslib", "compare", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_writes_the_files_and_refuses_a_folder_it_did_not_write(tmp_path):
    rng = np.random.default_rng(4)
    a, b = _paired(rng, 400, 0.5, 0.1)
    ea = _evaluation(tmp_path / "a", {"clean": [1] * 400, "PGD-20": a.tolist()})
    eb = _evaluation(tmp_path / "b", {"clean": [1] * 400, "PGD-20": b.tolist()})
    out = tmp_path / "cmp"
    r = _cli(ea, eb, "--out", out, "--names", "AT,TRADES", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "| PGD-20 |" in r.stdout and "wrote" in r.stdout
    assert {p.name for p in out.iterdir()} >= {"COMPARE.md", "compare.csv", "compare.json", "forest.png", "forest.pdf"}
    saved = json.loads((out / "compare.json").read_text())
    assert saved["attacks"][1]["verdict"] == "holds" and saved["names"] == ["AT", "TRADES"]
    assert (out / "compare.csv").read_text().splitlines()[0].startswith("attack,AT_accuracy,AT_low")
    r = _cli(ea, eb, "--out", out, cwd=tmp_path)  # not empty, no --force
    assert r.returncode == 2 and "pass --force" in r.stderr
    assert _cli(ea, eb, "--out", out, "--force", cwd=tmp_path).returncode == 0  # its own result: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.csv").write_text("my own file\n")
    r = _cli(ea, eb, "--out", mine, "--force", cwd=tmp_path)
    assert r.returncode == 2 and "nslib did not write" in r.stderr
    assert (mine / "compare.csv").read_text() == "my own file\n"  # untouched
    r = _cli(ea, tmp_path / "nothing", "--out", tmp_path / "x", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("nslib compare: B:") and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_evaluate_twice_then_compare(tmp_path):
    """The two-command workflow end to end on a tiny model: evaluate A and B on the same images, compare them."""
    from nslib import models
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        torch.save(models.build("smallcnn", "fmnist").state_dict(), tmp_path / f"{name}.pt")
        r = subprocess.run([sys.executable, "-m", "nslib", "evaluate", "--model", f"smallcnn:{tmp_path / name}.pt",
                            "--data", "synthetic:fmnist", "--n", "40", "--attacks", "fgsm,pgd-3", "--out",
                            tmp_path / f"e{name}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
    r = _cli(tmp_path / "ea", tmp_path / "eb", "--out", tmp_path / "cmp", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [c["attack"] for c in saved["attacks"]] == ["clean", "FGSM", "PGD-3"] and saved["n_images"] == 40
