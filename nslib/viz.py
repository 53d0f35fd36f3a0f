"""Figures (matplotlib + seaborn), one function per figure kind (E1 sensitivity per layer, E2 intervention curves,
E4 sensitive-channel maps, learning curves, accuracy bars, ablations, eps curves); each saves a PNG and a PDF.

Every figure has labelled axes and a title, is written atomically (through :mod:`nslib.store`) to
``path`` + ".png" and ".pdf" (default: ``outputs/figures/<name>``) and is returned, open, for display.

Usage::

    fig = plot_layer_sensitivity({"vanilla": s_van, "pgd-at": s_at}, path="outputs/figures/e1_sensitivity")
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
import torch
import torch.nn.functional as F

from nslib.checks import check_choice, check_images, check_positive_int, model_device
from nslib.models import eval_mode as _eval_mode
from nslib.sensitivity import capture, neuron_sensitivity, top_k
from nslib.store import atomic_write_bytes, outputs_dir

__all__ = ["save_figure", "plot_layer_sensitivity", "plot_intervention_curve", "plot_sensitive_neuron_maps",
           "plot_class_grid", "plot_learning_curves", "plot_robustness_bars", "plot_ablation", "plot_eps_curves"]


def save_figure(fig, path, dpi: int = 150) -> list[Path]:
    """Write ``fig`` to ``path``.png and ``path``.pdf atomically (a .png/.pdf suffix on path is dropped)."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".pdf"):
        path = path.with_suffix("")
    written = []
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight")
        written.append(atomic_write_bytes(path.parent / f"{path.name}.{ext}", buf.getvalue()))
    return written


def _long_table(sensitivities) -> list[dict]:
    """{model: {layer: sigma}} (or {layer: sigma}, or (sigma, dead) tuples) -> rows model/layer/sigma."""
    if not isinstance(sensitivities, Mapping) or not sensitivities:
        raise TypeError(f"sensitivities must be a non-empty dict, got {type(sensitivities).__name__}")
    if isinstance(next(iter(sensitivities.values())), torch.Tensor):
        sensitivities = {"model": sensitivities}
    rows = []
    for model_name, value in sensitivities.items():
        sigma = value[0] if isinstance(value, tuple) else value
        for layer, s in sigma.items():
            for v in s.detach().float().flatten().cpu().tolist():
                if not math.isnan(v):
                    rows.append({"model": model_name, "layer": layer, "sigma": v})
    if not rows:
        raise ValueError("sensitivities hold no finite values")
    return rows


def plot_layer_sensitivity(sensitivities, *, kind: str = "box", log: bool | None = None,
                           title: str = "Neuron sensitivity per layer", ylabel: str = "neuron sensitivity σ",
                           path=None):
    """Distribution of neuron sensitivity in each layer, one colour per model (box or violin per layer).

    Args:
        sensitivities: {model name: {layer: Tensor [neurons]}} (as from
            :func:`nslib.sensitivity.neuron_sensitivity`; ``(sigma, dead)`` tuples accepted), or one
            model's {layer: Tensor}. NaN (dead) neurons are left out.
        kind: "box" or "violin".
        log: log-scale y axis; None chooses it when all values are positive and span over two decades.
            With log=True, non-positive values cannot be drawn and are left out.
        title, ylabel: texts of the figure.
        path: where to save (without suffix); default ``outputs/figures/layer_sensitivity``.

    Returns: the matplotlib Figure.
    """
    import pandas as pd  # pandas and seaborn take about a second to import; only this figure uses them
    import seaborn as sns

    check_choice(kind, "kind", ("box", "violin"))
    df = pd.DataFrame(_long_table(sensitivities))
    positive = df["sigma"] > 0
    if log is None:
        log = bool(positive.all()) and df["sigma"].max() / df["sigma"].min() > 100
    if log:
        df = df[positive]
    n_layers = df["layer"].nunique()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n_layers * max(1, df["model"].nunique()) ** 0.5 + 2), 4.5))
    plot = sns.boxplot if kind == "box" else sns.violinplot
    extra = {"fliersize": 1.5} if kind == "box" else {"cut": 0, "density_norm": "width"}
    plot(data=df, x="layer", y="sigma", hue="model", ax=ax, log_scale=bool(log), **extra)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel + (" (log scale)" if log else ""))
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=45)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
    ax.legend(title="model", fontsize="small")
    fig.tight_layout()
    save_figure(fig, path if path is not None else outputs_dir("figures", "layer_sensitivity"))
    return fig


