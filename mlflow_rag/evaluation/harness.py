"""The evaluation harness: ingest once per chunking, search every variant, score it. No MLflow.

For a :class:`~mlflow_rag.evaluation.variants.Grid` and an
:class:`~mlflow_rag.evaluation.eval_dataset.EvalDataset`:

1. One store per chunking config under ``work_dir``. Every embedder the grid pairs with that
   chunking is ingested into the same store as its own embedding model (the store keeps
   several), so chunks are written once and every embedder embeds each chunk once. A re-run
   on the same ``work_dir`` finds the documents unchanged and the vectors cached: nothing is
   embedded again.
2. The queries are embedded once per embedding space, in batches, and the vectors are shared
   by every variant of that space (dense and hybrid, every index type and k).
3. Each variant retrieves ``k * candidate_factor`` chunks per query, rolls them up to
   documents (a document ranks where its best chunk ranks; qrels judge documents) and keeps
   the top ``k``; :func:`~mlflow_rag.evaluation.metrics.evaluate_run` scores the run.
4. Every candidate list is searched once: the BM25 list of a query and its dense list in one
   index serve the bm25 and dense variants and every hybrid variant, which fuses them with
   :func:`mlflow_rag.search.fuse` (the function hybrid search itself uses). A hybrid
   variant's latency is therefore the time of its two searches plus its fusion, measured.

Chunk sizes are counted in one tokenizer per store, whatever the embedder: all embedders of
a store must see the same chunks, or the second ingest would re-chunk (and so drop the first
embedder's vectors). The tokenizer is the model's own when the grid pairs the chunking with
an embedder that has one (MiniLM: a chunk then never exceeds what the model reads), else
the approximate tokenizer; it is part of the store's directory name.

The decisions that need no store (names, depths, tokenizers) are ``harness_plan``'s; the
options and result records ``harness_types``'. Callers import them from here too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.embed.base import Embedder, TokenizedEmbedder
from mlflow_rag.engines import ENGINES
from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.evaluation.eval_dataset import EvalDataset
from mlflow_rag.evaluation.harness_feedback import ranked_pairs, with_feedback
from mlflow_rag.evaluation.harness_plan import (
    APPROX_TOKENIZER,
    candidate_depth,
    chunk_tokenizer,
    corpus_dir_name,
    corpus_problems,
    corpus_sources,
    percentile,
    store_dir_name,
    tokenizer_of,
)
from mlflow_rag.evaluation.harness_types import (
    Candidates,
    EvaluationResult,
    HarnessOptions,
    IngestRecord,
    QueryResult,
    VariantResult,
)
from mlflow_rag.evaluation.metrics import evaluate_run
from mlflow_rag.evaluation.rollup import rollup_to_documents
from mlflow_rag.evaluation.variants import Chunking, Grid, Variant
from mlflow_rag.search import redact_emails
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.store import Store
from mlflow_rag.types import Hit, LoadFailure

# --------------------------------------------------------------------------- the harness


def _tqdm(iterable: Any = None, **kwargs: Any) -> Any:
    from tqdm import tqdm

    return tqdm(iterable, **kwargs)


def run_grid(
    grid: Grid, dataset: EvalDataset, *, options: HarnessOptions,
    on_result: Callable[[VariantResult], None] | None = None,
    on_ingest: Callable[[IngestRecord], None] | None = None,
) -> EvaluationResult:
    """Evaluate every variant of ``grid`` on ``dataset``; stores live under ``options.work_dir``.

    ``on_result`` is called with each variant's result as soon as it is scored (the MLflow
    adapter logs a child run there, so runs appear while the grid is still running).
    """
    started = time.perf_counter()
    if options.engine not in ENGINES:
        raise UnknownChoice("engine", options.engine, ENGINES)
    sources = corpus_sources(dataset, options.sources)
    if not dataset.queries:
        raise InvalidInput(f"dataset {dataset.name!r} has no queries")
    root = Path(options.work_dir) / corpus_dir_name(dataset, options.sources,
                                                    options.loader_options)
    root.mkdir(parents=True, exist_ok=True)
    query_ids = list(dataset.queries)
    texts = [dataset.queries[q] for q in query_ids]
    queries = _QueryVectors(texts, options=options)  # embedded once per space, for every store
    results: list[VariantResult] = []
    ingests: list[IngestRecord] = []
    failures: tuple[LoadFailure, ...] | None = None  # the corpus's, from the first store
    missing: tuple[str, ...] = ()
    hopeless: tuple[str, ...] = ()

    for chunking in grid.chunkings:
        with grid_store(grid, chunking, sources, root=root, options=options) as built:
            store, models, records, load_failures = (built.store, built.models, built.records,
                                                     built.failures)
            tokenizer = built.tokenizer
            if failures is None:  # every store loads the same corpus: check it once
                failures = tuple(load_failures)
                missing, hopeless = corpus_problems(store, dataset)
            for record in records:
                ingests.append(record)
                if on_ingest:
                    on_ingest(record)
            chunk_seconds = _chunking_seconds(records)
            variants = [v for v in grid.variants if v.chunking == chunking]
            # Grouped by (embedder, index type), so each index is built once. Candidate lists
            # (ids and scores only) live while this store's variants are scored.
            order = sorted(range(len(variants)),
                           key=lambda i: (variants[i].embedder or "", variants[i].index_type or ""))
            searches = _Searches(store, models, texts=texts, queries=queries, options=options,
                                 scratch=root)
            for i in order:
                variant = variants[i]
                depth = candidate_depth(variant.k, grid.candidate_factor)
                lexical, dense, embed_ms = searches.lists_for(variant, depth)
                metrics, per_query = _run_variant(
                    variant, dataset, query_ids, texts, lexical, dense, searches.doc_of,
                    ks=grid.ks_for(variant), depth=depth, options=options,
                )
                metrics["query_embed_ms"] = embed_ms
                metrics.update(_cost_metrics(store, variant, records, chunk_seconds))
                info = {"chunk_tokenizer": tokenizer or APPROX_TOKENIZER,
                        "store": store_dir_name(chunking, tokenizer)}
                if variant.embedder is not None:
                    info["embedder_version"] = store.model(variant.embedder).model_version or ""
                result = VariantResult(variant=variant, metrics=metrics, per_query=per_query,
                                       store_path=store.root, ks=grid.ks_for(variant), info=info)
                results.append(result)
                if on_result:
                    on_result(result)
    by_variant = {r.variant: r for r in results}  # back to the grid's order
    ordered = tuple(by_variant[v] for v in grid.variants)
    return EvaluationResult(
        grid=grid, dataset=dataset, results=ordered, ingests=tuple(ingests),
        queries_embedded=queries.embedded, seconds=time.perf_counter() - started,
        corpus_failures=failures or (), relevant_missing=missing,
        queries_without_relevant=hopeless,
    )


class _QueryVectors:
    """Every query embedded once per embedding space, in batches, shared by all stores."""

    def __init__(self, texts: Sequence[str], *, options: HarnessOptions) -> None:
        self.texts, self.options = texts, options
        self.vectors: dict[tuple[str, str], np.ndarray] = {}
        self.ms_per_query: dict[tuple[str, str], float] = {}
        self.embedded: dict[str, int] = {}  # embedding space -> query texts embedded

    def of(self, embedder: Embedder) -> tuple[np.ndarray, float]:
        """The queries' vectors in ``embedder``'s space, and the batch time per query (ms)."""
        space = (embedder.name, embedder.version)
        if space not in self.vectors:
            began = time.perf_counter()
            self.vectors[space] = _embed_queries(embedder, self.texts, options=self.options)
            self.ms_per_query[space] = (time.perf_counter() - began) * 1000 / len(self.texts)
            self.embedded[f"{embedder.name}:{embedder.version}"] = len(self.texts)
        return self.vectors[space], self.ms_per_query[space]


class _Searches:
    """One store's candidate lists, each searched once (ids and scores only), and what the
    roll-up and feedback need of the chunks they hold (their documents, their texts)."""

    def __init__(self, store: Store, models: Mapping[str, Embedder], *, texts: Sequence[str],
                 queries: _QueryVectors, options: HarnessOptions, scratch: Path) -> None:
        self.store, self.models, self.texts, self.queries = store, models, texts, queries
        self.options, self.scratch = options, scratch
        self.lists: dict[str, Candidates] = {}
        self.doc_of: dict[str, str] = {}  # chunk id -> document id, for the roll-up
        self.text_of: dict[str, str] = {}  # chunk id -> text, for RM3 feedback

    def lists_for(self, variant: Variant, depth: int) -> tuple[Candidates | None,
                                                               Candidates | None, float]:
        """``variant``'s BM25 and dense lists (None where it has none), after its feedback,
        and the query embedding time per query (ms)."""
        if variant.feedback != "none" and self.options.engine != "local":
            raise InvalidInput(f"feedback {variant.feedback!r} runs on the local engine only, "
                               f"not {self.options.engine!r}")
        lexical = dense = None
        vectors, embed_ms = None, 0.0
        request = Retrieval.parse(k=depth)
        if variant.mode in ("bm25", "hybrid"):
            key = f"bm25/{depth}"
            if key not in self.lists:
                self.lists[key] = self._search(texts=self.texts, request=request,
                                               desc=f"bm25 top {depth}")
            lexical = self.lists[key]
        if variant.embedder is not None:
            embedder = self.models[variant.embedder]
            vectors, embed_ms = self.queries.of(embedder)
            set_index(self.store, embedder, variant.index_type)
            key = f"dense/{embedder.name}/{variant.index_type}/{depth}"
            if key not in self.lists:
                self.lists[key] = self._search(vectors=vectors, model=embedder.name,
                                               request=request, desc=f"{embedder.name} top {depth}")
            dense = self.lists[key]
        lexical, dense = with_feedback(variant, lexical, dense, store=self.store, texts=self.texts,
                                       vectors=vectors, depth=depth, doc_of=self.doc_of,
                                       text_of=self.text_of, progress=self.options.progress)
        return lexical, dense, embed_ms

    def _search(self, **how: Any) -> Candidates:
        return _candidates(self.store, doc_of=self.doc_of, text_of=self.text_of,
                           options=self.options, scratch=self.scratch, **how)


@dataclass(frozen=True)
class GridStore:
    """One chunking's store of a grid, ingested: its embedders by spec (every one the grid
    pairs with the chunking), the ingestions run and the corpus items that failed to load."""

    store: Store
    models: dict[str, Embedder]
    records: list[IngestRecord]
    failures: list[LoadFailure]
    tokenizer: str | None


@contextmanager
def grid_store(grid: Grid, chunking: Chunking, sources: Sequence[str], *, root: Path,
               options: HarnessOptions) -> Iterator[GridStore]:
    """The store of ``chunking`` under ``root`` (made, or found from an earlier run), with
    ``sources`` chunked once and embedded once per embedder; open while the block runs. The
    retrieval harness and the answer evaluation (``evaluate-answers --variants``) both build
    their stores here."""
    embedders = grid.embedders_for(chunking)
    tokenizer = chunk_tokenizer(embedders)
    with Store.open(root / store_dir_name(chunking, tokenizer), create=True) as store:
        models, records, failures = _ingest_chunking(
            store, chunking, embedders, tokenizer, sources, options=options)
        yield GridStore(store=store, models=models, records=records, failures=failures,
                        tokenizer=tokenizer)


def _ingest_chunking(
    store: Store, chunking: Chunking, embedders: Sequence[str], tokenizer: str | None,
    sources: Sequence[str], *, options: HarnessOptions,
) -> tuple[dict[str, Embedder], list[IngestRecord], list[LoadFailure]]:
    """Chunk the corpus into ``store`` and embed it once per embedder (cached on re-runs);
    also returns the corpus items that failed to load."""
    from mlflow_rag.ingest import IngestOptions, ingest
    from mlflow_rag.ingest_embed import make_embedder

    models = {spec: make_embedder(spec, store) for spec in embedders}
    owner = next((models[spec] for spec in embedders
                  if tokenizer and tokenizer_of(spec) == tokenizer), None)
    spans = owner.token_spans if isinstance(owner, TokenizedEmbedder) else None
    records: list[IngestRecord] = []
    failures: list[LoadFailure] = []
    for spec in embedders:
        began = time.perf_counter()
        report = ingest(
            list(sources), store,
            options=IngestOptions(
                chunker=chunking.chunker, chunk_size=chunking.chunk_size,
                chunk_overlap=chunking.chunk_overlap, embedder=spec, batch_size=options.batch_size,
                loader_options=dict(options.loader_options),
            ),
            # one tokenizer for every embedder: they all must see the same chunks
            embedder=models[spec], chunk_tokenizer=spans, progress=options.progress,
        )
        records.append(IngestRecord(chunking, spec, store.root, report, time.perf_counter() - began))
        failures = failures or list(report.failures)
    if not embedders:  # bm25 only: chunks and their full-text index, no vectors
        began = time.perf_counter()
        _, failures = write_chunks_only(store, chunking, sources, progress=options.progress,
                                        loader_options=options.loader_options)
        records.append(IngestRecord(chunking, None, store.root, None, time.perf_counter() - began))
    return models, records, failures


def write_chunks_only(
    store: Store, chunking: Chunking, sources: Sequence[str], *, progress: bool = True,
    loader_options: Mapping[str, Any] | None = None,
) -> tuple[int, list[LoadFailure]]:
    """Load and chunk ``sources`` into ``store`` without embedding (BM25 needs no vectors).

    Uses the ingest pipeline's own pieces, so the documents look exactly as an ingest with an
    embedder would write them (a later ingest with an embedder finds them unchanged and only
    adds vectors). Returns the number of documents written and the items that failed to load.
    """
    from mlflow_rag.chunk.registry import get_chunker
    from mlflow_rag.errors import LoaderError
    from mlflow_rag.ingest import chunk_records, document_metadata, load_sources, write_documents

    documents, failures, _ = load_sources(sources, loader_options=loader_options,
                                          progress=progress)
    if not documents:
        raise LoaderError(f"nothing to evaluate on: no document loaded from {list(sources)}"
                          + (f"; first failure: {failures[0].reason}" if failures else ""))
    chunker = get_chunker(chunking.chunker, chunk_size=chunking.chunk_size,
                          chunk_overlap=chunking.chunk_overlap)
    config = chunker.config()
    prepared = []
    for document in documents:
        chunks = chunk_records(document, chunker)
        if not chunks:  # as ingest reports it
            failures.append(LoadFailure(document.source_path,
                                        f"document {document.id!r} gave no chunks"))
        else:
            prepared.append((document, document_metadata(document, config), chunks))
    # Stored documents the same as these are left as they are (a re-run of the harness).
    written, _ = write_documents(store, prepared, skip_unchanged=True, progress=progress)
    return written, failures


def _embed_queries(embedder: Embedder, texts: Sequence[str], *, options: HarnessOptions) -> np.ndarray:
    """Every query embedded once, in batches, in query order."""
    out = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    bar = _tqdm(total=len(texts), desc=f"embed queries ({embedder.name})", unit="query",
                disable=not options.progress, leave=False)
    with bar:
        for start in range(0, len(texts), options.batch_size):
            batch = texts[start : start + options.batch_size]
            out[start : start + len(batch)] = embedder.embed(list(batch)).vectors
            bar.update(len(batch))
    return out


def set_index(store: Store, embedder: Embedder, index_type: str | None) -> None:
    """Point the model at ``index_type``; the store rebuilds that index from SQLite on use."""
    if index_type is not None and store.model(embedder.name).index_type != index_type:
        store.ensure_model(embedder.name, embedder.dimension, index_type=index_type)


def _lexical(store: Store, texts: Sequence[str], request: Retrieval, q: int) -> list[Hit]:
    return store.lexical(texts[q], request)


def _dense(store: Store, model: str, vectors: np.ndarray, request: Retrieval, q: int) -> list[Hit]:
    return store.dense(vectors[q], request, model=model)


def _candidates(
    store: Store, *, texts: Sequence[str] | None = None, vectors: np.ndarray | None = None,
    model: str | None = None, request: Retrieval, doc_of: dict[str, str],
    text_of: dict[str, str], desc: str, options: HarnessOptions, scratch: Path,
) -> Candidates:
    """Every query's candidate list: BM25 of ``texts``, or dense of ``vectors`` in
    ``model``'s index; searched here, or on Spark (``options.engine``)."""
    if options.engine == "spark":
        from mlflow_rag.evaluation.harness_spark import collect_on_spark

        return collect_on_spark(store, texts=texts, vectors=vectors, model=model,
                                request=request, doc_of=doc_of, scratch=scratch / "spark")
    if vectors is not None:
        assert model is not None
        return _collect(partial(_dense, store, model, vectors, request), len(vectors), doc_of,
                        text_of, desc=desc, options=options)
    assert texts is not None
    return _collect(partial(_lexical, store, texts, request), len(texts), doc_of, text_of,
                    desc=desc, options=options)


