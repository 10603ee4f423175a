"""Ingest's report: seconds per stage, persisting the index at the end, the printed summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mlflow_rag.store.store import Store
from mlflow_rag.types import IngestReport


@dataclass
class Stages:
    """Seconds spent per stage, for the report."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started



def persist_index(store: Store, model_name: str, stages: Stages) -> tuple[dict[str, Any], Any]:
    """Persist the index files (timed as the "index" stage); the model's index and store stats."""
    started = time.perf_counter()
    store.flush()
    stages.add("index", started)
    final = next(m for m in store.models() if m.name == model_name)
    return {"kind": final.index_type, "params": dict(final.index_params)}, store.stats()



def printable(text: str) -> str:
    """``text`` with lone surrogates escaped, so a report line can always be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def format_report(report: IngestReport) -> str:
    """The human-readable summary the CLI prints."""
    stage_text = ", ".join(f"{k} {v:.2f}s" for k, v in report.seconds.items())
    lines = [
        f"documents: {report.documents_new} new, {report.documents_updated} updated, "
        f"{report.documents_unchanged} unchanged, {report.documents_failed} failed"
        + (f", {report.documents_deleted} deleted (gone from their sources)"
           if report.documents_deleted else ""),
        f"chunks: {report.chunks} written ({report.chunker.get('name')}); vectors: "
        f"{report.vectors_embedded} embedded, {report.vectors_cached} cached "
        f"({report.embedder}, dim {report.dimension}, index {report.index.get('kind')})",
        f"tokens: {report.tokens}, cost: ${report.cost_usd:.6f}",
        f"seconds: {stage_text} (total {report.total_seconds:.2f}s)",
    ]
    if report.skipped:
        from mlflow_rag.load._paths import NO_EXTENSION

        ordered = sorted(report.skipped.items(), key=lambda kv: (-kv[1], kv[0] == NO_EXTENSION, kv[0]))
        total = sum(report.skipped.values())
        lines.append(f"skipped: {total} file{'' if total == 1 else 's'} of types not loaded: "
                     + ", ".join(f"{ext} {count}" for ext, count in ordered))
    for failure in report.failures[:20]:
        lines.append(printable(f"failed: {failure.source_path}: {failure.reason}"))
    if len(report.failures) > 20:
        lines.append(f"... and {len(report.failures) - 20} more failures")
    return "\n".join(lines)


