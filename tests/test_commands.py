"""``nslib train`` and ``nslib evaluate`` in one process: bad inputs fail before any work with a message naming
the flag, ``--force`` replaces only what the command wrote, and the attack grammar. (The commands under
torchrun, and their results, are in test_distributed.py.)"""
from __future__ import annotations

import json

import pytest
import torch

from nslib import evaluate
from nslib.cli.main import main
from nslib.cli.evaluate import parse_attacks

MODELS = '''
from torch import nn


def tiny():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
'''


@pytest.fixture
def files(tmp_path, monkeypatch):
    (tmp_path / "cmdmodels.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(40, 1, 8, 8, generator=g), "y": torch.randint(0, 3, (40,), generator=g)},
               tmp_path / "d.pt")
    return tmp_path


def _fails(argv, capsys, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    return err


def test_train_names_the_bad_flag_before_any_work(files, capsys):
    base = ["train", "--model", "cmdmodels:tiny", "--data", str(files / "d.pt"), "--eps", "0.1", "--quiet"]
    _fails(base + ["--method", "nope", "--out", str(files / "a")], capsys, "method", "nope")
    _fails(base + ["--set", "bogus=1", "--out", str(files / "a")], capsys, "--set bogus")
    _fails(base + ["--batch-size", "0", "--out", str(files / "a")], capsys, "--batch-size")
    _fails(base + ["--resume", "--out", str(files / "a")], capsys, "--resume", "no last.pt")
    _fails(["train", "--model", "cmdmodels:tiny", "--data", str(files / "d.pt"), "--out", str(files / "a")],
           capsys, "--eps")
    _fails(base + ["--data", "nowhere.pt", "--out", str(files / "a")], capsys, "--data", "nowhere.pt")
    _fails(base + ["--import", "no_such_module_x", "--out", str(files / "a")], capsys, "--import")
    (files / "full").mkdir()
    (files / "full" / "mine.txt").write_text("not the kit's")
    _fails(base + ["--out", str(files / "full")], capsys, "--out", "not empty")
    assert not (files / "a").exists() and (files / "full" / "mine.txt").exists()


def test_evaluate_checks_and_force_replaces_only_its_files(files, capsys):
    base = ["evaluate", "--model", "cmdmodels:tiny", "--data", str(files / "d.pt"), "--n", "0"]
    out = files / "ev"
    _fails(base + ["--attacks", "pgd-2,cw", "--eps", "0.1", "--out", str(out)], capsys, "--attacks", "cw")
    _fails(base + ["--attacks", "fgsm", "--out", str(out)], capsys, "--eps")
    _fails(base + ["--attacks", "fgsm", "--eps", "2", "--out", str(out)], capsys, "--eps")
    ok = base + ["--attacks", "fgsm,pgd-2", "--eps", "0.1", "--batch-size", "16", "--out", str(out)]
    assert main(ok) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["attack"] for r in rows] == ["clean", "FGSM", "PGD-2"] and rows[0]["n"] == 40
    lines = (out / "outcomes.csv").read_text().splitlines()
    assert lines[0] == "index,label,clean,FGSM,PGD-2" and len(lines) == 41
    assert all(int(c) >= int(p) for line in lines[1:] for c, p in [line.split(",")[2:4]])  # robust implies clean
    _fails(ok, capsys, "--out", "--force")
    (out / "notes.txt").write_text("mine")
    _fails(ok + ["--force"], capsys, "did not write", "notes.txt")
    (out / "notes.txt").unlink()
    assert main(ok + ["--force"]) == 0
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".ev")) == []  # no temporary folder left


def test_attack_grammar():
    suite = parse_attacks("fgsm, pgd-50,mim,fmn-l2,pgd-l2-7,autoattack,cw-l2,FMN-linf-3")
    assert suite == [{"attack": "fgsm"}, {"attack": "pgd", "steps": 50}, {"attack": "mim"},
                     {"attack": "fmn", "norm": "l2"}, {"attack": "pgd", "norm": "l2", "steps": 7},
                     {"attack": "autoattack"}, {"attack": "cw_l2"}, {"attack": "fmn", "norm": "linf", "steps": 3}]
    # the labels are the library's (evaluate.attack_label), steps not given the function's own default
    assert [evaluate.attack_label(s) for s in suite] == ["FGSM", "PGD-50", "MIM-10", "FMN-L2-100", "PGD-L2-7",
                                                         "AutoAttack", "C&W-L2", "FMN-Linf-3"]
    assert [evaluate.attack_norm(s) for s in suite] == ["linf", "linf", "linf", "l2", "l2", "linf", "l2", "linf"]
    assert parse_attacks("autoattack", autoattack={"version": "custom", "attacks": ["apgd-ce"]}) == [
        {"attack": "autoattack", "version": "custom", "attacks": ["apgd-ce"]}]
    for bad in ("", "pgd-0", "fgsm-3", "pgd-20,pgd-20", "square", "fgsm-l2", "pgd-l2-l2", "pgd-20-l2", "cw", "pgdx", "pgd--20", "pgd-"):
        with pytest.raises(ValueError, match="--attacks"):
            parse_attacks(bad)


def test_k_is_read_by_one_rule_in_every_command(files, capsys):
    """--k: a whole number is a count (an int), anything else a fraction, in analyze and train alike; 1.5 is refused
    by the top-k check (train rounded it to 1 before), never rounded."""
    from nslib.cli import specs
    assert specs.k_argument("3") == 3 and isinstance(specs.k_argument("3.0"), int)
    assert specs.k_argument("0.25") == 0.25 and specs.k_argument("1.5") == 1.5 and specs.k_argument("1") == 1
    base = ["train", "--model", "cmdmodels:tiny", "--data", str(files / "d.pt"), "--eps", "0.1", "--quiet",
            "--method", "sns", "--out", str(files / "k")]
    _fails(base + ["--k", "1.5"], capsys, "--k", "1.5")
    _fails(["analyze", "--model", "cmdmodels:tiny", "--data", str(files / "d.pt"), "--n", "40", "--eps", "0.1", "--k", "1.5",
            "--out", str(files / "ka")], capsys, "--k", "1.5")
    assert not (files / "k").exists() and not (files / "ka").exists()
