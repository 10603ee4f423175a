"""Serving: what `POST /invocations` adds over an in-process `model.predict`, at 100K chunks.

    python benchmarks/serving.py [--n 100000] [--queries 200] [--reps 3] [--mmap both|on|off]
                                 [--embedder tfidf|minilm]
                                 [--trace on,sync,sampled,off,single,server,otlp]
                                 [--sampling-ratio 0.1] [--tracking-workers 1]
                                 [--otlp-timeout SECONDS] [--keep DIR]

Builds a store of ``n`` chunks (~500 bytes of text each) with precomputed clustered vectors,
and a TF-IDF/LSA query embedder of the same dimension fitted on a small synthetic corpus (no
download; the stored vectors are not its embeddings of the chunks, which does not matter for
timing: both sides embed each query the same way and search the same index). The store is
logged as the pyfunc retriever to a SQLite tracking store in a temporary folder. Then, for
each mmap setting: the model loaded in this process (``mlflow.pyfunc.load_model``) answers
the queries one request each (``predict``), and `mlflow models serve --env-manager local`
on 127.0.0.1 (one worker) answers the same requests over HTTP (httpx, one keep-alive
connection). p50 and p95 per side, the median over ``reps`` rounds; the overhead is
p50(invocations) - p50(predict). The last line is machine-readable.

Tracing, per ``--trace`` setting (each a server of its own and the in-process model loaded
under the same settings): ``on`` is the default (model config ``trace: ids``, MLflow's async
export), ``sync`` the same with ``MLFLOW_ENABLE_ASYNC_TRACE_LOGGING=false``, ``sampled`` with
``MLFLOW_TRACE_SAMPLING_RATIO`` (``--sampling-ratio``), ``off`` with ``MLFLOW_RAG_TRACE=off``,
``single`` with one export thread (``MLFLOW_ASYNC_TRACE_LOGGING_MAX_WORKERS=1``) into the SQLite
file. ``server`` exports to an ``mlflow server`` on 127.0.0.1 over HTTP (MLflow's own exporter,
``MLFLOW_TRACKING_URI=http://...``; the tracking server writes the same SQLite file), ``otlp``
to the same server's OTLP endpoint (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://.../v1/traces``,
``http/protobuf``: OpenTelemetry's batching exporter; needs the package
``opentelemetry-exporter-otlp-proto-http``). After each setting the traces in the tracking
store are counted (waiting up to a minute for the last exports): ``traces_lost`` is the
requests made with every request traced minus the traces that arrived.
Each setting's overhead is over its own predict (interleaved); ``over_traced_predict_ms`` is
its ``/invocations`` p50 over the ``on`` setting's predict p50 of the same run (the target:
served with tracing, against the model in process with tracing).

Start-up, per server: ``ready_s`` is the time from starting `mlflow models serve` to its first
200 from ``/ping``; ``first_request_ms`` is the first ``/invocations`` after that (dense),
``first_hybrid_ms`` the first hybrid one, and ``first_to_p50`` the first request over the
steady p50: about 1 when loading the model left nothing lazy for the first request.
``--embedder minilm`` embeds queries with the real MiniLM (its weights load at start-up); the
stored vectors stay synthetic (the same dimension), which does not matter for timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import batched, bench_record, chunk_text, clustered_vectors, time_calls
from mlflow_rag.store.store import Store

PARAMS = {"k": 10, "mode": "dense"}
# The environment of each tracing setting (both in this process and in the server's).
TRACE_SETTINGS: dict[str, dict[str, str]] = {
    "on": {},
    "sync": {"MLFLOW_ENABLE_ASYNC_TRACE_LOGGING": "false"},
    "sampled": {"MLFLOW_TRACE_SAMPLING_RATIO": "0.1"},
    "off": {"MLFLOW_RAG_TRACE": "off"},
    "single": {"MLFLOW_ASYNC_TRACE_LOGGING_MAX_WORKERS": "1"},
    # Filled in once the tracking server runs (its URL): see with_tracking_server.
    "server": {},
    "otlp": {},
}
# The settings whose traces go through a tracking server, and what they set for it.
SERVER_SETTINGS = ("server", "otlp")
TRACE_VARIABLES = sorted({name for env in TRACE_SETTINGS.values() for name in env}
                         | {"MLFLOW_TRACKING_URI", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"})


def synthetic_corpus(count: int, *, vocabulary: int = 3000, words: int = 80,
                     seed: int = 0) -> list[str]:
    """Texts over a vocabulary large enough for a 384-component LSA."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocabulary + 1) ** 0.9
    weights /= weights.sum()
    return [" ".join(f"w{j}" for j in rng.choice(vocabulary, size=words, p=weights))
            for _ in range(count)]


