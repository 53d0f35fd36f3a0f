"""Is model A more robust than model B? Two ``nslib evaluate`` results compared image by image, with an interval.

``nslib evaluate`` writes every test image's outcome under every attack (``outcomes.csv``: its index in the data,
its label, 1 where it is still classified correctly). Two evaluations on the same images are paired data: this
module turns them into, per attack, each side's accuracy with its 95% interval, the paired difference A - B with
its 95% interval, and a verdict against a margin fixed in advance, by the rule of the reproduction
(:data:`nslib.verdicts.RULE`): **holds** (A is more robust: the interval lies above zero), **does not hold** (the
interval lies below the margin: any gain is smaller than matters), **inconclusive** otherwise.

- **One evaluation a side** (one trained model each): the interval of the paired difference of two proportions is
  Newcombe's hybrid score interval for paired data (Newcombe 1998, Stat Med 17:2635, method 10), from the Wilson
  intervals of the two accuracies and the correlation of the paired outcomes. It counts the finite set of test
  images, not the training seed: it says whether *these two models* differ, not whether their training recipes do.
- **Several evaluations a side** (the seeds of one recipe, paired by position: A's first with B's first, ...):
  :func:`nslib.verdicts.compare` on the per-seed outcomes, whose interval counts the spread over seeds and the
  images (the reproduction's C3 rule).

Only the images both sides evaluated are compared (matched by their index; their labels must agree); only the
attacks every evaluation ran; evaluations of other data or another eps are refused, naming them.

Usage::

    result = compare(["runs/at/eval"], ["runs/trades/eval"], margin=0.01)
    result["attacks"][1]["verdict"], result["attacks"][1]["ci"]
    python -m nslib compare runs/at/eval runs/trades/eval --margin 0.01 --out outputs/compare/at-vs-trades
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

from nslib import verdicts
from nslib.evaluate import wilson_interval
from nslib.store import (atomic_write_bytes, check_result_dir, claim, outputs_dir, provenance, save_json,
                         writing_result)

__all__ = ["read_evaluation", "newcombe_paired", "compare", "markdown", "write_comparison", "add_arguments", "main"]

FILES = ("COMPARE.md", "compare.csv", "compare.json", "forest.png", "forest.pdf")


def read_evaluation(path, side: str = "A") -> dict:
    """One ``nslib evaluate`` output folder: ``{"path", "params", "attacks" (labels, clean first), "index" [N],
    "label" [N], "outcomes": {attack: [N] 0/1 array}}``. Raises: ValueError naming ``side`` and the path."""
    folder = Path(path)
    results, outcomes = folder / "results.json", folder / "outcomes.csv"
    if not folder.is_dir() or not results.is_file() or not outcomes.is_file():
        raise ValueError(f"{side}: {folder} is not an nslib evaluate output folder (it needs results.json and "
                         f"outcomes.csv; run python -m nslib evaluate ... --out {folder})")
    try:
        params = json.loads(results.read_text())["params"]
        with open(outcomes, newline="") as f:
            rows = list(csv.DictReader(f))
        index = np.array([int(r["index"]) for r in rows])
        label = np.array([int(r["label"]) for r in rows])
        attacks = [a for a in params["attacks"] if a in rows[0]] if rows else []
        out = {a: np.array([int(r[a]) for r in rows]) for a in ["clean", *attacks]}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{side}: {folder} holds a results.json or outcomes.csv nslib evaluate did not write "
                         f"({type(e).__name__}: {e})") from None
    if not rows or len(set(index.tolist())) != len(index):
        raise ValueError(f"{side}: {outcomes} holds no images, or an image index twice")
    return {"path": str(folder), "params": params, "attacks": ["clean", *attacks], "index": index, "label": label,
            "outcomes": out}


def newcombe_paired(a, b, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) for the difference of two paired proportions p_a - p_b.

    ``a``, ``b``: paired 0/1 outcomes of the same N items. With the Wilson intervals (l1, u1) of p_a and (l2, u2) of
    p_b and phi the correlation of the 2x2 table (0 when a margin is empty):
    low = d - sqrt((p_a - l1)^2 - 2 phi (p_a - l1)(u2 - p_b) + (u2 - p_b)^2),
    high = d + sqrt((u1 - p_a)^2 - 2 phi (u1 - p_a)(p_b - l2) + (p_b - l2)^2).
    """
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    n = len(a)
    both, only_a = int(np.sum((a == 1) & (b == 1))), int(np.sum((a == 1) & (b == 0)))
    only_b, neither = int(np.sum((a == 0) & (b == 1))), int(np.sum((a == 0) & (b == 0)))
    pa, pb = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, confidence)
    l2, u2 = wilson_interval(both + only_b, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = 0.0 if margins == 0 else (both * neither - only_a * only_b) / math.sqrt(margins)
    d = pa - pb
    low = d - math.sqrt(max(0.0, (pa - l1) ** 2 - 2 * phi * (pa - l1) * (u2 - pb) + (u2 - pb) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - pa) ** 2 - 2 * phi * (u1 - pa) * (pb - l2) + (pb - l2) ** 2))
    return max(-1.0, low), min(1.0, high)


