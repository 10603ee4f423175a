"""Re-ingesting an unchanged corpus against its first ingest (embedding cache, hashes).

    python benchmarks/reingest.py [--n 5183] [--embedder tfidf] [--reps 3]

The first ``--n`` SciFact abstracts (../shared/data/scifact-train/corpus.jsonl) go through
the whole pipeline (:func:`mlflow_rag.ingest.ingest`: load, chunk, embed, write, persist)
into a fresh store, then the same file again into the same store. Reported: both wall times,
the fraction second / first (median over repetitions), and what the second pass embedded and
wrote (it must be nothing). TF-IDF is the default embedder because it is the cheapest first
ingest, so the fraction is the hardest to keep small; ``--embedder minilm`` shows the usual
case. The last line is machine-readable: ``reingest_fraction=<x> reembedded=<n>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_rag.ingest import IngestOptions, ingest
from mlflow_rag.store.store import Store
from mlflow_rag.types import IngestReport

DEFAULT_CORPUS = (Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact-train"
                  / "corpus.jsonl")


def timed_ingest(corpus: Path, root: Path, embedder: str) -> tuple[float, IngestReport]:
    started = time.perf_counter()
    with Store.open(root, create=True) as store:
        report = ingest([str(corpus)], store, options=IngestOptions(embedder=embedder),
                        progress=False)
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--n", type=int, default=0, help="first N documents (0: all)")
    parser.add_argument("--embedder", default="tfidf")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    fractions, reembedded = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        lines = args.corpus.read_text().splitlines(keepends=True)
        corpus.write_text("".join(lines[: args.n] if args.n else lines))
        for rep in range(args.reps):
            root = Path(tmp) / f"store{rep}"
            first, report1 = timed_ingest(corpus, root, args.embedder)
            second, report2 = timed_ingest(corpus, root, args.embedder)
            fractions.append(second / first)
            reembedded += report2.vectors_embedded + report2.documents_new + report2.documents_updated
            print(f"rep {rep}: first {first:.2f} s ({report1.documents_new} documents, "
                  f"{report1.chunks} chunks, {report1.vectors_embedded} embedded); second "
                  f"{second:.2f} s ({report2.documents_unchanged} unchanged, "
                  f"{report2.vectors_embedded} embedded, {report2.chunks} chunks written; stages "
                  + ", ".join(f"{k} {v:.2f}" for k, v in report2.seconds.items())
                  + f"); fraction {fractions[-1]:.3f}", flush=True)
    print(f"reingest_fraction={statistics.median(fractions):.3f} reembedded={reembedded}")


if __name__ == "__main__":
    main()
