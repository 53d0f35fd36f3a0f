"""``nslib train|evaluate|analyze`` under torchrun: two gloo processes on loopback equal one process.

Two launches of ``torchrun --nproc_per_node=2`` (each costs a few seconds of imports, so one launch runs
several commands): the first trains PGD-AT and TRADES, evaluates and analyses; the second trains with a model
whose rank 1 kills itself in epoch 2. The same commands run here in one process, and the results are
compared: weights to float tolerance (the gradients' all-reduce sums in another order), counts, per-example
outcomes and sigma exactly (each batch is computed as one process computes it). Tiny model, synthetic data.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nslib import distributed
from nslib.cli.main import main as nslib_main

pytestmark = pytest.mark.distributed

MODELS = '''
import os, signal
from pathlib import Path
import torch
from torch import nn


def tiny():
    """No dropout and no batch norm: DDP then trains exactly the model one process trains."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


class Killer(nn.Sequential):
    """tiny() whose rank 1 kills itself (SIGKILL) once rank 0 has written the first epoch's history."""

    def forward(self, x):
        if os.environ.get("RANK") == "1" and Path(os.environ["KILL_WHEN"]).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(x)


def tiny_rgb():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))


def killer():
    return Killer(*tiny())
'''

DRIVER = '''
import json, os, sys
from pathlib import Path
import torch.distributed as dist