def _collect(
    search: Callable[[int], list[Hit]], n: int, doc_of: dict[str, str],
    text_of: dict[str, str], *, desc: str, options: HarnessOptions,
) -> Candidates:
    """Run ``search`` for queries ``0..n-1``, timing each; keep ids and scores only."""
    pairs: list[tuple[tuple[str, float], ...]] = []
    latencies: list[float] = []
    with _tqdm(total=n, desc=f"search {desc}", unit="query", disable=not options.progress,
               leave=False) as bar:
        for q in range(n):
            began = time.perf_counter()
            hits = search(q)
            latencies.append((time.perf_counter() - began) * 1000)
            pairs.append(tuple((h.chunk_id, h.score) for h in hits))
            doc_of.update((h.chunk_id, h.document_id) for h in hits)
            text_of.update((h.chunk_id, h.text) for h in hits)
            bar.update(1)
    return Candidates(pairs=tuple(pairs), latency_ms=tuple(latencies))


def _run_variant(
    variant: Variant, dataset: EvalDataset, query_ids: Sequence[str], texts: Sequence[str],
    lexical: Candidates | None, dense: Candidates | None, doc_of: Mapping[str, str], *,
    ks: Sequence[int], depth: int, options: HarnessOptions,
) -> tuple[dict[str, float], tuple[QueryResult, ...]]:
    """Rank every query's documents from the candidate lists and score the run:
    (metrics, per-query rows). Latency = the searches this variant needs + fusion + roll-up."""
    run: dict[str, list[str]] = {}
    latencies: list[float] = []
    short = 0  # queries that found fewer than k documents
    for i, qid in enumerate(query_ids):
        began = time.perf_counter()
        pairs = ranked_pairs(variant, lexical, dense, i, depth)  # fused, for hybrid
        # the searches this variant needs (a bm25 variant has no dense list, and so on)
        spent = sum(c.latency_ms[i] for c in (lexical, dense) if c is not None)
        spent += (time.perf_counter() - began) * 1000
        began = time.perf_counter()
        documents = rollup_to_documents(((doc_of[c], s) for c, s in pairs), limit=variant.k)
        latencies.append(spent + (time.perf_counter() - began) * 1000)
        run[qid] = [doc for doc, _ in documents]
        short += len(documents) < variant.k
    scored = evaluate_run(run, dataset.qrels, ks=sorted(set(ks) | {10}))
    metrics = {name: value for name, value in scored.aggregate.items()
               if int(name.rsplit("_", 1)[1]) in ks}
    metrics.update({
        "latency_p50_ms": percentile(latencies, 0.50),
        "latency_p95_ms": percentile(latencies, 0.95),
        "latency_mean_ms": statistics.fmean(latencies),
        "queries_evaluated": float(scored.n_queries),
        "queries_short": float(short),
    })
    per_query = []
    for qid, text, latency in zip(query_ids, texts, latencies, strict=True):
        judged = dataset.qrels.get(qid, {})
        relevant = tuple(doc for doc, grade in judged.items() if grade > 0)
        ranked = run[qid]
        first = next((rank for rank, doc in enumerate(ranked, start=1) if doc in relevant), None)
        row = scored.per_query.get(qid)
        per_query.append(QueryResult(
            query_id=qid, query=redact_emails(text),
            retrieved_ids=tuple(ranked[: options.table_depth]), relevant_ids=relevant,
            ndcg_at_10=float(row["ndcg_at_10"]) if row else float("nan"),
            first_relevant_rank=first, latency_ms=latency, scores=dict(row or {}),
        ))
    return metrics, tuple(per_query)