def build_store(path: Path, n: int, dim: int, *, embedder_name: str = "tfidf") -> int:
    """The store with the query embedder (TF-IDF fitted here, or MiniLM); returns its
    dimension."""
    from mlflow_rag.embed.registry import get_embedder

    embedder: Any = get_embedder(embedder_name, **({"dimension": dim}
                                                   if embedder_name == "tfidf" else {}))
    if embedder_name == "tfidf":
        embedder.fit(synthetic_corpus(max(2 * dim, 1000)))
    dim = embedder.dimension
    vectors = clustered_vectors(n, dim)
    with Store.open(path, create=True) as store:
        store.ensure_model(embedder_name, dim, embedder=embedder_name,
                           model_version=embedder.version, index_type="flat")
        if embedder_name == "tfidf":
            embedder.save(store.model_dir(embedder_name))
        for block in tqdm(list(batched(n, 5000)), desc="store ingest", unit="batch"):
            store.write([bench_record(i, chunk_text(i), {embedder_name: vectors[i : i + 1]})
                         for i in block], skip_unchanged=False)
    return dim


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is not gone after ``timeout``."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def model_server(uri: str, tracking_uri: str, cwd: Path, config: dict[str, Any],
                 started: dict[str, float], extra_env: dict[str, str]) -> Iterator[str]:
    """`mlflow models serve` in its own process group, stopped (the group) on exit."""

    import httpx

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps(config),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           **extra_env}
    log = open(cwd / f"serve-{port}.log", "wb")  # noqa: SIM115 (closed below)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(cwd / f'serve-{port}.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    started["ready_s"] = time.perf_counter() - start
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("server did not come up in 600 s")
            time.sleep(0.05)  # polling while the server loads (bounds ready_s's error)
        yield url
    finally:
        stop_group(proc, timeout=10)
        log.close()


@contextlib.contextmanager
def tracking_server(backend_uri: str, cwd: Path, *, workers: int = 1) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over the benchmark's SQLite file, as users run one (one
    worker by default); stopped (its process group) on exit. Yields its URL."""

    import httpx

    port = free_port()
    log = open(cwd / f"tracking-{port}.log", "wb")  # noqa: SIM115 (closed below)
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
         "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tracking server exited: "
                                   f"{(cwd / f'tracking-{port}.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("tracking server did not come up in 300 s")
            time.sleep(0.2)
        yield url
    finally:
        stop_group(proc, timeout=30)
        log.close()


def server_settings(url: str, *, otlp_timeout: float | None = None) -> None:
    """The environments of the settings that export to the tracking server at ``url``;
    ``otlp_timeout``: OpenTelemetry's export timeout in seconds (its default: 10)."""
    TRACE_SETTINGS["server"] = {"MLFLOW_TRACKING_URI": url}
    TRACE_SETTINGS["otlp"] = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{url}/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        # The experiment the tracking server files the spans under (the default one).
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-mlflow-experiment-id=0"}
    if otlp_timeout is not None:
        TRACE_SETTINGS["otlp"]["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"] = str(otlp_timeout)


def count_traces(db: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=60)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM trace_info").fetchone()[0])


def settled_count(db: Path, want: int, *, patience_s: float = 20, limit_s: float = 120) -> int:
    """The number of traces once ``want`` arrived, or the count stopped growing for
    ``patience_s`` (exports still queued when the processes stopped)."""
    start = last_change = time.monotonic()
    count = count_traces(db)
    while count < want and time.monotonic() - last_change < patience_s \
            and time.monotonic() - start < limit_s:
        time.sleep(1)
        now = count_traces(db)
        if now != count:
            count, last_change = now, time.monotonic()
    return count


@contextlib.contextmanager
def tracing_env(env: dict[str, str]) -> Iterator[None]:
    """This process under a tracing setting: its variables set, MLflow's tracer set up anew
    (it reads them when it is set up), and both undone after."""
    import mlflow

    saved = {name: os.environ.pop(name, None) for name in TRACE_VARIABLES}
    saved_uri = mlflow.get_tracking_uri()
    os.environ.update(env)
    if "MLFLOW_TRACKING_URI" in env:
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.tracing.reset()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            mlflow.flush_trace_async_logging()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
        mlflow.set_tracking_uri(saved_uri)
        mlflow.tracing.reset()


