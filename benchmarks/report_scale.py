"""``mlflow-rag report`` on a large log: how long it takes and how much memory it holds.

    python benchmarks/report_scale.py [--queries 100000] [--postgres]

Builds the six-document test corpus (tests/helpers_mlflow.build_store, tfidf) in a temporary
folder and logs, straight through the backend in one transaction, ``--queries`` queries over
30 days (five retrievals each, one in ten with none; 3,000 distinct texts), an answer for
one query in five and a thumbs feedback on one answer in four. Then runs
``mlflow-rag report --no-track`` on it in a fresh process, for all time and for the last
7 days, and prints each one's wall time and peak RSS (``/usr/bin/time``). The last line is
machine-readable: ``all_s=<s> all_rss_mb=<MB> days7_s=<s>``. ``--postgres`` puts the store in
a throwaway PostgreSQL cluster (``tests/pg_cluster.py``) instead of a SQLite folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def fill(root: Path | str, queries: int) -> None:
    from mlflow_rag.store.store import Store
    from mlflow_rag.store.tables import FEEDBACK_COLUMNS, GENERATION_COLUMNS, new_id

    rng = random.Random(0)
    start = datetime.now(timezone.utc) - timedelta(days=30)
    step = 30 * 86400 / queries
    with Store.open(root) as store:
        backend = store.backend
        chunks = [row[0] for row in backend.dump_rows("chunks")]
        with backend.immediate_transaction():
            for i in range(queries):
                stamp = (start + timedelta(seconds=i * step)).isoformat(timespec="microseconds")
                hits = [] if i % 10 == 0 else [rng.choice(chunks) for _ in range(5)]
                query_id = new_id()
                backend.insert_query(
                    query_id=query_id, text=f"question {i % 3000}", embedding=None,
                    model_name="tfidf", timestamp=stamp, metadata='{"mode": "hybrid", "k": 5}',
                    retrievals=[(new_id(), c, r + 1, 0.5, "{}") for r, c in enumerate(hits)])
                if i % 5:
                    continue
                answer = {**dict.fromkeys(GENERATION_COLUMNS), "id": new_id(),
                          "query_id": query_id, "timestamp": stamp, "generator": "extractive",
                          "params": "{}", "input_tokens": 600, "output_tokens": 80,
                          "cost_usd": 0.0, "embed_ms": rng.uniform(1, 5),
                          "retrieve_ms": rng.uniform(2, 10), "generate_ms": rng.uniform(0.3, 1),
                          "metadata": "{}"}
                backend.insert_generation([answer[c] for c in GENERATION_COLUMNS], [])
                if i % 20:
                    continue
                feedback = {"id": new_id(), "generation_id": answer["id"], "timestamp": stamp,
                            "kind": "thumbs", "value": float(rng.random() < 0.8),
                            "comment": None, "user_id": None, "metadata": "{}"}
                backend.insert_feedback([feedback[c] for c in FEEDBACK_COLUMNS])


def timed_report(root: Path | str, *extra: str) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "mlflow_rag.cli", "report",
         "--store", str(root), "--no-track", *extra],
        env=env, capture_output=True, text=True, check=True)
    seconds, kb = re.findall(r"^([\d.]+) (\d+)$", done.stderr, re.MULTILINE)[-1]
    return float(seconds), int(kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--postgres", action="store_true",
                        help="the store in a throwaway PostgreSQL cluster")
    args = parser.parse_args()
    from tests.helpers_mlflow import build_store

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        location: Path | str = Path(tmp) / "store"
        if args.postgres:
            from tests.pg_cluster import running_cluster

            cluster = stack.enter_context(running_cluster())
            location = cluster.dsn(cluster.new_database())
        build_store(location)  # type: ignore[arg-type]  # Store.open takes a DSN too
        started = time.perf_counter()
        fill(location, args.queries)
        print(f"logged {args.queries} queries in {time.perf_counter() - started:.1f} s")
        all_s, all_mb = timed_report(location)
        days_s, days_mb = timed_report(location, "--days", "7")
        print(f"report (all time): {all_s:.2f} s, peak RSS {all_mb:.0f} MB")
        print(f"report --days 7:   {days_s:.2f} s, peak RSS {days_mb:.0f} MB")
        print(f"all_s={all_s:.2f} all_rss_mb={all_mb:.0f} days7_s={days_s:.2f}")

if __name__ == "__main__":
    main()