def _chunking_seconds(records: Sequence[IngestRecord]) -> float:
    """Seconds spent loading, chunking and writing the store's chunks (its first ingest)."""
    first = records[0]
    if first.report is None:
        return first.seconds
    return float(sum(v for k, v in first.report.seconds.items() if k in ("load", "chunk", "write")))


def _cost_metrics(
    store: Store, variant: Variant, records: Sequence[IngestRecord], chunk_seconds: float
) -> dict[str, float]:
    """Ingest seconds, index bytes and vector counts of what this variant searches."""
    store.flush()  # persist the index this variant used, so its file size is known
    stats = store.stats()
    out: dict[str, float] = {"documents": float(stats.documents), "chunks": float(stats.chunks)}
    lexical_bytes = store.lexical_index_bytes()
    if variant.embedder is None:
        out["ingest_seconds"] = chunk_seconds
        out["index_bytes"] = float(lexical_bytes)
        return out
    record = next(r for r in records if r.embedder == variant.embedder)
    assert record.report is not None
    out["ingest_seconds"] = record.report.total_seconds
    out["vectors_embedded"] = float(record.report.vectors_embedded)
    out["vectors_cached"] = float(record.report.vectors_cached)
    entry = store.manifest.models.get(variant.embedder) if store.manifest else None
    dense_bytes = entry.bytes if entry is not None else 0
    out["index_bytes"] = float(dense_bytes + (lexical_bytes if variant.mode == "hybrid" else 0))
    return out


__all__ = [
    "EvaluationResult",
    "HarnessOptions",
    "IngestRecord",
    "QueryResult",
    "VariantResult",
    "candidate_depth",
    "chunk_tokenizer",
    "run_grid",
    "store_dir_name",
    "write_chunks_only",
]