def _check_same(evals: list[dict], names) -> None:
    """Every evaluation of the same data at the same eps: a ValueError naming the odd one out."""
    first = evals[0]
    for e in evals[1:]:
        for key, what in (("data", "data"), ("eps", "eps")):
            if e["params"].get(key) != first["params"].get(key):
                raise ValueError(f"{names[e['side']]} and {names[first['side']]} must evaluate the same {what}: "
                                 f"{e['path']} has {what} {e['params'].get(key)!r}, {first['path']} has "
                                 f"{first['params'].get(key)!r}")


def _shared(evals: list[dict]):
    """The image indices every evaluation holds, their labels checked equal, and each evaluation's rows for them."""
    common = set(evals[0]["index"].tolist())
    for e in evals[1:]:
        common &= set(e["index"].tolist())
    common = np.array(sorted(common))
    if len(common) == 0:
        raise ValueError("A and B share no test image (matched by the index column of outcomes.csv): evaluate both "
                         "on the same --data, --n and --seed")
    rows = []
    for e in evals:
        where = {i: k for k, i in enumerate(e["index"].tolist())}
        rows.append(np.array([where[i] for i in common]))
    labels = [e["label"][r] for e, r in zip(evals, rows)]
    for e, lab in zip(evals[1:], labels[1:]):
        if not np.array_equal(lab, labels[0]):
            raise ValueError(f"{e['path']} and {evals[0]['path']} give the same image index different labels: they "
                             f"evaluated different data")
    return common, rows


def _side(outcomes: list[np.ndarray], confidence: float) -> dict:
    """One side's accuracy over its seeds with a 95% interval: Wilson for one seed, the crossed-design interval of
    :func:`nslib.verdicts.compare` (seeds and images) for several."""
    acc = statistics.fmean(float(o.mean()) for o in outcomes)
    if len(outcomes) == 1:
        low, high = wilson_interval(int(outcomes[0].sum()), len(outcomes[0]), confidence)
    else:
        c = verdicts.compare(outcomes, [np.zeros_like(o) for o in outcomes], confidence=confidence)
        low, high = max(0.0, c["ci"][0]), min(1.0, c["ci"][1])
    return {"accuracy": acc, "low": low, "high": high, "n_seeds": len(outcomes),
            "per_seed": [float(o.mean()) for o in outcomes]}


