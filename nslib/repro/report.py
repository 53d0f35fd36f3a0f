"""Results and the report: the JSON files the notebooks exchange, the markdown tables, and REPORT.md.

- **Result files** (:func:`save_result`, :func:`load_result`, :func:`load_results`): each notebook writes
  ``outputs/<profile>/<dataset>/results/<notebook>.json`` atomically with its provenance (parameters, seed,
  nslib version, device).
- **Tables** (:func:`rows_markdown`, :func:`markdown_table`, :func:`sensitivity_markdown`, ...): what the
  notebooks display and the report repeats.
- **The report** (:func:`write_report`, :func:`report_verdicts`): ``outputs/<profile>/REPORT.md``, one section per
  claim C1-C6 with its verdict per dataset and the comparisons behind it.

Usage::

    save_result("quick", "fmnist", "02_neuron_sensitivity", {"claims": {...}}, params)
    write_report("quick")
"""
from __future__ import annotations

import datetime
import os
import statistics
from pathlib import Path

from nslib import forest
from nslib.fast import default_device as device
from nslib.repro.cache import label
from nslib.store import atomic_write_bytes, load_json, outputs_dir, provenance, save_json
from nslib.verdicts import RULE, combine, decisive, describe, effect_text, judged, spread

__all__ = ["CLAIMS", "SECTION_KINDS", "section", "claims_of", "profile_dir", "figures_dir", "save_result", "load_result",
           "load_results", "rows_markdown",
           "markdown_table", "checkpoint_rows", "sensitivity_markdown", "ablation_markdown", "lam_markdown", "sanity_markdown",
           "report_verdicts", "write_report"]

CLAIMS = {
    "C1": "Adversarial robustness can be explained through neuron sensitivity.",
    "C2": "Sensitive neurons make the most non-trivial contributions to predictions in the adversarial setting.",
    "C3": "SNS (constraining sensitive neurons' behaviour between benign and adversarial inputs) improves robustness.",
    "C4": "Adversarial training improves robustness by reducing neuron sensitivities.",
    "C5": "The findings hold across datasets (MNIST, CIFAR-10, ImageNet in the paper): every claim on every dataset run.",
    "C6": "Visualising sensitive neurons interprets robustness (benign vs adversarial activation maps).",
}

# Where a notebook's result section goes in REPORT.md, by its kind: a heading of its own, or "Other sections".
SECTION_KINDS = {"baselines": "Baselines beside the published numbers", "check": "Notebook 00: data and a clean model",
                 "recipe": "How the models were trained", "sanity": "Evaluation sanity", "training": None,
                 "sensitivity": None, "ablation": None}


def section(kind: str, title: str, markdown: str) -> dict:
    """A result section for :func:`save_result`'s ``sections``: ``kind`` one of :data:`SECTION_KINDS`."""
    if kind not in SECTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SECTION_KINDS)}, got {kind!r}")
    return {"kind": kind, "title": title, "markdown": markdown}



# ----------------------------------------------------------------------------------------------------
# result files

def profile_dir(profile: str, dataset: str | None = None) -> Path:
    """``outputs/<profile>[/<dataset>]`` (not created)."""
    return outputs_dir(profile, dataset) if dataset else outputs_dir(profile)


def figures_dir(profile: str, dataset: str) -> Path:
    """``outputs/<profile>/<dataset>/figures``, created."""
    path = profile_dir(profile, dataset) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_result(profile: str, dataset: str, notebook: str, record: dict, params: dict) -> Path:
    """Write a notebook's results to ``outputs/<profile>/<dataset>/results/<notebook>.json`` atomically.

    ``record`` holds what the report reads: ``claims`` ({"C3": {"verdict", "summary", "comparisons",
    "figures"}}), ``sections`` ([{"kind", "title", "markdown"}]: :data:`SECTION_KINDS` says where each kind goes
    in REPORT.md), ``numbers`` (anything else). ``params`` are the notebook's parameters; provenance (versions,
    device, time) is added.
    """
    body = {"notebook": notebook, "profile": profile, "dataset": dataset, "params": params, **record,
            "provenance": provenance(device(), **params)}
    return save_json(profile_dir(profile, dataset) / "results" / f"{notebook}.json", body)


