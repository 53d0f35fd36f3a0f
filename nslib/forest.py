"""The forest plot of verdicts: every judged comparison as its effect and 95% interval, zero and its margin drawn.

One panel per group (a claim: its comparisons share a unit), one row per comparison, coloured by verdict, so a
reader sees at a glance which intervals clear zero, which lie below the margin, and which straddle both.

Usage::

    plot_forest({"C3 (accuracy, points)": [compare(...), compare(...)]}, path="outputs/cpu/forest")
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from nslib.viz import save_figure

__all__ = ["COLOURS", "plot_forest"]

COLOURS = {"holds": "tab:green", "does not hold": "tab:red", "inconclusive": "tab:gray"}


def _scale(c: dict) -> float:
    return 100.0 if c.get("unit") == "accuracy" else 1.0  # accuracy effects read in percentage points


def plot_forest(groups: dict, *, title: str = "Every judged comparison: effect and 95% interval", path=None):
    """A forest plot of :func:`nslib.verdicts.compare` results.

    Args:
        groups: ``{panel title: [comparison, ...]}`` (e.g. one panel per claim; accuracy effects drawn in points).
            Each comparison's ``what`` labels its row; those without an interval (one seed) draw the effect alone.
        title, path: the figure's title; where to save (.png and .pdf), or None (not saved).

    Returns: the Figure.
    Raises: ValueError naming groups when it holds no comparison.
    """
    groups = {g: list(cs) for g, cs in groups.items() if cs}
    if not groups:
        raise ValueError("groups must hold at least one comparison")
    heights = [len(cs) + 1.2 for cs in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 0.32 * sum(heights) + 1.2), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (group, comps) in zip(axes[:, 0], groups.items()):
        for i, c in enumerate(comps):
            k, y = _scale(c), len(comps) - 1 - i
            colour = COLOURS.get(c["verdict"], "black")
            if c.get("ci"):
                ax.plot([k * c["ci"][0], k * c["ci"][1]], [y, y], color=colour, lw=2.5)
            ax.plot(k * c["effect"], y, "o", color=colour, ms=6)
        margins = {_scale(c) * c["margin"] for c in comps}
        ax.axvline(0, color="black", lw=1)
        for m in margins:
            ax.axvline(m, color="tab:orange", ls="--", lw=1.2)
        ax.set_yticks(range(len(comps)), [c["what"] for c in reversed(comps)], fontsize=7)
        ax.set_ylim(-0.7, len(comps) - 0.3)
        ax.set_title(group, fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], color=col, marker="o", lw=2.5, label=v) for v, col in COLOURS.items()]
    handles += [plt.Line2D([], [], color="black", lw=1, label="zero"),
                plt.Line2D([], [], color="tab:orange", ls="--", label="margin (smallest effect that matters)")]
    axes[-1, 0].legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
