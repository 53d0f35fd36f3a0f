"""A GPU user's first run, exercised on a CPU: every notebook of the ``full`` profile on Fashion-MNIST with every
size shrunk to seconds (images, epochs, seeds, steps) and every setting that selects a code path kept as the profile
has it (the five k values, the three-value k grid, standard AutoAttack, restarted PGD-L2, three suite seeds, two C1
eps scales, the five-value lambda grid, PGD training from scratch); then ``nslib bench`` on the CPU, each benchmark
at its quick sizes.

What these reach that the quick profile's notebooks do not: standard AutoAttack (APGD-T, FAB-T, Square) inside E3,
PGD-L2 with restarts, the secondary attacks on several seeds (suite_seeds > 1), C1 with two half-eps models,
intervention curves over five k values, the k ablation over three, the sanity sweep at the full profile's steps.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nslib.repro import config, profiles, run

FULL = profiles.PROFILES["full"]

# sizes only: every one is a count of images, epochs, seeds or steps
SHRINK = {"n_train": 1024, "epochs": 1, "vanilla_epochs": 1, "batch_size": 32, "val_size": 128, "val_n_adv": 16,
          "val_attack_steps": 2, "attack_steps": 2, "seeds": [0, 1], "c3_seeds": [0, 1, 2], "n_pairs": 32,
          "n_eval": 32, "n_long": 8, "pgd_long_steps": 3, "mim_steps": 2, "l2_n": 6, "fmn_steps": 4,
          "pgd_l2_steps": 2, "aa_n": 4, "n_sanity": 8, "sanity_steps": 2, "n_maps": 2, "pair_steps": 3,
          "selection_seeds": [0, 1]}
# what selects a code path in the full profile: kept, and checked here to be what the profile says
KEPT = ("ks", "k_grid", "aa_version", "pgd_l2_restarts", "suite_seeds", "c1_eps_scales", "lam_grid", "start")


def test_shrinking_keeps_every_setting_that_selects_a_code_path():
    cfg = config.settings("full", "fmnist", "05", SHRINK)
    full = config.settings("full", "fmnist", "05")
    assert not set(SHRINK) & set(KEPT)
    for knob in KEPT:
        assert getattr(cfg, knob) == getattr(full, knob), knob
    assert cfg.aa_version == "standard" and cfg.pgd_l2_restarts == 3 and cfg.suite_seeds == 3 and len(cfg.ks) == 5
    assert cfg.start == "scratch" and cfg.attack_steps > 1  # PGD from scratch, as the paper


@pytest.mark.slow
def test_every_notebook_of_the_full_profile_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NSLIB_OUTPUTS", str(tmp_path))
    messages = []
    rc = run.reproduce("full", datasets=["fmnist"], overrides={**SHRINK, "min_test_acc": 0.0}, progress=False,
                       log=messages.append)
    assert rc == 0, "\n".join(messages)
    out = tmp_path / "full" / "fmnist"
    done = sorted(p.name for p in out.glob("*.done.json"))
    assert [d[:2] for d in done] == list(config.NOTEBOOKS)
    e3 = json.loads((out / "results" / "05_sns_robustness.json").read_text())
    evals = e3["numbers"]["evals"]
    aa = evals["pgd_at/0"]["rows"]["autoattack"]
    assert {"apgd-ce", "apgd-t", "fab-t", "square"} <= set(aa["per_attack"])  # standard AutoAttack
    assert evals["pgd_at/1"]["rows"]["pgd_l2"]["label"].endswith("x3")  # restarted PGD-L2, on a second seed too
    assert "mim" in evals["sns_trades/1"]["rows"]  # secondary attacks beyond the first seed (suite_seeds 3)
    assert len(e3["numbers"]["k"]) == 3  # the k grid
    report = (tmp_path / "full" / "REPORT.md").read_text()
    assert "PGD-AT (0.25 eps)" in report and "PGD-AT (0.5 eps)" in report  # C1's two scales
    assert "PGD-2 (step" in report and "scratch" in report  # the recipe, in words


@pytest.mark.slow
@pytest.mark.parametrize("what", ["attacks", "sensitivity", "training"])
def test_bench_runs_on_the_cpu(what):
    r = subprocess.run([sys.executable, "-m", "nslib", "bench", what, "--device", "cpu", "--quick"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "x" in r.stdout  # ratios printed against the anchor