def load_result(profile: str, dataset: str, notebook: str) -> dict:
    """The results of one notebook; FileNotFoundError names the notebook to run first."""
    path = profile_dir(profile, dataset) / "results" / f"{notebook}.json"
    if not path.exists():
        raise FileNotFoundError(f"no results at {path}: run notebooks/{notebook}.ipynb (profile {profile!r}, "
                                f"dataset {dataset!r}) first")
    return load_json(path)


def load_results(profile: str) -> dict[str, dict[str, dict]]:
    """All result files of a profile: {dataset: {notebook: record}}."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(profile_dir(profile).glob("*/results/*.json")):
        out.setdefault(path.parent.parent.name, {})[path.stem] = load_json(path)
    return out



# ----------------------------------------------------------------------------------------------------
# tables

def markdown_table(evals: dict, names, seeds, columns) -> str:
    """Markdown table: one row per model, one column per E3 row id (headed by its label): mean +- std over the
    seeds that ran it (percent; "(1 seed)" where fewer than all did) and the seed-averaged 95% interval."""
    first = {c: next((evals[(n, s)]["rows"][c]["label"] for n in names for s in seeds if c in evals[(n, s)]["rows"]),
                     c) for c in columns}
    head = "| model | " + " | ".join(first[c] for c in columns) + " |"
    lines = [head, "|---|" + "---|" * len(columns)]
    for n in names:
        cells = []
        for c in columns:
            rs = [r for r in (evals[(n, s)]["rows"].get(c) for s in seeds) if r is not None]
            if not rs:
                cells.append("-")
                continue
            sp = spread([r["accuracy"] for r in rs])
            lo = statistics.fmean(r["low"] for r in rs)
            hi = statistics.fmean(r["high"] for r in rs)
            std = f" +- {100 * sp['std']:.1f}" if sp["std"] is not None else ""
            fewer = f" ({len(rs)} seed{'s' * (len(rs) > 1)})" if len(rs) < len(seeds) else ""
            cells.append(f"{100 * sp['mean']:.1f}{std} [{100 * lo:.0f}, {100 * hi:.0f}]{fewer}")
        lines.append(f"| {label(n)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checkpoint_rows(trained: dict) -> list[dict]:
    """Last vs best checkpoint per trained model: validation accuracies of both epochs (JSON-ready)."""
    rows = []
    for (name, seed), (_, info) in trained.items():
        last, best = info["history"][-1], info["best"] or {}
        rows.append({"name": name, "model": info["label"], "seed": seed, "status": info["status"],
                     "epochs": last["epoch"], "best epoch": best.get("epoch"),
                     "best val clean": best.get("val_clean", float("nan")), "best val PGD": best.get("val_pgd"),
                     "last val clean": last["val_clean"], "last val PGD": last.get("val_pgd"),
                     "train s": round(sum(h.get("time_s", 0.0) for h in info["history"]), 1), "key": info["key"]})
    return rows


def rows_markdown(rows: list[dict], columns) -> str:
    """A markdown table of ``rows`` (dicts) restricted to ``columns``; floats with 3 decimals."""
    def fmt(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def sensitivity_markdown(study: dict) -> str:
    """Per-layer mean sigma (absolute; relative, ratio of means, in brackets) and white-box accuracy per model,
    and the model means of both relative variants (ratio of means, judged; mean of per-pair ratios, the authors'
    toolbox, shown beside it)."""
    names = list(study)
    layers = list(study[names[0]]["layer_mean"]["abs"])
    lines = ["| model | clean | PGD (own pairs) | " + " | ".join(layers) + " | mean | mean rel., per-pair ratios |",
             "|" + "---|" * (len(layers) + 5)]
    for n in names:
        r = study[n]
        cells = [f"{r['layer_mean']['abs'][l]:.4f} ({r['layer_mean']['rel'][l]:.3f})" for l in layers]
        pairs = f"{r['mean']['rel_pairs']:.3f}" if "rel_pairs" in r["mean"] else "-"
        lines.append(f"| {r['label']} | {r['clean']['accuracy']:.3f} | {r['adv']['accuracy']:.3f} | "
                     + " | ".join(cells) + f" | {r['mean']['abs']:.4f} ({r['mean']['rel']:.3f}) | {pairs} |")
    return "\n".join(lines)


def ablation_markdown(rows: list[dict], param: str) -> str:
    """Markdown table of :func:`nslib.repro.robustness.ablation` rows."""
    lines = [f"| {param} | model | status | clean | {rows[0]['pgd']['label']} [95% interval] |", "|---|---|---|---|---|"]
    for r in rows:
        p = r["pgd"]
        lines.append(f"| {r['value']:g} | {r['model']} | {r['status']} | "
                     f"{r['clean']['accuracy']:.3f} | {p['accuracy']:.3f} [{p['low']:.3f}, {p['high']:.3f}] |")
    return "\n".join(lines)


def lam_markdown(curves: dict) -> str:
    """Markdown of :func:`nslib.repro.zoo.lam_curve` results: per SNS model, each lambda's validation accuracies
    (95% Wilson intervals) and which one was chosen."""
    lines = []
    for name, c in curves.items():
        if c["fixed"]:
            lines.append(f"{label(name)}: lambda {c['lam']:g}, fixed by the settings (no choice made).")
            continue
        lines += [f"{label(name)}: lambda chosen on the validation split (seed {c['seed']}): **{c['lam']:g}**", "",
                  "| lambda | status | validation clean [95%] | validation PGD [95%] | |", "|---|---|---|---|---|"]
        for r in c["rows"]:
            cells = [f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]" if r[k] is not None else "-"
                     for k in ("val_clean", "val_pgd")]
            rejected = [j for j in c.get("rejected", []) if j["lam"] == r["lam"]]
            if r["lam"] == c["lam"]:
                note = "chosen" + (f" (every lambda fell more than lam_drop below {label(c['base'])} on some seed: "
                                   f"this one least)" if c.get("all_below_base") else "")
            elif r["lam"] == 0:
                note = "the base itself"
            else:
                note = "rejected: " + _rejection(rejected[0], label(c["base"])) if rejected else ""
            lines.append(f"| {r['lam']:g} | {r['status']} | {cells[0]} | {cells[1]} | {note} |")
        lines.append("")
    return "\n".join(lines)


def _rejection(rejected: dict, base: str) -> str:
    """Why a lambda was rejected, in words: the seeds it collapsed on, and those where it fell below its base."""
    parts = []
    if rejected["collapsed"]:
        parts.append(f"collapsed on seed(s) {', '.join(map(str, rejected['collapsed']))}")
    if rejected["below_base"]:
        parts.append("validated below " + base + " on " + ", ".join(
            f"seed {s} ({100 * gap:+.1f} points)" for s, gap in rejected["below_base"]))
    return "; ".join(parts)


def sanity_markdown(sanity: dict) -> str:
    """Markdown of :func:`sanity_checks` results per model: the eps sweep, each check, warnings, a flag."""
    lines = []
    for n, r in sanity.items():
        flag = "passes every check" if r["ok"] else "**FLAGGED: fails a check below**"
        lines.append(f"- **{label(n)}**: {flag}. {r['label']} accuracy by eps: "
                     + ", ".join(f"{e:.3g}: {a:.3f}" for e, a in r["eps_curve"]))
        lines += [f"  - {c['text']}: {'yes' if c['ok'] else 'NO'}" for c in r["checks"]]
        lines += [f"  - AutoAttack warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# the report

_PUBLISHED = """\
| data, model | method | clean | PGD | AutoAttack | source |
|---|---|---|---|---|---|
| MNIST, eps 0.3, SmallCNN class | PGD-AT | 98.5-99.4 | 89-96 | 88.5-92.8 | literature (docs/PAPER.md) |
| MNIST, eps 0.3, SmallCNN | TRADES (beta 6) | 99.2-99.48 | | 92.8-94.0 | literature (docs/PAPER.md) |
| CIFAR-10, eps 8/255, ResNet-18 | PGD-AT (early stop) | 83.9 | 53.3 (PGD-10) | 48.4 | literature (docs/PAPER.md) |
| CIFAR-10, eps 8/255, ResNet-18 | TRADES | 81-82 | | 47-48.7 | literature (docs/PAPER.md) |
"""

_ONLINE = ("not testable offline: full MNIST and CIFAR-10 need a download (torchvision), ImageNet is not "
           "supported by nslib. With internet access and a GPU: "
           "`python -m nslib reproduce --profile full --datasets mnist,cifar10 --resume`")


def _claim_rows(claim: str, results: dict) -> list[tuple[str, dict]]:
    """[(dataset, entry)] for every result file that judged ``claim``."""
    rows = []
    for dataset, nbs in results.items():
        for nb_name, rec in sorted(nbs.items()):
            entry = rec.get("claims", {}).get(claim)
            if entry:
                rows.append((dataset, {**entry, "notebook": nb_name, "params": rec.get("params", {})}))
    return rows


def claims_of(results: dict) -> dict[str, str]:
    """:data:`CLAIMS`, then every claim a result file judged that CLAIMS lacks, with its entry's "statement" (a
    new claim is reported whether or not CLAIMS names it yet)."""
    found = {c: e.get("statement", "(no statement: add one to nslib.repro.report.CLAIMS)")
             for nbs in results.values() for rec in nbs.values() for c, e in rec.get("claims", {}).items()}
    return {**CLAIMS, **{c: text for c, text in found.items() if c not in CLAIMS}}


def _claim_verdicts(results: dict) -> dict[str, dict[str, str]]:
    """{claim: {dataset: verdict}}; C5 is every other claim combined over every dataset run (key "all")."""
    table: dict[str, dict[str, str]] = {}
    for claim in claims_of(results):
        for dataset, entry in _claim_rows(claim, results) if claim != "C5" else []:
            prev = table.setdefault(claim, {}).get(dataset)
            table[claim][dataset] = combine([prev, entry["verdict"]]) if prev else entry["verdict"]
    per_dataset = [v for claim, by in table.items() for v in by.values()]
    datasets = {d for by in table.values() for d in by}
    table["C5"] = {"all": combine(per_dataset) if len(datasets) > 1 else "needs two datasets"} if per_dataset else {}
    return table


def report_verdicts(profile: str) -> dict[str, dict[str, str]]:
    """{claim: {dataset: verdict}} from the result files of a profile (C5: {"all": every claim over the datasets})."""
    results = load_results(profile)
    table = _claim_verdicts(results)
    return {claim: table.get(claim, {}) for claim in claims_of(results)}


def _headline(comparisons: list[dict]) -> str:
    """The comparison that decides a claim (:func:`nslib.verdicts.decisive`) in words: what, effect, interval, margin."""
    c = decisive(comparisons)
    if c is None:
        return ""
    n = f"{c['n_seeds']} seed(s)" + (f" x {c['n_examples']} images" if c.get("n_examples") else "")
    return f"{c['what']}: {effect_text(c)}; {n}"


def _summary(results: dict, verdicts: dict, datasets: list[str]) -> list[str]:
    """One line per claim and dataset: verdict, and the comparison that decides it (effect, 95% interval,
    margin, seeds and images)."""
    lines = ["| claim | dataset | verdict | deciding comparison: effect [95% interval], margin; seeds x images |",
             "|---|---|---|---|"]
    for claim in claims_of(results):
        if claim == "C5":
            v = verdicts.get("C5", {}).get("all", "not run")
            lines.append(f"| C5 | {', '.join(datasets)} | **{v}** | every claim above on every dataset run |")
            continue
        entries = dict(_claim_rows(claim, results))
        for d in datasets:
            cells = (f"**{verdicts.get(claim, {}).get(d, 'not run')}** | {_headline(entries[d].get('comparisons', []))}"
                     if d in entries else "not run | -")
            lines.append(f"| {claim} | {d} | {cells} |")
    lines.append("| C1-C6 | MNIST, CIFAR-10, ImageNet | not testable offline | - |")
    seeds = {len(rec.get("params", {}).get("seeds", [])) for nbs in results.values() for rec in nbs.values()
             if rec.get("params", {}).get("seeds")}
    if seeds == {1}:
        lines += ["", "**One seed**: the spread over seeds is unknown, so no comparison can be decided; the "
                      "table shows each claim's main comparison (direction and size), not a verdict. Run with "
                      "`--set \"seeds=[0, 1, 2]\"` (or the cpu or full profile) for verdicts."]
    margins = {str(rec["params"]["margins"]) for nbs in results.values() for rec in nbs.values()
               if rec.get("params", {}).get("margins")}
    if margins:
        lines += ["", f"Margins (the smallest effect that matters, fixed in the configuration before the run): "
                      f"{'; '.join(sorted(margins))} (accuracy as a fraction: 0.01 is 1 point)."]
    return lines


def _forest(results: dict, datasets: list[str], root: Path) -> list[str]:
    """The forest plot of every judged comparison, one panel per claim and dataset; the report's lines for it."""
    groups = {}
    for claim in claims_of(results):
        for d, entry in _claim_rows(claim, results) if claim != "C5" else []:
            comps = judged(entry.get("comparisons", []))
            if comps:
                unit = comps[0].get("unit") or "effect"
                groups.setdefault(f"{claim} on {d} ({'points' if unit == 'accuracy' else unit})", []).extend(comps)
    if not groups:
        return []
    forest.plot_forest(groups, path=root / "forest")
    return ["![every judged comparison: effect and 95% interval, zero and the margin drawn](forest.png)", ""]