_COLORS = {"top": "tab:red", "bottom": "tab:blue", "random": "tab:gray", "matched": "tab:green"}


def plot_intervention_curve(curves, *, band: str = "minmax", ncols: int = 3, title: str | None = None, path=None):
    """Accuracy on adversarial inputs vs the number of patched neurons k, one panel per curve.

    Args:
        curves: a result of :func:`nslib.intervention.intervention_curve`, or a list of them (e.g. one
            per layer). Top and bottom are lines; random and matched are the mean over seeds with a
            band; dashed lines mark the clean and the unpatched adversarial accuracy.
        band: "minmax" (range over seeds) or "std" (mean +- one standard deviation).
        ncols: panels per row; more curves wrap into further rows (six layers in one row are
            unreadable once the figure is scaled to a page).
        title: the figure's title; default names the mode.
        path: where to save (without suffix); default ``outputs/figures/intervention_curve``.

    Returns: the matplotlib Figure.
    """
    check_choice(band, "band", ("minmax", "std"))
    if isinstance(curves, Mapping):
        curves = [curves]
    curves = list(curves)
    if not curves or not all(isinstance(c, Mapping) and "rows" in c for c in curves):
        raise TypeError("curves must be an intervention_curve result or a list of them")
    ncols = min(check_positive_int(ncols, "ncols"), len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False, sharey=True)
    axes = list(axes.flat)
    for ax in axes[len(curves):]:
        ax.remove()  # the empty slots of the last row
    for ax, curve in zip(axes, curves):
        by_sel: dict[str, dict[int, list[float]]] = {}
        for r in curve["rows"]:
            by_sel.setdefault(r["selection"], {}).setdefault(r["k"], []).append(r["accuracy"])
        for sel, points in by_sel.items():
            ks = sorted(points)
            acc = [torch.tensor(points[k], dtype=torch.float64) for k in ks]
            mean = [float(a.mean()) for a in acc]
            color = _COLORS.get(sel)
            if sel in ("random", "matched"):
                n_seeds = max(len(points[k]) for k in ks)
                ax.plot(ks, mean, marker="o", ms=3, color=color, label=f"{sel} (mean of {n_seeds} seeds)")
                if band == "minmax":
                    lo, hi = [float(a.min()) for a in acc], [float(a.max()) for a in acc]
                else:
                    sd = [float(a.std(unbiased=False)) for a in acc]
                    lo, hi = [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)]
                ax.fill_between(ks, lo, hi, color=color, alpha=0.2, linewidth=0)
            else:
                ax.plot(ks, mean, marker="o", ms=3, color=color, label=sel)
        ax.axhline(curve["clean_accuracy"], color="black", ls="--", lw=1, label="clean")
        ax.axhline(curve["adv_accuracy"], color="black", ls=":", lw=1, label="adversarial, unpatched")
        ax.set_xlabel(f"neurons patched, k (of {curve['width']})")
        ax.set_ylabel("accuracy on adversarial inputs")
        ax.set_title(f"{curve['layer']} ({curve['mode']}, {curve['n_eval']} held-out pairs)", fontsize="medium")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[len(curves) - 1].legend(fontsize="small")
    mode = curves[0]["mode"]
    fig.suptitle(title or f"Accuracy after {'restoring' if mode == 'restore' else 'zeroing'} k neurons")
    fig.tight_layout()
    save_figure(fig, path if path is not None else outputs_dir("figures", "intervention_curve"))
    return fig


def _show_image(ax, img: torch.Tensor, gray: bool = False) -> None:
    """img [C, H, W] in [0, 1] on CPU; ``gray`` shows colour images as luminance (under an overlay)."""
    if gray and img.shape[0] >= 3:
        img = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img[:3].permute(1, 2, 0).clamp(0, 1).numpy())


