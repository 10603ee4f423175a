"""What the served RAG model (``log-model --kind rag``, extractive) costs per request against
the served retriever, on the six-document test corpus (tfidf, hybrid, k=5): in process
(``load_model(...).predict``) and over HTTP (``mlflow models serve``, one worker).

    python benchmarks/rag_model.py [--requests 200]

Prints p50/p95 in milliseconds per call. Runs in a temporary folder with its own SQLite
tracking store; tracing stays on (the models' default ``trace: ids``), as when served.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = ["how do I fix a flat bicycle tyre?", "who keeps honey bees?",
             "how is green tea brewed?", "what do explosive eruptions produce?",
             "why castle early in chess?", "legacy modernization of COBOL mainframes"]


def percentiles(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"p50 {statistics.median(ordered):.2f} ms, p95 {p95:.2f} ms"


def timed(call: Callable[[int], Any], n: int) -> list[float]:
    call(0)  # the first call is not a steady one
    out = []
    for i in range(n):
        started = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    import mlflow
    import pandas as pd

    from mlflow_rag.tracking_model import log_model
    from tests.helpers_mlflow import build_store, free_port, post_json, server_process, subprocess_env

    root = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    os.chdir(root)
    uri = f"sqlite:///{root}/mlruns.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    store = build_store(root / "store")
    log_model(store, register="bench-retriever", alias="champion", tracking_uri=uri)
    log_model(store, kind="rag", name="rag", register="bench-rag", alias="champion",
              tracking_uri=uri)
    retriever = mlflow.pyfunc.load_model("models:/bench-retriever@champion")
    rag = mlflow.pyfunc.load_model("models:/bench-rag@champion")
    n = args.requests

    def ask(i: int) -> dict[str, Any]:
        return {"input": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                "custom_inputs": {"k": 5}}

    print(f"in process, {n} calls each:")
    print("  retriever predict:", percentiles(timed(
        lambda i: retriever.predict(pd.DataFrame({"query": [QUESTIONS[i % 6]]}), {"k": 5}), n)))
    print("  rag predict:      ", percentiles(timed(lambda i: rag.predict(ask(i)), n)))
    for name, body in (
        ("retriever", lambda i: {"dataframe_records": [{"query": QUESTIONS[i % 6]}],
                                 "params": {"k": 5}}),
        ("rag", ask),
    ):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
               f"models:/bench-{name}@champion", "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(port)]
        with server_process(cmd, health_url=f"{url}/ping", log_path=root / f"{name}.log",
                            cwd=root, env=subprocess_env(MLFLOW_TRACKING_URI=uri)):
            def post(i: int, make: Callable[[int], Any] = body, at: str = url) -> None:
                status, reply = post_json(f"{at}/invocations", make(i))
                assert status == 200, reply
            print(f"  HTTP {name}:".ljust(21), percentiles(timed(post, n)))


if __name__ == "__main__":
    main()
