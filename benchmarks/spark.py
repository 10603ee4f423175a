"""Spark against one process, in the same run (issue 14), on this machine's two cores.

    python benchmarks/spark.py [--docs 2000] [--queries 10000] [--json]

1. Batch retrieval: the registered retriever model (a TF-IDF store of ``--docs`` synthetic
   documents, logged to a throwaway SQLite tracking store) over ``--queries`` queries:
   in-process ``predict`` one query per call in a loop (the baseline), ``predict`` in requests
   of 1,000 queries, and ``mlflow.pyfunc.spark_udf`` in ``local[2]`` (``output: nested``).
2. Ingestion into PostgreSQL (a throwaway cluster, tests/pg_cluster.py): one process
   (``ingest``, the baseline) against ``ingest --engine spark`` in ``local[2]`` with 2 and 4
   partitions, on the same documents, after the same TF-IDF fit on a sample.

Reported: queries or documents per second and the ratio to the baseline. Spark's fixed costs
(the JVM, shipping the model, Python workers) weigh heavily at this size on two cores; the
ratios say how much. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORDS = ("tea brewing bicycle gears honey bees volcano lava chess castling mainframe cobol "
         "cloud migration river delta glacier orbit telescope protein enzyme ledger audit "
         "harbour tide violin sonata wheat harvest turbine grid battery").split()


def synthetic_corpus(folder: Path, count: int) -> None:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(count):
        body = " ".join(rng.choice(WORDS) for _ in range(120))
        (folder / f"doc-{i:05d}.md").write_text(f"# Document {i}\n\n{body}\n")


def queries(count: int) -> list[str]:
    rng = random.Random(1)
    return [" ".join(rng.choice(WORDS) for _ in range(4)) for _ in range(count)]


def bench_retrieval(work: Path, docs: int, count: int, spark: object) -> dict[str, float]:
    import mlflow
    import pandas as pd
    from pyspark.sql import functions as F

    from mlflow_rag.ingest import IngestOptions, ingest
    from mlflow_rag.serving import SPARK_RESULT_TYPE
    from mlflow_rag.store.store import Store
    from mlflow_rag.tracking import log_model

    synthetic_corpus(work / "corpus", docs)
    with Store.open(work / "store", create=True) as store:
        ingest([str(work / "corpus")], store, options=IngestOptions(embedder="tfidf"),
               progress=False)
    uri = f"sqlite:///{work / 'mlruns.db'}"
    os.chdir(work)
    log_model(work / "store", register="bench", alias="champion", tracking_uri=uri,
              experiment="bench", model_config={"trace": "off"})
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/bench@champion")
    texts = queries(count)
    params = {"k": 10, "mode": "hybrid"}
    started = time.perf_counter()
    for text in texts:
        model.predict(pd.DataFrame({"query": [text]}), params=params)
    loop = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, count, 1000):
        model.predict(pd.DataFrame({"query": texts[start:start + 1000]}), params=params)
    batched = time.perf_counter() - started
    udf = mlflow.pyfunc.spark_udf(spark, "models:/bench@champion", result_type=SPARK_RESULT_TYPE,
                                  env_manager="local", params={**params, "output": "nested"})
    frame = spark.createDataFrame(pd.DataFrame({"query": texts})).repartition(2)  # type: ignore[attr-defined]
    started = time.perf_counter()
    hits = frame.select(F.size(udf(F.struct("query")).getField("hits")).alias("n")).agg(
        F.sum("n")).collect()[0][0]
    on_spark = time.perf_counter() - started
    assert hits == 10 * count, hits
    return {"queries": count, "loop_qps": count / loop, "batched_qps": count / batched,
            "spark_qps": count / on_spark, "batched_vs_loop": loop / batched,
            "spark_vs_loop": loop / on_spark}


def bench_ingest(work: Path, docs: int, spark: object) -> dict[str, float]:
    from mlflow_rag.ingest import IngestOptions, ingest
    from mlflow_rag.ingest_spark import ingest_spark
    from mlflow_rag.store.store import Store
    from tests.pg_cluster import running_cluster

    corpus = work / "ingest-corpus"
    synthetic_corpus(corpus, docs)
    sample = [str(p) for p in sorted(corpus.iterdir())[:50]]
    options = IngestOptions(embedder="tfidf", refit="never")
    result: dict[str, float] = {"documents": docs}
    with running_cluster() as cluster:
        def fitted() -> str:
            location = cluster.dsn(cluster.new_database())
            with Store.open(location, create=True) as store:
                ingest(sample, store, options=IngestOptions(embedder="tfidf"), progress=False)
            return location

        location = fitted()
        started = time.perf_counter()
        with Store.open(location) as store:
            ingest([str(corpus)], store, options=options, progress=False)
        single = time.perf_counter() - started
        result["single_docs_per_s"] = docs / single
        for partitions in (2, 4):
            location = fitted()
            started = time.perf_counter()
            ingest_spark([str(corpus)], store=location, options=options, spark=spark,
                         partitions=partitions)
            seconds = time.perf_counter() - started
            result[f"spark{partitions}_docs_per_s"] = docs / seconds
            result[f"spark{partitions}_vs_single"] = single / seconds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["MLFLOW_RAG_CACHE_DIR"] = str(work / "cache")
        spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
                 .config("spark.sql.shuffle.partitions", "2")
                 .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        try:
            retrieval = bench_retrieval(work, args.docs, args.queries, spark)
            print(f"batch retrieval, {args.queries} queries, k=10 hybrid: predict loop "
                  f"{retrieval['loop_qps']:.0f} q/s; predict x1000 {retrieval['batched_qps']:.0f} "
                  f"q/s ({retrieval['batched_vs_loop']:.2f}x); spark_udf local[2] "
                  f"{retrieval['spark_qps']:.0f} q/s ({retrieval['spark_vs_loop']:.2f}x)")
            ingested = bench_ingest(work, args.docs, spark)
            print(f"ingest into PostgreSQL, {args.docs} documents (tfidf): one process "
                  f"{ingested['single_docs_per_s']:.0f} docs/s; spark 2 partitions "
                  f"{ingested['spark2_docs_per_s']:.0f} ({ingested['spark2_vs_single']:.2f}x); "
                  f"4 partitions {ingested['spark4_docs_per_s']:.0f} "
                  f"({ingested['spark4_vs_single']:.2f}x)")
        finally:
            spark.stop()
    print(json.dumps({"retrieval": retrieval, "ingest": ingested}))


if __name__ == "__main__":
    main()