def plot_sensitive_neuron_maps(model, x, x_adv, layer: str, *, channels=None, sensitivity=None, k: int = 3,
                               n_images: int = 4, alpha: float = 0.55, title: str | None = None, path=None):
    """For a few images: the input, its adversarial version, and the activation maps of the most
    sensitive channels of ``layer`` on each, upsampled to the image size and overlaid on it.

    Each channel's two maps share one colour scale (over all shown images), drawn as a colour bar under
    its two columns, so a brighter map means a stronger response. The model runs in eval mode under
    ``torch.no_grad()``; its modes are restored.

    Args:
        model: maps [N, C, H, W] images in [0, 1] to logits.
        x, x_adv: benign and adversarial images [N, C, H, W] in [0, 1], same shape.
        layer: a layer with output [N, C', H', W'] (a convolutional one).
        channels: the channel indices to show; default the k most sensitive by ``sensitivity``.
        sensitivity: the layer's sigma [C']; default computed on all pairs of x, x_adv.
        k: number of channels when ``channels`` is None.
        n_images: number of images (rows), at most N.
        alpha: opacity of the overlaid maps.
        title: the figure's title; path: where to save (default ``outputs/figures/sensitive_neuron_maps``).

    Returns: the matplotlib Figure.
    """
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    n = min(check_positive_int(n_images, "n_images"), x.shape[0])
    if channels is None:
        if sensitivity is None:
            sensitivity = neuron_sensitivity(model, x, x_adv, layers=[layer])[layer]
        channels = top_k(sensitivity, k, layer=layer)
    channels = [int(c) for c in torch.as_tensor(channels).flatten().tolist()]
    if not channels:
        raise ValueError("channels must name at least one channel")
    device = model_device(model)
    with _eval_mode(model), torch.no_grad(), capture(model, [layer], detach=True) as acts:
        model(torch.cat([x[:n], x_adv[:n]]).to(device))
    a = acts[layer]
    if a.dim() != 4:
        raise ValueError(f"activation maps need a layer with output [N, C, H, W]; layer {layer!r} outputs "
                         f"shape {tuple(a.shape)}")
    bad = [c for c in channels if not 0 <= c < a.shape[1]]
    if bad:
        raise ValueError(f"channels must be in [0, {a.shape[1] - 1}] (layer {layer!r}), got {bad}")
    maps = F.interpolate(a[:, channels].float(), size=x.shape[-2:], mode="bilinear", align_corners=False).cpu()
    clean_maps, adv_maps = maps[:n], maps[n:]  # [n, len(channels), H, W]
    xs, xas = x[:n].detach().float().cpu(), x_adv[:n].detach().float().cpu()

    cols = 2 + 2 * len(channels)
    # constrained layout places colour bars that span several axes, which tight_layout cannot
    fig, axes = plt.subplots(n, cols, figsize=(1.7 * cols, 1.8 * n + 1.2), squeeze=False, layout="constrained")
    col_names = ["benign", "adversarial"]
    for c in channels:
        col_names += [f"ch {c}, benign", f"ch {c}, adv."]
    for i in range(n):
        _show_image(axes[i][0], xs[i])
        _show_image(axes[i][1], xas[i])
        for j, c in enumerate(channels):
            lo = float(torch.minimum(clean_maps[:, j].min(), adv_maps[:, j].min()))
            hi = float(torch.maximum(clean_maps[:, j].max(), adv_maps[:, j].max()))
            for col, (img, m) in enumerate(((xs[i], clean_maps[i, j]), (xas[i], adv_maps[i, j]))):
                ax = axes[i][2 + 2 * j + col]
                _show_image(ax, img, gray=True)  # colour under a colour map would be unreadable
                shown = ax.imshow(m.numpy(), cmap="inferno", alpha=alpha, vmin=lo, vmax=hi if hi > lo else lo + 1)
            if i == n - 1:  # the channel's scale, under its two columns
                bar = fig.colorbar(shown, ax=axes[:, 2 + 2 * j:4 + 2 * j], location="bottom", aspect=12)
                bar.set_label(f"ch {c}: activation\n(layer output, upsampled)", fontsize="x-small")
                bar.ax.tick_params(labelsize="x-small")
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_names[j], fontsize="small")
            if i == n - 1:
                ax.set_xlabel("width (pixels)", fontsize="x-small")
        axes[i][0].set_ylabel(f"image {i}\nheight (pixels)", fontsize="x-small")
    fig.suptitle(title or f"Most sensitive channels of {layer}: activation maps on benign vs adversarial inputs")
    save_figure(fig, path if path is not None else outputs_dir("figures", "sensitive_neuron_maps"))
    return fig


