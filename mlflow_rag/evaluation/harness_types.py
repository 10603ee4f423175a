"""What the evaluation harness takes and gives: its options, and frozen records of each
ingestion, query, variant and the whole evaluation (read by ``eval_tracking`` and ``plots``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.eval_dataset import EvalDataset
from mlflow_rag.evaluation.variants import Chunking, Grid, Variant
from mlflow_rag.types import IngestReport, LoadFailure

TABLE_DEPTH = 10  # retrieved ids per query kept in the per-query table (the nDCG@10 window)


@dataclass(frozen=True)
class HarnessOptions:
    """How to run a grid. ``sources`` is the corpus when the dataset has none (questions files)."""

    work_dir: Path
    sources: tuple[str, ...] = ()
    # options of the corpus loaders, as ingest takes them (text_columns, id_column...)
    loader_options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 64  # texts per embed call, for chunks and for queries
    progress: bool = True
    table_depth: int = TABLE_DEPTH
    # where the queries are searched: "local", or "spark" (the store shipped to the
    # executors as a bundle; the same candidate lists, so the same metrics but latency)
    engine: str = "local"


@dataclass(frozen=True)
class IngestRecord:
    """One ingestion the harness ran: a chunking config x an embedder (None: chunks only)."""

    chunking: Chunking
    embedder: str | None
    store_path: Path
    report: IngestReport | None  # None for a chunks-only write (bm25-only chunking)
    seconds: float


@dataclass(frozen=True)
class QueryResult:
    """One query of one variant, for the per-query table."""

    query_id: str
    query: str
    retrieved_ids: tuple[str, ...]  # top documents, best first (up to the table depth)
    relevant_ids: tuple[str, ...]  # judged relevant (grade > 0)
    ndcg_at_10: float
    first_relevant_rank: int | None  # within the variant's k; None when none was retrieved
    latency_ms: float
    # every metric of this query (``ndcg_at_10``...), for paired tests between variants;
    # empty when the query was not evaluated (no relevant document judged)
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantResult:
    """The outcome of one variant: its metrics (quality, latency, cost) and per-query rows."""

    variant: Variant
    metrics: dict[str, float]
    per_query: tuple[QueryResult, ...]
    store_path: Path
    ks: tuple[int, ...]
    info: dict[str, str] = field(default_factory=dict)  # extra params (tokenizer, index params)


@dataclass(frozen=True)
class Candidates:
    """Ranked chunks of every query for one search (BM25, or dense in one index), in query
    order: ``(chunk_id, score)`` best first, and the search time of each query."""

    pairs: tuple[tuple[tuple[str, float], ...], ...]
    latency_ms: tuple[float, ...]


@dataclass(frozen=True)
class EvaluationResult:
    grid: Grid
    dataset: EvalDataset
    results: tuple[VariantResult, ...]
    ingests: tuple[IngestRecord, ...]
    queries_embedded: Mapping[str, int]  # embedding space -> query texts embedded
    seconds: float
    # What would make every variant score low without any fault of its own:
    corpus_failures: tuple[LoadFailure, ...] = ()  # corpus items that did not load
    relevant_missing: tuple[str, ...] = ()  # judged relevant ids that are no document
    queries_without_relevant: tuple[str, ...] = ()  # queries none of whose relevant ids is

    def best(self, metric: str) -> VariantResult:
        """The variant with the highest ``metric`` (the first one listed wins a tie)."""
        scored = [r for r in self.results if metric in r.metrics]
        if not scored:
            raise InvalidInput(f"no variant has the metric {metric!r}")
        return max(scored, key=lambda r: r.metrics[metric])