def measure(uri: str, tracking_uri: str, workdir: Path, queries: list[str], reps: int,
            mmap: bool, env: dict[str, str]) -> dict[str, float]:
    db = workdir / "mlruns.db"
    before = count_traces(db)
    with tracing_env(env):
        result = _measure(uri, env.get("MLFLOW_TRACKING_URI", tracking_uri), workdir, queries,
                          reps, mmap, env)
    # The server has stopped and this process flushed: what is still to come is in flight.
    requests = result.pop("requests")
    traced = requests if _every_request_traced(env) else 0
    arrived = settled_count(db, before + traced) - before
    result.update({"traces": arrived, "traces_lost": traced - arrived if traced else 0})
    return result


def _every_request_traced(env: dict[str, str]) -> bool:
    return "MLFLOW_TRACE_SAMPLING_RATIO" not in env and env.get("MLFLOW_RAG_TRACE") != "off"


def _measure(uri: str, tracking_uri: str, workdir: Path, queries: list[str], reps: int,
             mmap: bool, env: dict[str, str]) -> dict[str, float]:
    import httpx
    import mlflow
    import pandas as pd

    config = {"mmap": mmap}
    model = mlflow.pyfunc.load_model(uri, model_config=config)
    frames = [pd.DataFrame({"query": [q]}) for q in queries]
    bodies = [{"dataframe_split": {"columns": ["query"], "data": [[q]]}, "params": PARAMS}
              for q in queries]
    expected = [model.predict(f, params=PARAMS)["chunk_id"].tolist() for f in frames[:5]]
    predict, invoke = [], []
    started: dict[str, float] = {}
    with model_server(uri, tracking_uri, workdir, config, started, env) as url, httpx.Client(
        base_url=url, timeout=600
    ) as client:
        def post(i: int, params: dict[str, Any] | None = None) -> Any:
            body = bodies[i] if params is None else {**bodies[i], "params": params}
            reply = client.post("/invocations", json=body)
            reply.raise_for_status()
            return reply.json()

        # Start-up first: nothing has been asked of the server yet.
        t0 = time.perf_counter()
        post(0)
        first_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        post(1, {**PARAMS, "mode": "hybrid"})
        first_hybrid_ms = (time.perf_counter() - t0) * 1000
        got = [[row["chunk_id"] for row in post(i)["predictions"]] for i in range(5)]
        assert got == expected, "the server and the in-process model disagree"
        for _ in range(reps):  # interleaved, so load changes hit both sides alike
            predict.append(time_calls(lambda i: model.predict(frames[i], params=PARAMS),
                                      len(queries)))
            invoke.append(time_calls(post, len(queries)))
    p50 = statistics.median(t.median_ms for t in predict)
    i50 = statistics.median(t.median_ms for t in invoke)
    return {"invocations_overhead_ms": i50 - p50, "predict_p50_ms": p50,
            "invocations_p50_ms": i50, "ready_s": started["ready_s"],
            "first_request_ms": first_ms, "first_hybrid_ms": first_hybrid_ms,
            "first_to_p50": first_ms / i50,
            "predict_p95_ms": statistics.median(t.p95_ms for t in predict),
            "invocations_p95_ms": statistics.median(t.p95_ms for t in invoke),
            # Every predict and every request made above: one trace each.
            "requests": len(expected) + 2 + len(got) + reps * 2 * len(queries)}