writes = []
root = sys.argv[2]
def audit(event, args):  # every file this rank creates, renames or opens for writing under the test folder
    if event == "open" and str(args[0]).startswith(root) and (any(c in str(args[1] or "") for c in "wax+")
                                                             or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
        writes.append(str(args[0]))
    elif event in ("os.rename", "os.mkdir", "os.remove", "shutil.rmtree") and str(args[0]).startswith(root):
        writes.extend(str(a) for a in args[:2] if isinstance(a, (str, Path)))
sys.addaudithook(audit)

dist.init_process_group("gloo")  # one group for all the commands (each would otherwise join and leave)
from nslib.cli.main import main
rank, codes = dist.get_rank(), []
for command in json.loads(Path(sys.argv[1]).read_text()):  # the last one is killed: report after each
    codes.append(main(command))
    Path(sys.argv[3], f"rank{rank}.json").write_text(json.dumps({"codes": codes, "writes": writes}))
dist.destroy_process_group()
'''


def _commands(tmp: Path, tag: str) -> list[list[str]]:
    data, models = str(tmp / "data.pt"), "ddpmodels:tiny"
    common = ["--data", data, "--batch-size", "32", "--attack-steps", "2", "--val-size", "16", "--seed", "3",
              "--set", "val_n_adv=16", "--set", "val_attack_steps=2", "--lr", "0.1", "--quiet", "--eps", "0.1",
              # fp32: on a CPU with bf16 hardware, "auto" trains in bf16, whose rounding turns the ranks' other
              # order of additions into weights 6e-5 apart after two epochs, beyond the bounds below
              "--precision", "fp32"]
    return [["train", "--model", models, "--method", "pgd_at", "--epochs", "2", "--out", str(tmp / f"at{tag}"), *common],
            ["train", "--model", models, "--method", "trades", "--epochs", "1", "--out", str(tmp / f"tr{tag}"), *common],
            ["evaluate", "--model", f"{models}:{tmp / 'at1' / 'best.pt'}", "--data", str(tmp / "test.pt"), "--n", "0", "--eps", "0.1",
             "--attacks", "fgsm,pgd-3,mim-2,fmn-l2-5,pgd-l2-3", "--batch-size", "32", "--out", str(tmp / f"ev{tag}")],
            ["train", "--model", "ddpmodels:tiny_rgb", "--method", "pgd_at", "--epochs", "1", "--workers", "1",
             "--out", str(tmp / f"img{tag}"), *common[2:], "--data", str(tmp / "images"), "--val-size", "4"],
            ["evaluate", "--model", f"ddpmodels:tiny_rgb:{tmp / 'img1' / 'last.pt'}", "--data", str(tmp / "images"),
             "--n", "0", "--eps", "0.1", "--attacks", "pgd-2", "--batch-size", "6", "--workers", "1",
             "--out", str(tmp / f"evimg{tag}")],
            ["analyze", "--model", f"{models}:{tmp / 'at1' / 'best.pt'}", "--data", str(tmp / "test.pt"), "--n", "160", "--eps", "0.1", "--steps", "2",
             "--layers", "0", "--out", str(tmp / f"an{tag}")]]


def _torchrun(tmp: Path, reports: Path, commands, env) -> subprocess.CompletedProcess:
    """One launch of two ranks on loopback running ``commands`` in turn (one process group, one import)."""
    (reports / "commands.json").write_text(json.dumps(commands))
    port = 29500 + os.getpid() % 1000 * 2
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), str(reports / "driver.py"),
                           str(reports / "commands.json"), str(tmp), str(reports)],
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The commands on two ranks (torchrun) and in this process, on the same files."""
    tmp, reports = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("reports")
    (tmp / "ddpmodels.py").write_text(MODELS)
    (reports / "driver.py").write_text(DRIVER)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(112, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (112,), generator=g)  # random labels: mixed outcomes, every attack breaks some
    torch.save({"x": x[:80], "y": y[:80]}, tmp / "data.pt")
    torch.save({"x": torch.rand(160, 1, 8, 8, generator=g), "y": torch.randint(0, 3, (160,), generator=g)},
               tmp / "test.pt")
    from PIL import Image  # a folder of 2 classes x 9 PNGs in ImageFolder layout, streamed by a DataLoader

    for c in range(2):
        (tmp / "images" / f"class{c}").mkdir(parents=True)
        for i in range(9):
            pixels = (torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp / "images" / f"class{c}" / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "KILL_WHEN": str(tmp / "atK" / "history.json")}
    kill = ["train", "--model", "ddpmodels:killer", *_commands(tmp, "K")[0][3:]]  # rank 1 dies in epoch 2
    sys.path.insert(0, str(tmp))
    try:
        one = [nslib_main(c) for c in _commands(tmp, "1")]  # first: the evaluations read its checkpoint
        two = _torchrun(tmp, reports, _commands(tmp, "2") + [kill], env)
        left = sorted(p.name for p in (tmp / "atK").iterdir())
        epochs = len(json.loads((tmp / "atK" / "history.json").read_text())["history"])
        resumed = nslib_main([*kill[:2], "ddpmodels:tiny", *kill[3:], "--resume"])
    finally:
        sys.path.remove(str(tmp))
    ranks = {r: json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)}
    return {"tmp": tmp, "two": two, "ranks": ranks, "one": one, "left": left, "epochs": epochs, "resumed": resumed}


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _close(a, b, what):
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), f"{what} {k}: max diff {(a[k] - b[k]).abs().max()}"


def test_two_ranks_train_to_the_weights_of_one_process(runs):
    assert runs["one"] == [0] * 6
    assert [r["codes"][:6] for r in runs["ranks"].values()] == [[0] * 6] * 2, runs["two"].stderr[-3000:]
    tmp = runs["tmp"]
    for name in ("at", "tr", "img"):
        _close(_weights(tmp / f"{name}1" / "last.pt"), _weights(tmp / f"{name}2" / "last.pt"), name)
        h1, h2 = (json.loads((tmp / f"{name}{t}" / "history.json").read_text())["history"] for t in "12")
        for r1, r2 in zip(h1, h2):  # validation is split by whole batches: the same counts
            assert r1["val_clean"] == r2["val_clean"] and r1.get("val_pgd") == r2.get("val_pgd")
            assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-5)
    assert json.loads((tmp / "at2" / "train.json").read_text())["ranks"] == 2


def test_two_ranks_evaluate_and_analyze_as_one_process(runs):
    tmp = runs["tmp"]
    for name in ("ev", "evimg"):  # the .pt test set and the streamed folder of PNGs
        assert (tmp / f"{name}1" / "outcomes.csv").read_text() == (tmp / f"{name}2" / "outcomes.csv").read_text()
    rows = [json.loads((tmp / f"ev{t}" / "results.json").read_text())["rows"] for t in "12"]
    assert [(r["attack"], r["correct"], r["n"]) for r in rows[0]] == [(r["attack"], r["correct"], r["n"]) for r in rows[1]]
    s1, s2 = (json.loads((tmp / f"an{t}" / "sensitivity.json").read_text()) for t in "12")
    assert s1["adv"]["correct"] == s2["adv"]["correct"] and s1["clean"]["correct"] == s2["clean"]["correct"]
    assert s1["mean_abs"] == pytest.approx(s2["mean_abs"], rel=1e-6)
    for a, b in zip(s1["layers"], s2["layers"]):
        assert a["top_neurons"] == b["top_neurons"] and a["mean_abs"] == pytest.approx(b["mean_abs"], rel=1e-6)


def test_only_rank_0_writes(runs):
    by_rank = {r: report["writes"] for r, report in runs["ranks"].items()}
    assert by_rank[1] == [], f"rank 1 wrote {by_rank[1][:5]}"
    assert any(w.endswith("last.pt") for w in by_rank[0]) and any("outcomes.csv" in w for w in by_rank[0])


def test_a_killed_rank_stops_the_run_cleanly_and_it_resumes_on_one_process(runs):
    killed, tmp = runs["two"], runs["tmp"]
    assert killed.returncode != 0
    assert "nslib train:" in killed.stderr or "exitcode  : -9" in killed.stderr, killed.stderr[-3000:]
    assert runs["left"] == ["best.pt", "history.json", "last.pt"]  # epoch 1's, complete; no temp file, no train.json
    assert runs["epochs"] == 1
    out = tmp / "atK"
    assert runs["resumed"] == 0  # the rest of the run, on one process: the weights of a run never stopped
    _close(_weights(tmp / "at1" / "last.pt"), _weights(out / "last.pt"), "resumed")


def test_example_noise_does_not_depend_on_the_batch():
    idx = torch.arange(10)
    whole = distributed.example_noise(idx, (2, 3), seed=5)
    parts = torch.cat([distributed.example_noise(idx[:4], (2, 3), seed=5),
                       distributed.example_noise(idx[4:], (2, 3), seed=5)])
    assert torch.equal(whole, parts) and whole.min() >= 0 and whole.max() < 1
    assert not torch.equal(whole, distributed.example_noise(idx, (2, 3), seed=6))
    normal = distributed.example_noise(torch.arange(2000), (50,), seed=1, kind="normal")
    assert abs(float(normal.mean())) < 0.01 and abs(float(normal.std()) - 1) < 0.01
    uniform = distributed.example_noise(torch.arange(2000), (50,), seed=1)
    assert abs(float(uniform.mean()) - 0.5) < 0.005