def _claim_section(claim: str, text: str, results: dict, verdicts: dict, datasets: list[str], root: Path) -> list[str]:
    lines = [f"## {claim}: {text}", ""]
    if claim == "C5":
        lines += ["C5 asks whether the claims hold on *every* dataset run: it holds when every claim holds on every "
                  "dataset, does not hold when any claim does not hold on any of them, and is inconclusive "
                  "otherwise (one dataset: it needs two). Per dataset:", ""]
        lines += [f"- {d}: " + ", ".join(f"{c} **{by[d]}**" for c, by in verdicts.items() if c != "C5" and d in by)
                  for d in datasets]
        return lines + [f"- MNIST (full), CIFAR-10, ImageNet: **{_ONLINE}**", ""]
    rows = _claim_rows(claim, results)
    if not rows:
        lines += ["Not run in this profile (no result file carries this claim).", ""]
    for dataset, entry in rows:
        lines += [f"### {dataset} ({entry['notebook']}): **{entry['verdict']}**", ""]
        if entry.get("summary"):
            lines += [entry["summary"], ""]
        lines += [f"- {describe(c)}" for c in entry.get("comparisons", [])] + [""] * bool(entry.get("comparisons"))
        for fig in entry.get("figures", []):
            rel = os.path.relpath(fig, root) if os.path.isabs(fig) else fig
            lines.append(f"![{Path(fig).stem}]({rel})")
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(entry["params"].items()))
        lines += [""] * bool(entry.get("figures")) + [f"<sub>parameters: {params}</sub>", ""]
    return lines + [f"MNIST (full), CIFAR-10, ImageNet: {_ONLINE}", ""]