def compare(paths_a, paths_b, *, margin: float = 0.01, names=("A", "B"), confidence: float = 0.95) -> dict:
    """Compare the evaluations ``paths_a`` (one folder, or a list: the seeds of one model) with ``paths_b``.

    Returns ``{"names", "margin", "confidence", "n_images" (shared), "dropped" ({name: images of that side not
    shared}), "data", "eps", "paths" ({name: [folders]}), "attacks": [{"attack", "a", "b" (accuracy, low, high,
    n_seeds, per_seed), "effect" (A - B), "ci", "verdict", "reason", "method", "what", "unit", "margin",
    "n_seeds", "n_examples"}]}``: one entry per attack every evaluation ran, clean first. Each attack entry is a
    comparison as :func:`nslib.verdicts.compare` returns one (so :func:`nslib.forest.plot_forest` draws it).

    Raises: ValueError naming A or B: a folder that is not an evaluate output, other data or eps than the other
    side, no shared image or attack, different numbers of seeds on the two sides, a margin outside [0, 1).
    """
    paths_a = [paths_a] if isinstance(paths_a, (str, Path)) else list(paths_a)
    paths_b = [paths_b] if isinstance(paths_b, (str, Path)) else list(paths_b)
    if not (isinstance(margin, (int, float)) and not isinstance(margin, bool) and 0 <= margin < 1):
        raise ValueError(f"--margin must be an accuracy difference in [0, 1) (0.01 is 1 point), got {margin!r}")
    if not paths_a or not paths_b:
        raise ValueError("A and B must each name at least one nslib evaluate output folder")
    if len(paths_a) != len(paths_b):
        raise ValueError(f"A and B must hold as many evaluations (seeds, paired by position), got {len(paths_a)} and "
                         f"{len(paths_b)}")
    sides = {0: names[0], 1: names[1]}
    evals = [{**read_evaluation(p, names[0]), "side": 0} for p in paths_a] + \
            [{**read_evaluation(p, names[1]), "side": 1} for p in paths_b]
    _check_same(evals, sides)
    common, rows = _shared(evals)
    attacks = [a for a in evals[0]["attacks"] if all(a in e["outcomes"] for e in evals)]
    if attacks == ["clean"] and any(len(e["attacks"]) > 1 for e in evals):
        print(f"nslib compare: A and B ran no attack in common; comparing clean accuracy only", file=sys.stderr)
    k = len(paths_a)
    out = {"names": list(names), "margin": float(margin), "confidence": confidence, "n_images": len(common),
           "dropped": {names[s]: sum(len(e["index"]) - len(common) for e in evals if e["side"] == s) for s in (0, 1)},
           "data": evals[0]["params"].get("data"), "eps": evals[0]["params"].get("eps"),
           "paths": {names[0]: [str(p) for p in paths_a], names[1]: [str(p) for p in paths_b]}, "attacks": []}
    for attack in attacks:
        oa = [e["outcomes"][attack][r] for e, r in zip(evals[:k], rows[:k])]
        ob = [e["outcomes"][attack][r] for e, r in zip(evals[k:], rows[k:])]
        what = f"{names[0]} > {names[1]}, {attack} accuracy"
        if k == 1:
            low, high = newcombe_paired(oa[0], ob[0], confidence)
            c = {"id": {"attack": attack}, "role": "judged", "what": what, "names": list(names), "unit": "accuracy",
                 "n_seeds": 1, "n_examples": len(common), "effect": float(oa[0].mean() - ob[0].mean()),
                 "margin": float(margin), "ci": (low, high), "method": "Newcombe's paired score interval (images)"}
            c["verdict"], c["reason"] = verdicts.judge(low, high, margin, confidence)
        else:
            c = verdicts.compare(oa, ob, margin=margin, what=what, names=names, unit="accuracy",
                                 key={"attack": attack}, confidence=confidence)
            c["method"] = f"{k} seeds x {len(common)} images, crossed-design t interval (nslib.verdicts.compare)"
        c.update(attack=attack, a=_side(oa, confidence), b=_side(ob, confidence))
        out["attacks"].append(c)
    return out


# ----------------------------------------------------------------------------------------------------
# output

def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def markdown(result: dict) -> str:
    """COMPARE.md: what was compared, the rule, one row per attack (each side with its interval, A - B with its
    interval, the verdict), and why."""
    a, b = result["names"]
    rows = ["| attack | " + a + " [95%] | " + b + " [95%] | " + a + " - " + b + " [95%], points | verdict |",
            "|---|---|---|---|---|"]
    for c in result["attacks"]:
        sa, sb = c["a"], c["b"]
        ci = "" if c["ci"] is None else f" [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]"
        rows.append(f"| {c['attack']} | {_pct(sa['accuracy'])} [{_pct(sa['low'])}, {_pct(sa['high'])}] | "
                    f"{_pct(sb['accuracy'])} [{_pct(sb['low'])}, {_pct(sb['high'])}] | {100 * c['effect']:+.1f}{ci} | "
                    f"**{c['verdict']}** |")
    k = result["attacks"][0]["n_seeds"] if result["attacks"] else 1
    how = ("one evaluation a side: Newcombe's paired score interval over the shared images (it says whether these "
           "two models differ, not whether their training recipes do: that needs several seeds a side)" if k == 1 else
           f"{k} evaluations a side, paired by position: the crossed-design interval over seeds and images")
    dropped = ", ".join(f"{n} {d}" for n, d in result["dropped"].items() if d)
    lines = [f"# {a} against {b}", "",
             f"{a}: {', '.join(result['paths'][a])}  ", f"{b}: {', '.join(result['paths'][b])}", "",
             f"Data {result['data']}, eps {result['eps']:g}; {result['n_images']} images both sides evaluated (matched "
             f"by index)" + (f"; left out, not shared: {dropped}" if dropped else "") + f". Interval: {how}.", "",
             f"**Rule** (as the reproduction's, `nslib.verdicts`): {a} is more robust when the 95% interval of "
             f"{a} - {b} lies above zero (**holds**); **does not hold** when it lies below the margin, "
             f"{100 * result['margin']:g} point(s), fixed before looking (any gain smaller than matters); "
             f"**inconclusive** otherwise.", "", *rows, ""]
    lines += [f"- {c['attack']}: {c['reason']}" for c in result["attacks"]]
    return "\n".join(lines) + "\n"