def plot_class_grid(x: torch.Tensor, y: torch.Tensor, class_names, *, n_per_class: int = 8,
                    title: str = "Training images per class", path=None):
    """A grid of the first ``n_per_class`` images of each class, one row per class, rows labelled.

    Shapes: x [N, C, H, W] in [0, 1]; y [N] int64. Saved to ``path`` (default
    ``outputs/figures/class_grid``) as PNG and PDF; returns the Figure.
    """
    check_images(x, "x")
    n_per_class = check_positive_int(n_per_class, "n_per_class")
    classes = len(class_names)
    fig, axes = plt.subplots(classes, n_per_class, figsize=(n_per_class * 0.9, classes * 0.9), squeeze=False)
    for c in range(classes):
        idx = torch.nonzero(y == c).flatten()[:n_per_class]
        for j in range(n_per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(idx):
                _show_image(ax, x[idx[j]], gray=x.shape[1] == 1)
        axes[c, 0].set_ylabel(class_names[c], rotation=0, ha="right", va="center", fontsize=8)
    for j in range(n_per_class):
        axes[-1, j].set_xlabel(f"#{j + 1}", fontsize=7)
    fig.suptitle(title)
    fig.supxlabel("example", fontsize=9)
    fig.supylabel("class", fontsize=9)
    save_figure(fig, path if path is not None else outputs_dir("figures", "class_grid"))
    return fig


def plot_learning_curves(histories, *, title: str = "Learning curves", path=None):
    """Training loss and validation accuracy per epoch, one colour per run.

    Args:
        histories: {run name: list of per-epoch records from :func:`nslib.training.train`} (records
            with ``epoch``, ``train_loss``, ``val_clean`` and, for adversarial runs, ``val_pgd``).
        title, path: the figure's title; where to save (default ``outputs/figures/learning_curves``).

    Returns: the Figure (left: training loss; right: validation accuracy, solid clean, dashed PGD).
    """
    if not isinstance(histories, Mapping) or not histories:
        raise TypeError(f"histories must be a non-empty dict of run name -> records, got {type(histories).__name__}")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, records) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = [r["epoch"] for r in records]
        ax_loss.plot(epochs, [r["train_loss"] for r in records], marker="o", color=color, label=name)
        ax_acc.plot(epochs, [r["val_clean"] for r in records], marker="o", color=color, label=f"{name}: clean")
        if any(r.get("val_pgd") is not None for r in records):
            ax_acc.plot(epochs, [r.get("val_pgd") for r in records], marker="s", ls="--", color=color,
                        label=f"{name}: PGD")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path if path is not None else outputs_dir("figures", "learning_curves"))
    return fig


# ---------------------------------------------------------------------------------------------------------
# E3 figures (robustness table, ablations, sanity curves)


