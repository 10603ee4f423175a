"""`mlflow-rag search` from process start to exit: dense and hybrid against BM25, on MiniLM.

    python benchmarks/cli_start.py [--rounds 5] [--store DIR] [--cache-dir DIR] [--csv FILE]

Builds a small store of the speakers CSV with the plain MiniLM (`mlflow-rag ingest
--no-track`, torch; or takes ``--store``), then times whole processes of
`mlflow-rag search QUERY --store S --mode M -k 5`, as a user runs them:

* ``first-dense``: the first dense search with an empty ONNX cache (``--cache-dir``, default a
  new temporary folder): it exports the model once (imports torch);
* per round, in rotating order: ``bm25`` (the baseline: embeds nothing), ``dense`` and
  ``hybrid`` (queries through ONNX Runtime from the cached export), and ``dense-torch``
  (``MLFLOW_RAG_MINILM_QUERY_RUNTIME=torch``: the query path before ONNX, for before/after
  in the same run).

Reported: the median wall seconds of each and its ratio to BM25's median; then which heavy
modules a dense search imports (``python -X importtime``). The last line is machine-readable:
``cli_dense_s=<s> cli_dense_ratio=<x> cli_hybrid_s=<s> cli_bm25_s=<s> cli_dense_torch_s=<s>
cli_dense_torch_ratio=<x> cli_first_dense_s=<s> dense_heavy_imports=<names or none>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MLFLOW_RAG_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_CSV = SHARED / "chatboti" / "2025-09-02-speaker-bio.csv"
QUERY = "legacy modernization with AI"
HEAVY = ("torch", "sentence_transformers", "transformers", "sklearn", "scipy", "pandas", "mlflow")
RUNTIME_ENV = "MLFLOW_RAG_MINILM_QUERY_RUNTIME"


def cli() -> list[str]:
    """The console script beside this interpreter (what users run), else ``-m``."""
    script = Path(sys.executable).parent / "mlflow-rag"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow_rag.cli"]


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return seconds


def heavy_imports(store: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlflow_rag.cli", "search", QUERY, "--store",
         str(store), "--mode", "dense"], env=env, capture_output=True, text=True, timeout=600,
    )
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in done.stderr.splitlines() if line.startswith("import time:")}
    return sorted(names & set(HEAVY))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", type=Path, default=None, help="an existing minilm store")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="MLFLOW_RAG_CACHE_DIR for the searches [default: a new temp folder]")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cli-start-"))
    cache = args.cache_dir or work / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_RAG_CACHE_DIR": str(cache),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(RUNTIME_ENV, None)
    store = args.store
    if store is None:
        store = work / "store"
        seconds = timed([*cli(), "ingest", str(args.csv), "--store", str(store), "--no-track"], env)
        print(f"ingest (plain MiniLM, torch): {seconds:.1f} s", flush=True)

    def search(mode: str) -> list[str]:
        return [*cli(), "search", QUERY, "--store", str(store), "--mode", mode, "-k", "5"]

    first = timed(search("dense"), env)
    print(f"first dense search (exports to ONNX unless {cache} has it): {first:.1f} s", flush=True)
    kinds = {
        "bm25": (search("bm25"), env),
        "dense": (search("dense"), env),
        "hybrid": (search("hybrid"), env),
        "dense-torch": (search("dense"), {**env, RUNTIME_ENV: "torch"}),
    }
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    order = list(kinds)
    for round_ in range(args.rounds):
        for kind in order[round_ % len(order):] + order[: round_ % len(order)]:
            command, kind_env = kinds[kind]
            times[kind].append(timed(command, kind_env))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              flush=True)

    median = {kind: statistics.median(values) for kind, values in times.items()}
    print("\n| search | median s (process start to exit) | ratio to bm25 |")
    print("|---|---|---|")
    for kind, seconds in median.items():
        print(f"| {kind} | {seconds:.2f} | {seconds / median['bm25']:.2f} |")
    heavy = heavy_imports(store, env)
    print(f"\nheavy modules a dense search imports: {', '.join(heavy) or 'none'}")
    print(
        f"cli_dense_s={median['dense']:.2f} cli_dense_ratio={median['dense'] / median['bm25']:.2f} "
        f"cli_hybrid_s={median['hybrid']:.2f} cli_bm25_s={median['bm25']:.2f} "
        f"cli_dense_torch_s={median['dense-torch']:.2f} "
        f"cli_dense_torch_ratio={median['dense-torch'] / median['bm25']:.2f} "
        f"cli_first_dense_s={first:.2f} dense_heavy_imports={','.join(heavy) or 'none'}"
    )


if __name__ == "__main__":
    main()
