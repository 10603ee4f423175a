"""What answering adds over retrieval alone, with the offline extractive generator.

    python benchmarks/answer_overhead.py [--rounds 200] [--traced 20]

Builds the six-document test corpus (tests/helpers_mlflow.build_store: tfidf, hybrid, k=5)
in a temporary folder and times, in one process, per call:

* ``search``: ``Searcher.run`` (retrieval alone, the baseline);
* ``answer``: ``answer(..., track=False, record=False)``: retrieval plus the extractive answer;
* ``recorded``: ``answer(..., track=False)``: plus the query, retrievals, generation and
  citations written in one transaction;
* ``traced``: ``answer(...)``: plus one MLflow trace in a SQLite tracking store (``--traced``
  calls after one warm-up; traces are exported in the background).

Reported: p50 and p95 milliseconds of each. The last line is machine-readable:
``search_p50_ms=<ms> answer_p50_ms=<ms> recorded_p50_ms=<ms> traced_p50_ms=<ms>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = ("What does legacy modernization keep?", "how to brew green tea", "fix a flat tyre",
             "what do bees store for winter", "volcano ash clouds", "castling in chess")


def timed(call: Callable[[str], object], rounds: int) -> tuple[float, float]:
    samples = []
    for i in range(rounds):
        started = time.perf_counter()
        call(QUESTIONS[i % len(QUESTIONS)])
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.95 * len(samples)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--traced", type=int, default=20)
    args = parser.parse_args()

    from mlflow_rag.answer import answer
    from mlflow_rag.search import Searcher, SearchRequest
    from mlflow_rag.store.store import Store
    from mlflow_rag.tracking_session import quiet_mlflow
    from tests.helpers_mlflow import build_store

    quiet_mlflow()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow's artifacts land here, not in the repository
        root = build_store(Path(tmp) / "store")
        uri = f"sqlite:///{tmp}/mlflow.db"
        results = {}
        with Store.open(root) as store:
            searcher = Searcher(store)
            for question in QUESTIONS:
                searcher.run(SearchRequest.parse(question, k=5))
            results["search"] = timed(
                lambda q: searcher.run(SearchRequest.parse(q, k=5)), args.rounds)
            results["answer"] = timed(
                lambda q: answer(store, q, searcher=searcher, track=False, record=False),
                args.rounds)
            results["recorded"] = timed(
                lambda q: answer(store, q, searcher=searcher, track=False), args.rounds)
            answer(store, "warm up", searcher=searcher, tracking_uri=uri)
            results["traced"] = timed(
                lambda q: answer(store, q, searcher=searcher, tracking_uri=uri), args.traced)
            from mlflow_rag.genai_tracking import flush_traces

            flush_traces()
        for name, (p50, p95) in results.items():
            print(f"{name:>9}: p50 {p50:8.3f} ms  p95 {p95:8.3f} ms")
        print(" ".join(f"{name}_p50_ms={p50:.3f}" for name, (p50, _) in results.items()))


if __name__ == "__main__":
    main()
