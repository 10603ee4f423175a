"""Comparison plots of an evaluation (matplotlib, no display needed).

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never
through ``pyplot``: no global figure registry to leak memory in a long process, and no GUI
backend chosen behind our back on a machine with a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlflow_rag.evaluation.harness_types import VariantResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: savefig renders with Agg
    return figure


def lower_is_better(metric: str) -> bool:
    """Latencies, seconds and sizes: smaller wins."""
    return metric.endswith(("_ms", "_seconds", "_bytes"))


def metrics_by_variant(
    results: Sequence[VariantResult], metrics: Sequence[str], *, title: str | None = None
) -> Figure:
    """One horizontal bar chart per metric, a bar per variant (variants in grid order); the
    best variant on each metric is orange."""
    metrics = [m for m in metrics if any(m in r.metrics for r in results)]
    columns = max(1, min(3, len(metrics)))
    rows = max(1, -(-len(metrics) // columns))
    labels = [r.variant.label for r in results]
    height = max(2.0, 0.35 * len(labels) + 1.2)
    figure = _figure(4.2 * columns, height * rows)
    for i, metric in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, i + 1)
        values = [r.metrics.get(metric, float("nan")) for r in results]
        positions = list(range(len(labels)))
        finite = [v for v in values if v == v]  # NaN != NaN: a variant without the metric
        best = (min(finite) if lower_is_better(metric) else max(finite)) if finite else None
        colors = ["tab:orange" if v == best else "tab:blue" for v in values]
        bars = axes.barh(positions, values, color=colors)
        axes.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        axes.set_yticks(positions, labels, fontsize=8)
        axes.invert_yaxis()  # first variant on top, as in the grid file
        axes.set_title(metric, fontsize=10)
        axes.margins(x=0.2)
    if title:
        figure.suptitle(title)
    return figure


def recall_curves(results: Sequence[VariantResult]) -> Figure:
    """Recall@k against k (log scale), one line per variant."""
    figure = _figure(6.5, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    for result in results:
        points = sorted((k, result.metrics[f"recall_at_{k}"]) for k in result.ks
                        if f"recall_at_{k}" in result.metrics)
        if points:
            axes.plot([k for k, _ in points], [v for _, v in points], marker="o",
                      label=result.variant.label)
    axes.set_xscale("log")
    axes.set_xlabel("k (documents retrieved)")
    axes.set_ylabel("recall@k")
    axes.set_ylim(0, 1.02)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    axes.set_title("Recall at k")
    return figure


__all__ = ["lower_is_better", "metrics_by_variant", "recall_curves"]
