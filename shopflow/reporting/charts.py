"""The run report's charts: static SVG files drawn with matplotlib.

Static images, not a JavaScript charting library: the page must render offline, from a file
or a mail attachment, with no CDN, and stay small (a few KB a chart). Text stays text in the
SVG (`svg.fonttype: none`), so the numbers on a chart can be searched and read by a test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: never pick an interactive backend
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

STYLE: dict[Any, Any] = {  # matplotlib rcParams (typed as a closed set of literal keys)
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
CHAMPION, CHALLENGER, VALID = "#8a8f98", "#1f6feb", "#d1242f"


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="svg")
    plt.close(fig)
    return path


def smoothed(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing): a noisy
    per-step loss shows its trend without hiding the first steps."""
    out, avg = np.empty(len(values)), 0.0
    for i, value in enumerate(values):
        avg = weight * avg + (1 - weight) * value
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def learning_curves(panels: Mapping[str, Mapping[str, pd.DataFrame]], path: Path) -> Path:
    """One panel per model: the training loss per step (raw and smoothed) and the held-out
    (`valid`) loss at each checkpoint; each curve a frame with `step` and one value column."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 2.8), squeeze=False)
        for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
            for split, frame in sorted(curves.items()):
                column = next(c for c in frame.columns if c != "step")
                if split == "train":
                    ax.plot(
                        frame["step"],
                        frame[column],
                        color=CHALLENGER,
                        alpha=0.3,
                        lw=1,
                        label="train (step)",
                    )
                    ax.plot(
                        frame["step"],
                        smoothed(frame[column].tolist()),
                        color=CHALLENGER,
                        lw=2,
                        label="train (smoothed)",
                    )
                else:
                    ax.plot(
                        frame["step"],
                        frame[column],
                        color=VALID,
                        lw=2,
                        marker="o",
                        ms=4,
                        label=split,
                    )
                ax.set_ylabel(column)
            ax.set_title(title)
            ax.set_xlabel("step")
        axes[0][0].legend(frameon=False)
        return _save(fig, path)


def daily_events(counts: pd.DataFrame, path: Path) -> Path:
    """Stacked bars: events per day (rows) and type (columns)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 2.8))
        bottom = np.zeros(len(counts))
        labels = [str(day)[5:] for day in counts.index]  # MM-DD
        for column in counts.columns:
            ax.bar(labels, counts[column].to_numpy(), bottom=bottom, label=column, width=0.8)
            bottom += counts[column].to_numpy()
        ax.set_ylabel("events")
        ax.tick_params(axis="x", rotation=90)
        ax.legend(
            frameon=False,
            ncols=len(counts.columns),
            loc="lower left",
            bbox_to_anchor=(0, 1),
            fontsize=8,
        )
        return _save(fig, path)


def slice_bars(slices: Mapping[str, dict], metric: str, path: Path) -> Path:
    """Champion and challenger per slice, side by side; gated slices are marked with *."""
    names = list(slices)
    champion = [slices[n]["champion"] for n in names]
    challenger = [slices[n]["challenger"] for n in names]
    labels = [f"{n} (n={slices[n]['n']}){' *' if slices[n].get('gated') else ''}" for n in names]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.0))
        y = np.arange(len(names))
        ax.barh(y - 0.2, champion, height=0.4, color=CHAMPION, label="champion")
        ax.barh(y + 0.2, challenger, height=0.4, color=CHALLENGER, label="challenger")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel(metric)
        ax.set_xlim(0, 1)
        ax.legend(frameon=False, ncols=2, loc="lower left", bbox_to_anchor=(0, 1))
        return _save(fig, path)


def score_distributions(
    champion: np.ndarray, challenger: np.ndarray, metric: str, path: Path
) -> Path:
    """Per-query scores of both systems, and the per-query difference (challenger − champion)
    on the same queries: where the gain comes from and how many queries got worse."""
    bins = np.linspace(0, 1, 21)
    difference = challenger - champion
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.8))
        left.hist(champion, bins=bins, color=CHAMPION, alpha=0.6, label="champion")
        left.hist(challenger, bins=bins, color=CHALLENGER, alpha=0.6, label="challenger")
        left.set_xlabel(f"{metric} per query")
        left.set_ylabel("queries")
        left.legend(frameon=False)
        span = max(0.05, float(np.abs(difference).max(initial=0)))
        right.hist(difference, bins=np.linspace(-span, span, 21), color=CHALLENGER)
        right.axvline(0, color="black", lw=1)
        right.set_xlabel(f"{metric}: challenger − champion")
        worse, better = int((difference < 0).sum()), int((difference > 0).sum())
        right.set_title(f"{better} queries better, {worse} worse", fontsize=9)
        return _save(fig, path)
