"""MLflow runs for ingestions and searches; the public entry to the MLflow adapters.

A thin adapter: the core (store, search, ingest) never imports MLflow; this module turns its
results into MLflow params, metrics, tags, dataset inputs, tables and artifacts. MLflow is
imported inside the functions, so importing this module is cheap.

An ingest run tags the store it recorded (``tracking_session.TAG_*``) and logs its bundle
(``tracking_bundles``), or names the earlier run holding the same state. The logged model is
``tracking_model``'s; this module re-exports the names callers import from it
(``log_model``, ``download_bundle``, the tracking URI, the tags).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_rag.search import redact_emails
from mlflow_rag.store.manifest import read_manifest
from mlflow_rag.store.store import store_address
from mlflow_rag.tracking_bundles import BUNDLE_ARTIFACT_PATH, content_digest, scratch_dir
from mlflow_rag.tracking_bundles import download_bundle as download_bundle
from mlflow_rag.tracking_model import BASE_REQUIREMENTS as BASE_REQUIREMENTS
from mlflow_rag.tracking_model import log_model as log_model
from mlflow_rag.tracking_session import (
    TAG_BUNDLE_RUN_ID,
    TAG_CONTENT_DIGEST,
    TAG_DESCRIPTION,
    TAG_DOCUMENTS,
    TAG_EMBEDDER,
    TAG_GENERATION,
    TAG_INGEST_ID,
    TAG_PREVIOUS_GENERATION,
    TAG_PREVIOUS_RUN_ID,
    TAG_RUN_TYPE,
    TAG_STORE_ID,
    TAG_STORE_PATH,
    log_params_once,
    mlflow_session,
    start_run,
)
from mlflow_rag.tracking_session import TrackingError as TrackingError
from mlflow_rag.tracking_session import legacy_tracking_note as legacy_tracking_note
from mlflow_rag.tracking_session import resolve_tracking_uri as resolve_tracking_uri
from mlflow_rag.types import Hit, IngestReport

if TYPE_CHECKING:
    from mlflow_rag.store.store import Store

HITS_TABLE = "hits.json"


# Sources larger than this are fingerprinted by their file listing (path, size, mtime)
# instead of re-reading their bytes: the run must not cost a second full read of a huge corpus.
MAX_HASHED_BYTES = 512 * 1024 * 1024
MAX_DATASET_DIGEST = 36  # MLflow's limit on a dataset digest


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested settings -> ``prefix.key`` params (MLflow params are flat strings)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: json.dumps(list(value), default=str)}
    return {prefix: "" if value is None else str(value)}


# --------------------------------------------------------------------------- ingest runs


def source_table(sources: Sequence[str]) -> list[dict[str, Any]]:
    """One row per source: kind, size and a digest (sha256 of content, or of the listing)."""
    rows = []
    for source in sources:
        row: dict[str, Any] = {"source": source, "kind": "url", "files": 0, "bytes": 0,
                               "sha256": "", "digest_of": "url"}
        path = Path(source)
        if "://" not in source and path.exists():
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            sizes = [p.stat().st_size for p in files]
            row.update(kind="file" if path.is_file() else "directory", files=len(files),
                       bytes=sum(sizes))
            digest = hashlib.sha256()
            by_content = sum(sizes) <= MAX_HASHED_BYTES
            for file in files:
                relative = file.name if file == path else str(file.relative_to(path))
                digest.update(relative.encode("utf-8") + b"\0")
                if by_content:
                    with open(file, "rb") as handle:
                        while block := handle.read(1 << 20):
                            digest.update(block)
                else:
                    stat = file.stat()
                    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
                digest.update(b"\0")
            row.update(sha256=digest.hexdigest(), digest_of="content" if by_content else "listing")
        else:
            row["sha256"] = hashlib.sha256(source.encode("utf-8")).hexdigest()
        rows.append(row)
    return rows


def ingest_params(report: IngestReport) -> dict[str, str]:
    params = {
        "source_digest": report.source_digest,
        "sources": json.dumps(list(report.sources)),
        "loader": report.loader,
        "embedder": report.embedder,
        "embedder_version": report.embedder_version or "",
        "dimension": str(report.dimension),
    }
    chunker = dict(report.chunker)
    params["chunker"] = str(chunker.pop("name", chunker.pop("chunker", "")))
    params.update(_flatten("chunker", chunker))
    index = dict(report.index)
    params["index_type"] = str(index.pop("kind", index.pop("type", "")))
    index_params = index.pop("params", {})
    params.update(_flatten("index", {**index, **dict(index_params or {})}))
    return params


def ingest_metrics(report: IngestReport, *, store_bytes: int | None = None) -> dict[str, float]:
    metrics: dict[str, float] = {
        "documents_new": report.documents_new,
        "documents_updated": report.documents_updated,
        "documents_unchanged": report.documents_unchanged,
        "documents_failed": report.documents_failed,
        "files_skipped": sum(report.skipped.values()),  # of types no loader reads
        "chunks": report.chunks,
        "vectors_embedded": report.vectors_embedded,
        "vectors_cached": report.vectors_cached,
        "tokens": report.tokens,
        "cost_usd": report.cost_usd,
        "chunks_per_second": report.chunks_per_second,
        "seconds_total": report.total_seconds,
        "store_bytes": store_bytes if store_bytes is not None else report.store_bytes,
    }
    for stage, seconds in report.seconds.items():
        metrics[f"seconds_{stage}"] = float(seconds)
    return {k: float(v) for k, v in metrics.items()}


def previous_ingest_run(client: Any, experiment_id: str, store_id: str,
                        *, exclude_run_id: str | None = None) -> Any | None:
    """The latest ingest run of this store in the experiment (other than ``exclude_run_id``)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_STORE_ID}` = '{store_id}' and tags.`{TAG_RUN_TYPE}` = 'ingest'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return next((r for r in runs if r.info.run_id != exclude_run_id), None)


def _changed_nothing(report: IngestReport) -> bool:
    return (report.documents_new == report.documents_updated == 0
            and report.vectors_embedded == report.vectors_cached == 0)


def ingest_summary(report: IngestReport) -> str:
    """``6 new, 1 updated, 0 unchanged`` (and ``, 2 failed`` when some failed)."""
    text = (f"{report.documents_new} new, {report.documents_updated} updated, "
            f"{report.documents_unchanged} unchanged")
    return text + (f", {report.documents_failed} failed" if report.documents_failed else "")


def _ingest_description(report: IngestReport, store: Store, *, generation: int, documents: int,
                        chunks: int, run_id: str, previous: Any | None,
                        bundle_run: str | None = None) -> str:
    sources = ", ".join(f"`{s}`" for s in report.sources[:3])
    if len(report.sources) > 3:
        sources += f" and {len(report.sources) - 3} more"
    chunker = dict(report.chunker).get("name", "")
    return (
        f"Ingest of {sources} into the store `{store.name}` at "
        f"`{store_address(store)}` (store id `{store.store_id}`, generation {generation}): "
        f"{ingest_summary(report)} documents; the store holds {documents} documents and "
        f"{chunks} chunks.\n\n"
        f"Embedder `{report.embedder}` ({report.embedder_version or 'no version'}, dimension "
        f"{report.dimension}), chunker `{chunker}`, index `{dict(report.index).get('kind', '')}`."
        + (f"\n\nNothing changed since ingest run `{bundle_run}`, which holds this state's "
           f"bundle: `runs:/{bundle_run}/{BUNDLE_ARTIFACT_PATH}` (not copied again). "
           if bundle_run else
           f"\n\nThe store bundle: `runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}`. ")
        + (f"Previous ingest run of this store: `{previous.info.run_id}`."
           if previous is not None else "No earlier ingest run of this store in this experiment.")
    )


def log_ingest_run(
    report: IngestReport, *, store: Store, experiment: str | None, tracking_uri: str | None,
    run_name: str | None = None, tags: Mapping[str, str] | None = None,
) -> str:
    """Record an ingestion as an MLflow run; returns the run id.

    Params: source digest, loader, chunker (+ settings), embedder (name, version, dimension),
    index (type + params). Metrics: document/chunk/vector counts, tokens, cost, seconds per
    stage, chunks per second, store bytes. Input: the sources as a dataset with their digests.
    Artifacts: a consistent snapshot of the store (``store/``, with ``manifest.json`` and file
    hashes) and the report itself (``ingest_report.json``). An ingest that changed nothing,
    leaving the store as the previous ingest run of it in the experiment recorded
    (:func:`content_digest`), copies no second bundle: its tag ``mlflow_rag.bundle_run_id``
    names the run that holds it (:func:`download_bundle` follows it).
    """
    import pandas as pd

    with mlflow_session(tracking_uri, experiment) as mlflow, scratch_dir(
        store.root, "ingest_run"
    ) as tmp:
        client = mlflow.MlflowClient()
        stats = store.stats()
        digest = content_digest(store)
        if run_name is None and not os.environ.get("MLFLOW_RUN_ID"):  # not `mlflow run`'s run
            run_name = f"ingest {store.name}: {ingest_summary(report)}"
        with start_run(mlflow, run_name) as run:
            previous = previous_ingest_run(client, run.info.experiment_id, store.store_id,
                                           exclude_run_id=run.info.run_id)
            bundle_run = None
            if (digest is not None and previous is not None and _changed_nothing(report)
                    and previous.data.tags.get(TAG_CONTENT_DIGEST) == digest):
                bundle_run = previous.data.tags.get(TAG_BUNDLE_RUN_ID) or previous.info.run_id
            bundle = None
            if bundle_run is None:
                # Snapshot before tagging: the tags must name the generation the bundle holds.
                bundle = store.snapshot(Path(tmp) / BUNDLE_ARTIFACT_PATH)
                manifest = read_manifest(bundle)
                generation = manifest.generation if manifest else report.store_generation
                bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            else:
                generation, bundle_bytes = stats.generation, 0
            run_tags = {
                TAG_RUN_TYPE: "ingest",
                TAG_STORE_ID: store.store_id,
                TAG_EMBEDDER: report.embedder,
                TAG_DOCUMENTS: str(stats.documents),
                TAG_GENERATION: str(generation),
                # 0 is the empty store: no earlier ingest run of this store was logged here.
                TAG_PREVIOUS_GENERATION: previous.data.tags.get(TAG_GENERATION, "0")
                if previous else "0",
                TAG_STORE_PATH: store_address(store),
                **(dict(tags) if tags else {}),
            }
            if report.ingest_id:
                run_tags[TAG_INGEST_ID] = report.ingest_id
            if previous is not None:
                run_tags[TAG_PREVIOUS_RUN_ID] = previous.info.run_id
            if digest is not None:
                run_tags[TAG_CONTENT_DIGEST] = digest
            if bundle_run is not None:
                run_tags[TAG_BUNDLE_RUN_ID] = bundle_run
            if TAG_DESCRIPTION not in run.data.tags:  # a description someone wrote stays
                run_tags[TAG_DESCRIPTION] = _ingest_description(
                    report, store, generation=generation, documents=stats.documents,
                    chunks=stats.chunks, run_id=run.info.run_id, previous=previous,
                    bundle_run=bundle_run)
            mlflow.set_tags(run_tags)
            log_params_once(mlflow, ingest_params(report))
            mlflow.log_metrics(ingest_metrics(report, store_bytes=report.store_bytes or bundle_bytes))
            sources = pd.DataFrame(source_table(report.sources),
                                   columns=["source", "kind", "files", "bytes", "sha256",
                                            "digest_of"])
            with warnings.catch_warnings():
                # MLflow hints that integer columns cannot hold missing values: ours never do.
                warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
                mlflow.log_input(_sources_dataset(mlflow, sources, report), context="ingest")
            if report.failures:
                mlflow.log_table(
                    pd.DataFrame([dataclasses.asdict(f) for f in report.failures]),
                    artifact_file="failures.json",
                )
            mlflow.log_text(json.dumps(dataclasses.asdict(report), indent=2, default=str),
                            "ingest_report.json")
            if bundle is not None:
                mlflow.log_artifacts(str(bundle), artifact_path=BUNDLE_ARTIFACT_PATH)
            return str(run.info.run_id)


def _sources_dataset(mlflow: Any, table: Any, report: IngestReport) -> Any:
    """The sources table as an MLflow dataset with the ingest's digest. One path or URL is
    also its dataset source; several sources (or one MLflow cannot resolve) only the table."""
    import warnings

    from mlflow.exceptions import MlflowException

    source: str | None = None
    if len(report.sources) == 1:
        single = report.sources[0]
        source = single if "://" in single else str(Path(single).resolve())
    digest = report.source_digest[:MAX_DATASET_DIGEST] or None
    with warnings.catch_warnings():
        # A local path matches two registered source types; MLflow picks one and warns.
        warnings.simplefilter("ignore", UserWarning)
        try:
            return mlflow.data.from_pandas(table, source=source, name="sources", digest=digest)
        except MlflowException:
            return mlflow.data.from_pandas(table, name="sources", digest=digest)


# --------------------------------------------------------------------------- search runs


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy for two numbers."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def search_hits_table(
    queries: Sequence[str], hits_per_query: Sequence[Sequence[Hit]], *,
    redact: Callable[[str], str] | None = redact_emails,
) -> list[dict[str, Any]]:
    rows = []
    for i, (query, hits) in enumerate(zip(queries, hits_per_query, strict=True)):
        shown = redact(query) if redact else query
        if not hits:  # a query without hits still appears in the table
            rows.append({"query_index": i, "query": shown, "rank": None, "score": None,
                         "chunk_id": None, "document_id": None, "chunk_type": None,
                         "source_path": None, "text": None})
        for hit in hits:
            rows.append({"query_index": i, "query": shown, "rank": hit.rank, "score": hit.score,
                         "chunk_id": hit.chunk_id, "document_id": hit.document_id,
                         "chunk_type": hit.chunk_type, "source_path": hit.source_path,
                         "text": hit.text})
    return rows


def log_search_run(
    queries: Sequence[str], hits_per_query: Sequence[Sequence[Hit]], *,
    latencies_ms: Sequence[float], params: Mapping[str, Any], experiment: str | None,
    tracking_uri: str | None, run_name: str | None = None,
    tags: Mapping[str, str] | None = None, redact: Callable[[str], str] | None = redact_emails,
) -> str:
    """Record a retrieval run: the queries and hits as a table (``hits.json``), latency
    metrics (p50/p95/mean ms) and params (mode, k, filters, embedder...). Returns the run id.

    Queries pass through ``redact`` (e-mail addresses by default) before they are logged.
    """
    import pandas as pd

    if len(queries) != len(hits_per_query) or len(queries) != len(latencies_ms):
        raise ValueError(
            f"{len(queries)} queries, {len(hits_per_query)} hit lists and {len(latencies_ms)} "
            "latencies: give one of each per query"
        )
    if not queries:
        raise ValueError("log_search_run needs at least one query")
    with mlflow_session(tracking_uri, experiment) as mlflow, start_run(mlflow, run_name) as run:
        mlflow.set_tags({TAG_RUN_TYPE: "search", **(dict(tags) if tags else {})})
        flat: dict[str, str] = {}
        for key, value in params.items():
            if isinstance(value, Mapping):
                flat[key] = json.dumps(value, sort_keys=True, default=str)
            else:
                flat[key] = "" if value is None else str(value)
        log_params_once(mlflow, flat)
        latencies = [float(x) for x in latencies_ms]
        mlflow.log_metrics({
            "latency_p50_ms": _percentile(latencies, 0.50),
            "latency_p95_ms": _percentile(latencies, 0.95),
            "latency_mean_ms": statistics.fmean(latencies),
            "queries": float(len(queries)),
            "hits_mean": statistics.fmean(len(h) for h in hits_per_query),
        })
        table = pd.DataFrame(
            search_hits_table(queries, hits_per_query, redact=redact),
            columns=["query_index", "query", "rank", "score", "chunk_id", "document_id",
                     "chunk_type", "source_path", "text"],
        )
        mlflow.log_table(table, artifact_file=HITS_TABLE)
        return str(run.info.run_id)


def runs_of_ingests(
    ingest_ids: Sequence[str], *, tracking_uri: str | None,
) -> dict[str, list[dict[str, str]]]:
    """Ingest id -> the MLflow runs tagged with it (run id, experiment, run name), in every
    experiment of the tracking server: lineage's last link."""
    if not ingest_ids:
        return {}
    with mlflow_session(tracking_uri, None) as mlflow:
        client = mlflow.MlflowClient()
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = [  # tag filters take "=" only: one search per ingest (ids are hex)
            run for ingest_id in dict.fromkeys(ingest_ids) if experiments
            for run in client.search_runs(
                experiments, filter_string=f"tags.`{TAG_INGEST_ID}` = '{ingest_id.replace(chr(39), '')}'",
                max_results=1000)
        ]
    out: dict[str, list[dict[str, str]]] = {}
    for run in runs:
        out.setdefault(run.data.tags[TAG_INGEST_ID], []).append({
            "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
            "run_name": run.info.run_name or ""})
    return out
