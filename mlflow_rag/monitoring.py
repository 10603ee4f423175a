"""``mlflow-rag report``: what a store's query log and answer tables say about use, as pure
functions over the rows a backend streams (``store.monitoring_rows``). Nothing here reads a
database or imports mlflow; ``tracking_report`` logs the result as a run.

Figures: query volume per (UTC) day, the zero-hit rate, latency percentiles per stage
(embed, retrieve, generate and their sum for answers, the served RAG model's included; search
when a logged query's metadata has a number ``latency_ms``), tokens and cost, the documents
most retrieved and those never retrieved, feedback per day, and the top failing queries
(zero hits or thumbs down), their text as stored: already redacted.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from mlflow_rag.errors import InvalidInput
from mlflow_rag.store.monitoring_rows import MonitoringRows

PERCENTILES = (50, 90, 95, 99)
STAGES = ("embed", "retrieve", "generate")  # the generations table's *_ms columns, in order
TOP = 10  # rows of each ranked list (most retrieved documents, failing queries)


def since_timestamp(*, since: str | None, days: float | None,
                    now: datetime | None = None) -> str:
    """The lower bound as a stored timestamp compares ("" for everything): ``since`` an ISO
    date or date-time (UTC when it names no zone), or the last ``days`` days."""
    if since is not None and days is not None:
        raise InvalidInput("give --since or --days, not both")
    if days is not None:
        if isinstance(days, bool) or not math.isfinite(days) or days < 0:
            raise InvalidInput(f"--days must be a non-negative number, got {days!r}")
        start = (now or datetime.now(timezone.utc)) - timedelta(days=days)
        return start.isoformat(timespec="microseconds")
    if since is None:
        return ""
    try:
        parsed = datetime.fromisoformat(since)
    except ValueError:
        raise InvalidInput(f"--since must be an ISO date or date-time such as 2026-12-01 or "
                           f"2026-12-01T08:00:00+00:00, got {since!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="microseconds")


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """count, p50/p90/p95/p99 (linear interpolation) and max of ``values``; None if empty."""
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    out: dict[str, float] = {"count": float(array.size)}
    for p, value in zip(PERCENTILES, np.percentile(array, PERCENTILES), strict=True):
        out[f"p{p}"] = round(float(value), 3)
    out["max"] = round(float(array.max()), 3)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _metadata(text: str) -> dict[str, Any]:
    """A logged query's metadata, parsed only when it holds what a report reads (most
    logged queries do not: no JSON to parse)."""
    if "latency_ms" not in text and "output_id" not in text and "served_answer" not in text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class _Answers:
    """Answers as they stream by: the ``generations`` rows, and the served RAG model's of
    query logs written before served answers got them (in their query's metadata only)."""

    def __init__(self, per_day: dict[str, Counter[str]],
                 latencies: dict[str, list[float]]) -> None:
        self.per_day, self.latencies = per_day, latencies
        self.count = self.served = self.input_tokens = self.output_tokens = 0
        self.cost = 0.0
        self.generators: Counter[str] = Counter()

    def add(self, *, day: str, generator: str, tokens_in: Any, tokens_out: Any, cost: Any,
            stage_ms: Sequence[float | None]) -> None:
        self.count += 1
        self.per_day[day]["answers"] += 1
        self.generators[generator] += 1
        self.input_tokens += int(_number(tokens_in) or 0)
        self.output_tokens += int(_number(tokens_out) or 0)
        self.cost += _number(cost) or 0.0
        for stage, ms in zip(STAGES, stage_ms, strict=True):
            if ms is not None:  # a stage not recorded is left out, not counted as 0
                self.latencies[stage].append(float(ms))
        if all(ms is not None for ms in stage_ms):
            self.latencies["answer"].append(float(sum(ms for ms in stage_ms if ms is not None)))

    def add_served(self, day: str, metadata: dict[str, Any]) -> None:
        stages = metadata.get("latency_ms")
        stages = stages if isinstance(stages, dict) else {}
        self.served += 1
        self.add(day=day, generator=str(metadata.get("generator") or "unknown"),
                 tokens_in=metadata.get("input_tokens"), tokens_out=metadata.get("output_tokens"),
                 cost=metadata.get("cost_usd"), stage_ms=[_number(stages.get(s)) for s in STAGES])


def summarize(rows: MonitoringRows, *, since: str = "", top: int = TOP) -> dict[str, Any]:
    """The report as a JSON-ready dict. Feedback is read first (it is small) so the query
    stream is read once: only failing queries' text is kept."""
    feedback = list(rows.feedback)
    thumbs_down: Counter[str] = Counter(q for q, _, kind, value in feedback
                                        if kind == "thumbs" and value == 0)
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    latencies: dict[str, list[float]] = {stage: [] for stage in (*STAGES, "answer", "search")}
    answers = _Answers(per_day, latencies)
    for _, _, timestamp, generator, tokens_in, tokens_out, cost, *stage_ms in rows.generations:
        answers.add(day=timestamp[:10], generator=generator, tokens_in=tokens_in,
                    tokens_out=tokens_out, cost=cost, stage_ms=stage_ms)
    queries = zero_hits = 0
    failing: dict[str, Counter[str]] = defaultdict(Counter)
    for query_id, timestamp, text, metadata_json, hits in rows.queries:
        queries += 1
        day = per_day[timestamp[:10]]
        day["queries"] += 1
        if hits == 0:
            zero_hits += 1
            day["zero_hit"] += 1
            failing[text]["zero_hits"] += 1
        if query_id in thumbs_down:
            failing[text]["thumbs_down"] += thumbs_down[query_id]
        metadata = _metadata(metadata_json)
        if metadata.get("served_answer") is True:  # its generations row was counted above
            answers.served += 1
        elif metadata.get("output_id"):  # served before served answers had generations rows
            answers.add_served(timestamp[:10], metadata)
        elif (search_ms := _number(metadata.get("latency_ms"))) is not None:
            latencies["search"].append(search_ms)
    documents = list(rows.documents)
    return {
        "since": since or None,
        "queries": queries,
        "answers": answers.count,
        "served_answers": answers.served,
        "zero_hit_queries": zero_hits,
        "zero_hit_rate": zero_hits / queries if queries else 0.0,
        "volume_per_day": [
            {"day": day, "queries": c["queries"], "answers": c["answers"],
             "zero_hit": c["zero_hit"]} for day, c in sorted(per_day.items())],
        "latency_ms": {stage: stats for stage, values in latencies.items()
                       if (stats := percentiles(values)) is not None},
        "tokens": {"input": answers.input_tokens, "output": answers.output_tokens},
        "cost_usd": round(answers.cost, 8),
        "generators": dict(sorted(answers.generators.items())),
        "documents": _documents(documents, top=top),
        "feedback": _feedback(feedback),
        "failing_queries": _failing(failing, top=top),
    }


def _documents(rows: Iterable[tuple[str, str, int]], *, top: int) -> dict[str, Any]:
    rows = list(rows)
    retrieved = sorted((r for r in rows if r[2] > 0), key=lambda r: (-r[2], r[0]))
    never = [r for r in rows if r[2] == 0]
    return {
        "total": len(rows),
        "retrieved": len(retrieved),
        "never_retrieved": len(never),
        "most_retrieved": [{"document_id": d, "source_path": s, "queries": n}
                           for d, s, n in retrieved[:top]],
        "never_retrieved_ids": [d for d, _, _ in never[:top]],
    }


def _feedback(rows: Sequence[tuple[str, str, str, float]]) -> dict[str, Any]:
    days: dict[str, dict[str, Any]] = {}
    for _, timestamp, kind, value in rows:
        day = days.setdefault(timestamp[:10], {"day": timestamp[:10], "thumbs_up": 0,
                                               "thumbs_down": 0, "scores": []})
        if kind == "thumbs":
            day["thumbs_up" if value else "thumbs_down"] += 1
        else:
            day["scores"].append(value)
    per_day = [{**day, "scores": len(day["scores"]),
                "mean_score": _mean(day["scores"])} for _, day in sorted(days.items())]
    scores = [value for _, _, kind, value in rows if kind != "thumbs"]
    up = sum(d["thumbs_up"] for d in per_day)
    down = sum(d["thumbs_down"] for d in per_day)
    return {"count": len(rows), "thumbs_up": up, "thumbs_down": down,
            "thumbs_up_rate": up / (up + down) if up + down else None,
            "scores": len(scores), "mean_score": _mean(scores), "per_day": per_day}


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _failing(failing: dict[str, Counter[str]], *, top: int) -> list[dict[str, Any]]:
    ranked = sorted(failing.items(), key=lambda item: (
        -(item[1]["zero_hits"] + item[1]["thumbs_down"]), item[0]))
    return [{"query": text, "zero_hits": c["zero_hits"], "thumbs_down": c["thumbs_down"]}
            for text, c in ranked[:top]]


def is_empty(report: dict[str, Any]) -> bool:
    return not report["queries"] and not report["answers"] and not report["feedback"]["count"]


def metrics(report: dict[str, Any]) -> dict[str, float]:
    """The report's scalar figures, named as MLflow metrics."""
    out: dict[str, float] = {
        "queries": report["queries"], "answers": report["answers"],
        "served_answers": report["served_answers"],
        "zero_hit_rate": report["zero_hit_rate"],
        "input_tokens": report["tokens"]["input"], "output_tokens": report["tokens"]["output"],
        "cost_usd": report["cost_usd"],
        "documents_never_retrieved": report["documents"]["never_retrieved"],
        "feedback": report["feedback"]["count"],
        "thumbs_up": report["feedback"]["thumbs_up"],
        "thumbs_down": report["feedback"]["thumbs_down"],
    }
    if report["feedback"]["mean_score"] is not None:
        out["mean_score"] = report["feedback"]["mean_score"]
    for stage, stats in report["latency_ms"].items():
        for name in ("p50", "p95", "p99"):
            out[f"{stage}_ms_{name}"] = stats[name]
    return out


def render_text(report: dict[str, Any], *, location: str) -> str:
    """The report for a terminal."""
    since = f"since {report['since']}" if report["since"] else "all time"
    lines = [f"report of {location} ({since})"]
    if is_empty(report):
        lines.append("no queries, answers or feedback logged"
                     + (" in this period" if report["since"] else "")
                     + ": log queries with `search --log-query` (or serving's query log) "
                       "and answers with `ask`")
        return "\n".join(lines)
    served = f" ({report['served_answers']} served)" if report["served_answers"] else ""
    lines.append(f"queries: {report['queries']}  answers: {report['answers']}{served}  zero hits: "
                 f"{report['zero_hit_queries']} ({100 * report['zero_hit_rate']:.1f}%)")
    lines.append("per day:")
    lines += [f"  {d['day']}  queries {d['queries']}  answers {d['answers']}  "
              f"zero-hit {d['zero_hit']}" for d in report["volume_per_day"]]
    if report["latency_ms"]:
        lines.append(f"latency (ms)  {'n':>6} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
        lines += [f"  {stage:<10}  {int(s['count']):>6} {s['p50']:>9.2f} {s['p95']:>9.2f} "
                  f"{s['p99']:>9.2f} {s['max']:>9.2f}" for stage, s in report["latency_ms"].items()]
    generators = ", ".join(f"{name} {n}" for name, n in report["generators"].items()) or "none"
    lines.append(f"tokens: input {report['tokens']['input']}, output "
                 f"{report['tokens']['output']}; cost ${report['cost_usd']:.6f} "
                 f"(generators: {generators})")
    docs = report["documents"]
    lines.append(f"documents: {docs['total']}, retrieved {docs['retrieved']}, never retrieved "
                 f"{docs['never_retrieved']}")
    if docs["most_retrieved"]:
        lines.append("most retrieved (queries  document):")
        lines += [f"  {d['queries']:>6}  {d['document_id']}" for d in docs["most_retrieved"]]
    fb = report["feedback"]
    mean = f"{fb['mean_score']}" if fb["mean_score"] is not None else "-"
    lines.append(f"feedback: {fb['count']} (thumbs up {fb['thumbs_up']}, down "
                 f"{fb['thumbs_down']}; scores {fb['scores']}, mean {mean})")
    lines += [f"  {d['day']}  up {d['thumbs_up']}  down {d['thumbs_down']}  scores "
              f"{d['scores']}" for d in fb["per_day"]]
    if report["failing_queries"]:
        lines.append("failing queries (zero hits / thumbs down):")
        lines += [f"  {q['zero_hits']:>3} / {q['thumbs_down']:<3} {q['query']}"
                  for q in report["failing_queries"]]
    return "\n".join(lines)