def report(label: str, result: dict[str, float]) -> None:
    print(f"{label}: predict p50 {result['predict_p50_ms']:.2f} ms p95 "
          f"{result['predict_p95_ms']:.2f} ms | /invocations p50 "
          f"{result['invocations_p50_ms']:.2f} ms p95 {result['invocations_p95_ms']:.2f} ms | "
          f"overhead {result['invocations_overhead_ms']:.2f} ms"
          + (f" ({result['over_traced_predict_ms']:.2f} ms over the traced predict)"
             if "over_traced_predict_ms" in result else ""))
    print(f"{label}: start-up: /ping ready after {result['ready_s']:.1f} s; first request "
          f"{result['first_request_ms']:.1f} ms (first hybrid {result['first_hybrid_ms']:.1f} ms)"
          f" = {result['first_to_p50']:.2f}x the steady p50")
    print(f"{label}: traces stored {result['traces']:.0f}, lost {result['traces_lost']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mmap", choices=["both", "on", "off"], default="both")
    parser.add_argument("--embedder", choices=["tfidf", "minilm"], default="tfidf",
                        help="the query embedder (minilm: the real model, loaded at start-up)")
    parser.add_argument("--trace", default="on",
                        help=f"comma-separated tracing settings from {list(TRACE_SETTINGS)}")
    parser.add_argument("--sampling-ratio", type=float, default=0.1,
                        help="MLFLOW_TRACE_SAMPLING_RATIO of the 'sampled' setting")
    parser.add_argument("--tracking-workers", type=int, default=1,
                        help="workers of the tracking server (the server and otlp settings)")
    parser.add_argument("--otlp-timeout", type=float, default=None,
                        help="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT of the otlp setting, seconds "
                             "(unset: OpenTelemetry's 10)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="work in this (new) folder and keep it: the servers' logs, the "
                             "tracking store")
    args = parser.parse_args()
    settings = {"both": [True, False], "on": [True], "off": [False]}[args.mmap]
    traces = [t.strip() for t in args.trace.split(",") if t.strip()]
    unknown = sorted(set(traces) - set(TRACE_SETTINGS))
    if unknown:
        parser.error(f"unknown --trace {unknown}; choose from {list(TRACE_SETTINGS)}")
    TRACE_SETTINGS["sampled"] = {"MLFLOW_TRACE_SAMPLING_RATIO": str(args.sampling_ratio)}
    if "otlp" in traces:
        try:
            # the exporter module itself: MLflow traces nothing (silently) when it cannot be
            # imported, e.g. a dependency of it missing (812 of 812 traces lost that way)
            import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        except ImportError:
            parser.error("--trace otlp needs opentelemetry-exporter-otlp-proto-http "
                         "(pip install opentelemetry-exporter-otlp-proto-http)")
    from mlflow_rag.tracking import log_model

    # Traces of the last requests may still be exporting when the folder goes.
    if args.keep is not None:
        args.keep.mkdir(parents=True)
    with (contextlib.nullcontext(str(args.keep)) if args.keep is not None else
          tempfile.TemporaryDirectory(prefix="mlflow-rag-serving-", ignore_cleanup_errors=True)
          ) as tmp:
        workdir = Path(tmp).resolve()
        start = time.perf_counter()
        dim = build_store(workdir / "store", args.n, args.dim, embedder_name=args.embedder)
        print(f"store: {args.n:,} chunks x {dim}, built in {time.perf_counter() - start:.0f} s")
        tracking_uri = f"sqlite:///{workdir / 'mlruns.db'}"
        previous = Path.cwd()
        os.chdir(workdir)  # the run's artifacts go under workdir/mlruns
        try:
            start = time.perf_counter()
            info = log_model(workdir / "store", experiment="serving-bench",
                             tracking_uri=tracking_uri)
            print(f"logged {info.model_uri} in {time.perf_counter() - start:.0f} s")
            rng = np.random.default_rng(7)
            vocabulary = [f"w{j}" for j in range(300)]
            queries = [" ".join(rng.choice(vocabulary, size=6)) for _ in range(args.queries)]
            summary: dict[str, float] = {}
            server = (tracking_server(tracking_uri, workdir, workers=args.tracking_workers)
                      if set(traces) & set(SERVER_SETTINGS) else contextlib.nullcontext(""))
            with server as url:  # up until every setting's traces are counted
                if url:
                    server_settings(url, otlp_timeout=args.otlp_timeout)
                for mmap in settings:
                    results: dict[str, dict[str, float]] = {}
                    for trace in traces:
                        result = results[trace] = measure(
                            info.model_uri, tracking_uri, workdir, queries, args.reps, mmap,
                            TRACE_SETTINGS[trace])
                        if "on" in results:
                            result["over_traced_predict_ms"] = (
                                result["invocations_p50_ms"] - results["on"]["predict_p50_ms"])
                        report(f"mmap {'on' if mmap else 'off'}, trace {trace}", result)
                        suffix = ("" if trace == traces[0] else f"_trace_{trace}") + (
                            "" if mmap == settings[0] else f"_mmap_{'on' if mmap else 'off'}")
                        summary.update({f"{key}{suffix}": value
                                        for key, value in result.items()})
        finally:
            with contextlib.suppress(Exception):
                import mlflow

                mlflow.flush_trace_async_logging()
            os.chdir(previous)
    print(" ".join(f"{k}={v:.2f}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