def plot_robustness_bars(table, *, title: str = "Robust accuracy per attack", path=None):
    """Grouped bars: accuracy per attack (x axis), one colour per model, 95% intervals as error bars.

    A second title line says how many seeds the bars average; where a model has no row for an attack
    (Vanilla is run on a few only), its slot is hatched and says "not run" instead of being left out.

    Args:
        table: {model name: {row id: {"accuracy", "low", "high", "n_seeds"[, "label"]}}} (fractions in [0, 1]; the
            axis shows each row's "label", else its id), as
            from :func:`nslib.repro.robustness.mean_rows`: values averaged over ``n_seeds`` seeds. A row without
            ``n_seeds`` (one from :func:`nslib.repro.robustness.evaluate_model`) counts as one seed.
        title, path: the figure's title; where to save (default ``outputs/figures/robustness_bars``).

    Returns: the Figure.
    """
    if not isinstance(table, Mapping) or not table:
        raise TypeError(f"table must be a non-empty dict model -> attack -> row, got {type(table).__name__}")
    attacks = list(dict.fromkeys(a for rows in table.values() for a in rows))
    n_models = len(table)
    width = 0.8 / n_models
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(attacks) + 2), 4.4))
    for i, (name, rows) in enumerate(table.items()):
        xs = {a: j + (i - (n_models - 1) / 2) * width for j, a in enumerate(attacks)}
        run = [a for a in attacks if a in rows]
        err = [[rows[a]["accuracy"] - rows[a]["low"] for a in run],
               [rows[a]["high"] - rows[a]["accuracy"] for a in run]]
        ax.bar([xs[a] for a in run], [rows[a]["accuracy"] for a in run], width, yerr=err, capsize=2, label=name,
               color=f"C{i}")
        for a in (a for a in attacks if a not in rows):  # a gap would leave the reader to guess why
            ax.bar(xs[a], 1, width, color="none", edgecolor=f"C{i}", hatch="///", lw=0, alpha=0.5)
            ax.text(xs[a], 0.5, "not run", rotation=90, ha="center", va="center", fontsize="x-small")
    counts = sorted({int(r.get("n_seeds", 1)) for rows in table.values() for r in rows.values()})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"  # differs only if models do
    seeds = "one seed" if counts == [1] else f"mean over {n} seeds"
    bars = "95% interval over the test images" + (", averaged over seeds" if counts != [1] else "")
    labels = [next(rows[a].get("label", a) for rows in table.values() if a in rows) for a in attacks]
    ax.set_xticks(range(len(attacks)), labels, rotation=30, ha="right")
    ax.set(xlabel="attack", ylabel="accuracy (95% interval)", ylim=(0, 1))
    ax.set_title(f"{title}\n{seeds}; error bars: {bars}", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if any(a not in rows for rows in table.values() for a in attacks):
        label = "not run (model not\nevaluated under\nthis attack)"
        handles.append(Patch(facecolor="none", edgecolor="0.4", hatch="///", lw=0, label=label))
    ax.legend(handles=handles, fontsize="small", title="model", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    save_figure(fig, path if path is not None else outputs_dir("figures", "robustness_bars"))
    return fig


def plot_ablation(rows, *, param: str, metrics=("clean", "pgd"), mark=None, title: str | None = None, path=None):
    """Accuracy against one hyperparameter (e.g. SNS's lambda or k), one line per metric.

    Args:
        rows: a list of {"value": number, metric: {"accuracy", "low", "high"[, "label"]}, "collapsed": bool} (as from
            :func:`nslib.repro.robustness.ablation`). A collapsed run was stopped, so its accuracy is no
            result: it is not drawn, the lines break there, and a red cross at the bottom marks it.
        param: the hyperparameter's name (x axis label); a log axis is used when all values are
            positive and span more than a decade (a value of 0 is drawn at the left edge, labelled).
        metrics: which accuracies to draw (keys of the rows; the legend shows each one's "label" where it has one).
        mark: a value to mark with a dotted vertical line, "chosen" (SNS's lambda chosen on validation), or None.
        title, path: the figure's title; where to save (default ``outputs/figures/ablation_<param>``).

    Returns: the Figure.
    """
    if not rows:
        raise ValueError("rows must hold at least one value")
    values = [float(r["value"]) for r in rows]
    positive = [v for v in values if v > 0]
    log = len(positive) >= 2 and max(positive) / min(positive) > 10
    zero_at = min(positive) / 10 if log and positive else 0.0
    xs = [v if v > 0 or not log else zero_at for v in values]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, m in enumerate(metrics):
        # NaN at a collapsed run breaks the line there rather than drawing it into a non-result
        acc = [math.nan if r.get("collapsed") else r[m]["accuracy"] for r in rows]
        err = [[0.0 if r.get("collapsed") else r[m]["accuracy"] - r[m]["low"] for r in rows],
               [0.0 if r.get("collapsed") else r[m]["high"] - r[m]["accuracy"] for r in rows]]
        ax.errorbar(xs, acc, yerr=err, marker="o", capsize=3, label=rows[0][m].get("label", m), color=f"C{i}")
    collapsed = [x for x, r in zip(xs, rows) if r.get("collapsed")]
    if collapsed:
        ax.plot(collapsed, [0.02] * len(collapsed), ls="none", marker="x", color="red", markersize=10,
                label="collapsed (stopped, not a result)")
    if mark is not None:
        ax.axvline(xs[values.index(float(mark))], color="black", ls=":", label=f"chosen: {float(mark):g}")
    if log:
        ax.set_xscale("log")
    ax.set_xticks(xs, [("0" if v == 0 else f"{v:g}") for v in values])
    ax.set(xlabel=param, ylabel="accuracy (95% interval)", ylim=(0, 1), title=title or f"Ablation over {param}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path if path is not None else outputs_dir("figures", f"ablation_{param}"))
    return fig


def plot_eps_curves(curves, *, attack: str, title: str | None = None, path=None):
    """Robust accuracy against eps, one line per model (the sanity check: it must fall towards 0).

    Args:
        curves: {model name: [(eps, accuracy), ...]}.
        attack: the attack that ran, as a person reads it (``nslib.evaluate.attack_label(spec)``: "PGD-10").
        title, path: the figure's title (default: "Accuracy under <attack> as the radius grows"); where to save
            (default ``outputs/figures/eps_curves``).

    Returns: the Figure.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError(f"curves must be a non-empty dict model -> [(eps, accuracy)], got {type(curves).__name__}")
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (name, pts) in enumerate(curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=f"C{i}")
    title = title or f"Accuracy under {attack} as the radius grows"
    ax.set(xlabel="eps (Linf radius)", ylabel=f"accuracy under {attack}", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path if path is not None else outputs_dir("figures", "eps_curves"))
    return fig