def _csv(result: dict) -> bytes:
    a, b = result["names"]
    head = ["attack", f"{a}_accuracy", f"{a}_low", f"{a}_high", f"{b}_accuracy", f"{b}_low", f"{b}_high", "effect",
            "ci_low", "ci_high", "margin", "verdict", "n_images", "n_seeds"]
    lines = [",".join(head)]
    for c in result["attacks"]:
        ci = c["ci"] or (None, None)
        vals = [c["attack"], c["a"]["accuracy"], c["a"]["low"], c["a"]["high"], c["b"]["accuracy"], c["b"]["low"],
                c["b"]["high"], c["effect"], ci[0], ci[1], c["margin"], c["verdict"], c["n_examples"], c["n_seeds"]]
        lines.append(",".join("" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v)) for v in vals))
    return ("\n".join(lines) + "\n").encode()


def write_comparison(result: dict, out, *, force: bool = False) -> Path:
    """COMPARE.md, compare.csv, compare.json and the forest plot (forest.png, .pdf) into ``out``, assembled in a
    folder beside it and moved into place whole (:func:`nslib.store.replace_dir`: ``force`` replaces only a folder
    of nslib's own results)."""
    from nslib.forest import plot_forest  # matplotlib: only when writing
    out = check_result_dir(out, force, "--out")
    with claim(out, "--out"), writing_result(out, force, "--out") as tmp:
        atomic_write_bytes(tmp / "COMPARE.md", markdown(result).encode())
        atomic_write_bytes(tmp / "compare.csv", _csv(result))
        save_json(tmp / "compare.json", {**result, "provenance": provenance()})
        a, b = result["names"]
        plot_forest({f"{a} - {b}, accuracy (points)": result["attacks"]}, path=tmp / "forest",
                    title=f"{a} against {b}: paired difference and 95% interval")
    return out


# ----------------------------------------------------------------------------------------------------
# the command line

def add_arguments(p) -> None:
    """The flags of ``nslib compare`` on the argparse (sub)parser ``p``."""
    p.add_argument("a", metavar="A", help="an nslib evaluate output folder, or several comma-separated (the seeds of "
                                          "one model, paired with B's by position)")
    p.add_argument("b", metavar="B", help="the same for the model A is compared with")
    p.add_argument("--margin", type=float, default=0.01, help="the smallest gain of A over B that matters, as an "
                   "accuracy difference (0.01: 1 point), fixed before looking")
    p.add_argument("--names", default="A,B", help="what A and B are, for the tables: two comma-separated names")
    p.add_argument("--out", default=None, help="output folder (default: outputs/compare/<A>-vs-<B>)")
    p.add_argument("--force", action="store_true", help="replace a folder of earlier nslib results in --out")


def main(args) -> int:
    """``python -m nslib compare A B``: the table on the terminal and the files in ``--out`` (rank 0 alone under
    torchrun: it only reads files). Exit 2 with one line naming the argument on bad input."""
    from nslib import distributed
    if not distributed.is_main():
        return 0
    try:
        names = tuple(n.strip() for n in args.names.split(","))
        if len(names) != 2 or not all(names) or names[0] == names[1]:
            raise ValueError(f"--names must be two different comma-separated names, got {args.names!r}")
        paths_a = [p for p in args.a.split(",") if p]
        paths_b = [p for p in args.b.split(",") if p]
        out = args.out or outputs_dir("compare", f"{Path(paths_a[0]).name}-vs-{Path(paths_b[0]).name}")
        check_result_dir(out, args.force, "--out")  # before reading anything
        result = compare(paths_a, paths_b, margin=args.margin, names=names)
        out = write_comparison(result, out, force=args.force)
    except ValueError as e:
        print(f"nslib compare: {e}", file=sys.stderr)
        return 2
    print(markdown(result).split("\n\n", 3)[-1].rstrip())
    print(f"nslib compare: wrote {out}/COMPARE.md")
    return 0
