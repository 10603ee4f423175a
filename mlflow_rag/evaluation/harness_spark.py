"""The query side of an evaluation on Spark (``HarnessOptions(engine="spark")``,
``evaluate --engine spark``): the store is snapshotted as a bundle and shipped to the
executors (``SparkContext.addFile``), the queries are spread over partitions, and each
executor searches them in the bundle exactly as the local path searches the store, so the
candidate lists, and every metric but latency, are the same numbers. pyspark is imported
only here, inside the functions."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mlflow_rag.engines import spark_session
from mlflow_rag.evaluation.harness_types import Candidates
from mlflow_rag.store.request import Retrieval
from mlflow_rag.store.store import Store

_bundles: dict[str, Store] = {}  # per executor process: each shipped bundle opened once


def collect_on_spark(
    store: Store, *, texts: Sequence[str] | None = None, vectors: np.ndarray | None = None,
    model: str | None = None, request: Retrieval, doc_of: dict[str, str], scratch: Path,
    partitions: int | None = None,
) -> Candidates:
    """Search every query (``texts``: BM25; ``vectors``: dense in ``model``'s index) in a
    bundle of ``store`` on the active Spark session, as ``harness._collect`` does locally."""
    spark = spark_session("mlflow-rag evaluate")
    from pyspark import SparkFiles
    name = f"bundle-{uuid.uuid4().hex[:12]}"  # addFile refuses a name twice per context
    bundle = store.snapshot(scratch / name)
    spark.sparkContext.addFile(str(bundle), recursive=True)
    dense = vectors is not None
    count = len(vectors) if vectors is not None else len(texts or ())
    frame = pd.DataFrame({"q": range(count)})
    if dense:
        assert vectors is not None
        frame["vector"] = [v.astype(np.float32).tobytes() for v in vectors]
    else:
        frame["text"] = list(texts or ())

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        if name not in _bundles:
            _bundles[name] = Store.open(SparkFiles.get(name), immutable=True)
        opened = _bundles[name]
        for batch in batches:
            rows = []
            for row in batch.to_dict("records"):
                began = time.perf_counter()
                if dense:
                    vector = np.frombuffer(row["vector"], dtype=np.float32)
                    hits = opened.dense(vector, request, model=model)
                else:
                    hits = opened.lexical(row["text"], request)
                spent = (time.perf_counter() - began) * 1000
                rows.append((row["q"], json.dumps([(h.chunk_id, h.score, h.document_id)
                                                   for h in hits]), spent))
            yield pd.DataFrame(rows, columns=["q", "hits", "latency_ms"])

    spark_frame = spark.createDataFrame(frame).repartition(
        partitions or spark.sparkContext.defaultParallelism)
    result = spark_frame.mapInPandas(run, schema="q long, hits string, latency_ms double")
    collected: pd.DataFrame = result.toPandas()
    collected = collected.sort_values("q")
    pairs = []
    for text in collected["hits"]:
        hits = json.loads(text)
        pairs.append(tuple((chunk_id, float(score)) for chunk_id, score, _ in hits))
        doc_of.update((chunk_id, document_id) for chunk_id, _, document_id in hits)
    return Candidates(pairs=tuple(pairs), latency_ms=tuple(float(v) for v in collected["latency_ms"]))