def _sections(results: dict, datasets: list[str], kinds, heading) -> list[str]:
    """Every result section whose kind is in ``kinds``, under ``heading(title, dataset, notebook)``."""
    lines = []
    for d in datasets:
        for nb_name, rec in sorted(results[d].items()):
            for sec in rec.get("sections", []):
                if sec["kind"] in kinds:
                    lines += [heading(sec["title"], d, nb_name), "", sec["markdown"], ""]
    return lines


def _runtimes(profile: str, datasets: list[str]) -> list[str]:
    """Wall time of each notebook, from the done-markers the runner writes (``NN_name.done.json``)."""
    lines = ["| dataset | notebook | seconds | device |", "|---|---|---|---|"]
    for d in datasets:
        for marker in sorted(profile_dir(profile, d).glob("*.done.json")):
            m = load_json(marker)
            lines.append(f"| {d} | {m['notebook'].removesuffix('.ipynb')} | {m['runtime_s']:.0f} | "
                         f"{m['provenance'].get('device_name')} |")
    if len(lines) == 2:
        lines.append("| - | notebooks run by hand or by nbval record no runtime | - | - |")
    return lines


def write_report(profile: str) -> Path:
    """Assemble ``outputs/<profile>/REPORT.md`` from the notebooks' result files (atomic write); its path.

    A summary (each claim's verdict with the direction and size of its main comparison), one section per
    claim C1-C6 with the comparisons behind it (means, spread over seeds, intervals, the difference the run
    could have detected), its figures and parameters; the baselines beside the published numbers; notebook
    00's check; the evaluation sanity checks; the notebooks' runtimes.
    """
    results = load_results(profile)
    root = profile_dir(profile)
    verdicts = _claim_verdicts(results)
    datasets = sorted(results)
    prov = provenance(device())
    lines = [f"# Reproduction report: {profile} profile", "",
             f"Written {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')} by nslib "
             f"{prov['nslib_version']} (torch {prov['torch_version']}, {prov['device_name']}). Paper: Zhang, Liu "
             f"et al., *Interpreting and Improving Adversarial Robustness of DNNs with Neuron Sensitivity*, "
             f"IEEE TIP 2021; the claims and definitions this kit tests are in `docs/PAPER.md`. The paper's own "
             f"tables are not available offline: these verdicts test its claims on the datasets available here, "
             f"not its numbers.", "", "## Verdict rule", "", RULE, "", "## Summary", "",
             *_summary(results, verdicts, datasets), "", *_forest(results, datasets, root),
             f"## {SECTION_KINDS['recipe']}", "",
             *(_sections(results, datasets, {"recipe"}, lambda t, d, nb: f"### {d} ({nb})")
               or ["Not run (01_train_models writes it).", ""])]
    for claim, text in claims_of(results).items():
        lines += _claim_section(claim, text, results, verdicts, datasets, root)
    lines += [f"## {SECTION_KINDS['baselines']}", "",
              "Not comparable: the published numbers come from MNIST and CIFAR-10 with full training budgets; "
              "ours from Fashion-MNIST and a 5,000-image MNIST subset, and in the quick profile from a few "
              "epochs on a few thousand images. They are context for whether our baselines behave like "
              "adversarially trained models, not targets.", "", "Published (not from this paper):", "",
              _PUBLISHED, *_sections(results, datasets, {"baselines"}, lambda t, d, nb: f"Ours, {d} ({nb}):")]
    lines += [f"## {SECTION_KINDS['check']}", "",
              *(_sections(results, datasets, {"check"}, lambda t, d, nb: f"### {d}") or ["Not run.", ""])]
    lines += [f"## {SECTION_KINDS['sanity']}", "",
              *(_sections(results, datasets, {"sanity"}, lambda t, d, nb: f"### {d} ({nb})")
                or ["Not run (05_sns_robustness writes it).", ""])]
    other = {k for k, heading in SECTION_KINDS.items() if heading is None}
    lines += ["## Other sections", "", *_sections(results, datasets, other, lambda t, d, nb: f"### {t} ({d}, {nb})")]
    lines += ["## Runtimes", "", *_runtimes(profile, datasets)]
    path = root / "REPORT.md"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path
