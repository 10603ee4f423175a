"""``mlflow-rag report`` as an MLflow run: the report's figures as metrics, the report as
``report.json``, its per-day table as an MLflow table, and matplotlib plots (volume per day,
latency percentiles per stage, feedback per day)."""

from __future__ import annotations

from typing import Any

from mlflow_rag.monitoring import metrics
from mlflow_rag.tracking_session import (
    TAG_RUN_TYPE,
    TAG_STORE_ID,
    log_params_once,
    mlflow_session,
    start_run,
)


def log_report(report: dict[str, Any], *, location: str, store_id: str,
               tracking_uri: str | None, experiment: str | None) -> str:
    """Log the report as a run; returns its id."""
    with mlflow_session(tracking_uri, experiment) as mlflow, \
            start_run(mlflow, "report") as run:
        mlflow.set_tags({TAG_RUN_TYPE: "report", TAG_STORE_ID: store_id})
        log_params_once(mlflow, {"store": location, "since": report["since"] or "all"})
        mlflow.log_metrics(metrics(report))
        mlflow.log_dict(report, "report/report.json")
        if report["volume_per_day"]:
            mlflow.log_table(_columns(report["volume_per_day"]), "report/volume_per_day.json")
        for name, figure in _figures(report).items():
            mlflow.log_figure(figure, f"report/{name}.png")
        return str(run.info.run_id)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {key: [row[key] for row in rows] for key in rows[0]}


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display: a report runs in terminals and CI
    import matplotlib.pyplot as plt

    figures: dict[str, Any] = {}
    days = report["volume_per_day"]
    if days:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = [d["day"] for d in days]
        ax.bar(labels, [d["queries"] for d in days], label="queries")
        ax.bar(labels, [d["zero_hit"] for d in days], label="zero hits")
        ax.plot(labels, [d["answers"] for d in days], "o-", color="black", label="answers")
        ax.set_ylabel("per day")
        ax.legend()
        fig.autofmt_xdate()
        figures["volume_per_day"] = fig
    stages = report["latency_ms"]
    if stages:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = list(stages)
        width = 0.8 / 3
        for i, p in enumerate(("p50", "p95", "p99")):
            ax.bar([x + i * width for x in range(len(names))], [stages[s][p] for s in names],
                   width, label=p)
        ax.set_xticks([x + width for x in range(len(names))], names)
        ax.set_ylabel("latency (ms)")
        ax.legend()
        figures["latency_percentiles"] = fig
    feedback = report["feedback"]["per_day"]
    if feedback:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels = [d["day"] for d in feedback]
        ax.bar(labels, [d["thumbs_up"] for d in feedback], label="thumbs up")
        ax.bar(labels, [-d["thumbs_down"] for d in feedback], label="thumbs down")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_ylabel("feedback per day")
        ax.legend()
        fig.autofmt_xdate()
        figures["feedback_per_day"] = fig
    for figure in figures.values():
        figure.tight_layout()
        plt.close(figure)  # logged from the object; closing frees pyplot's registry
    return figures
