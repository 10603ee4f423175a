"""MiniLM throughput: the plain sentence-transformers model against a faster backend.

    python benchmarks/minilm_speed.py [--n 500] [--backend onnx-int8] [--also onnx,torch-int8]
                                      [--batch-size 64] [--fast-batch-size B] [--plain-b1]
                                      [--threads N] [--rounds 3] [--quality]

Texts are the first ``--n`` SciFact abstracts, ``title + "\\n\\n" + text`` (what ingest
embeds for a BEIR document), each truncated by the model at 254 word pieces. Plain is
:class:`MiniLMEmbedder` as shipped (``"minilm"``: sentence-transformers, length bucketing,
``--batch-size`` 64); the candidates are ``get_embedder("minilm", backend=...)`` with the
same texts and thread count, each at its own default batch size (one text per run for the
ONNX backends, which is faster there; ``--fast-batch-size`` overrides it where allowed).
``--plain-b1`` adds the plain model at batch size 1 (``plain-b1``), to show how much of a
gain is the backend and how much the batch size. Each round runs every embedder once, the
order rotating between rounds so that load from other processes hits all alike; reported
are chunks/s (median wall time), CPU seconds of this process (all threads) and the speedup,
the median over rounds of the per-round ratio plain wall / candidate wall.

``--quality`` then embeds the whole SciFact train corpus (one vector per document, as
above) and its 809 claims with every embedder, ranks the corpus for each claim by exact dot
product (numpy, no store) and scores nDCG@10 with ``mlflow_rag.evaluation.metrics``; it also
reports the per-text cosine to the plain model's vectors.

The last line is machine-readable: ``minilm_speedup=<x> ndcg_delta=<y>`` for ``--backend``
(``ndcg_delta`` is candidate minus plain; ``nan`` without ``--quality``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.torch_int8 import TorchInt8MiniLMEmbedder
from mlflow_rag.embed.base import Embedder
from mlflow_rag.embed.minilm import MiniLMEmbedder
from mlflow_rag.embed.minilm_fast import (
    BACKENDS,
    minilm_embedder,
    physical_cores,
)
from mlflow_rag.evaluation.datasets import load_beir_folder
from mlflow_rag.evaluation.metrics import evaluate_run

#: Measured but not offered by get_embedder (quality; see mlflow_rag.embed.minilm_fast).
MEASURED_ONLY = ("torch-int8",)
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "scifact-train"


@dataclass
class Timings:
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def read_corpus(path: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(ids, texts) of a BEIR corpus: ``title + "\\n\\n" + text``, as ingest joins them."""
    ids: list[str] = []
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(texts) >= limit:
                break
            row = json.loads(line)
            title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
            joined = f"{title}\n\n{text}" if title and text else title or text
            if joined:
                ids.append(str(row["_id"]))
                texts.append(joined)
    return ids, texts


def measure(embedders: dict[str, Embedder], texts: list[str], rounds: int) -> dict[str, Timings]:
    timings = {name: Timings() for name in embedders}
    names = list(embedders)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:  # rotate who goes first
            wall, cpu = time.perf_counter(), time.process_time()
            embedders[name].embed(texts)
            timings[name].wall.append(time.perf_counter() - wall)
            timings[name].cpu.append(time.process_time() - cpu)
        print(f"  round {round_ + 1}/{rounds}: " + ", ".join(
            f"{n} {timings[n].wall[-1]:.1f} s" for n in names), flush=True)
    return timings


def ndcg_at_10(doc_ids: list[str], docs: np.ndarray, query_ids: list[str], queries: np.ndarray,
               qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """nDCG@10 per query of an exact dot-product search of ``queries`` over ``docs``."""
    scores = queries @ docs.T
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    run: dict[str, list[tuple[str, float]]] = {}
    for row, qid in enumerate(query_ids):
        ranked = top[row][np.argsort(-scores[row, top[row]], kind="stable")]
        run[qid] = [(doc_ids[j], float(scores[row, j])) for j in ranked]
    result = evaluate_run(run, qrels, ks=(10,), metrics=("ndcg",))
    return {qid: row["ndcg_at_10"] for qid, row in result.per_query.items()}


def quality(embedders: dict[str, Embedder], data: Path) -> dict[str, float]:
    dataset = load_beir_folder(data, split="train")
    assert dataset.corpus_path is not None
    doc_ids, docs = read_corpus(dataset.corpus_path)
    query_ids = list(dataset.queries)
    queries = [dataset.queries[q] for q in query_ids]
    print(f"quality: {len(docs)} documents, {len(queries)} claims ({data.name}, split train)")
    scores: dict[str, float] = {}
    reference: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    for name, embedder in embedders.items():
        started = time.perf_counter()
        # Queries one at a time, as search embeds them (a batch could round differently).
        doc_vectors = embedder.embed(docs).vectors
        query_vectors = np.stack([embedder.embed_query(q) for q in queries])
        per_query = ndcg_at_10(doc_ids, doc_vectors, query_ids, query_vectors, dataset.qrels)
        values = np.array([per_query[q] for q in sorted(per_query)])
        scores[name] = float(values.mean())
        line = f"{name:>12}: nDCG@10 {scores[name]:.4f}"
        if reference is None:
            reference = (doc_vectors, query_vectors, values)
        else:
            doc_cos = np.sum(doc_vectors * reference[0], axis=1)
            query_cos = np.sum(query_vectors * reference[1], axis=1)
            # Paired over the same queries: how far the delta is from "no difference".
            diff = values - reference[2]
            stderr = float(diff.std(ddof=1) / np.sqrt(len(diff)))
            line += (
                f" (delta {scores[name] - scores['plain']:+.4f}, paired std. error {stderr:.4f}, "
                f"{int((diff != 0).sum())} of {len(diff)} queries changed); cosine to plain: "
                f"documents min {doc_cos.min():.4f} mean {doc_cos.mean():.4f}, claims min "
                f"{query_cos.min():.4f} mean {query_cos.mean():.4f}"
            )
        print(f"{line}  [{time.perf_counter() - started:.0f} s]", flush=True)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="SciFact abstracts to embed")
    parser.add_argument("--backend", default="onnx-int8", choices=BACKENDS[1:],
                        help="the candidate the last line reports")
    more = ", ".join([*BACKENDS[1:], *MEASURED_ONLY])
    parser.add_argument("--also", default="", help=f"more to measure, comma-separated: {more}")
    parser.add_argument("--batch-size", type=int, default=64, help="plain model's batch size")
    parser.add_argument("--fast-batch-size", type=int, default=None,
                        help="candidates' batch size (default: each backend's own)")
    parser.add_argument("--plain-b1", action="store_true", help="also plain at batch size 1")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every embedder (default: physical cores)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quality", action="store_true", help="nDCG@10 on SciFact train too")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="SciFact (BEIR) folder")
    args = parser.parse_args(argv)

    threads = args.threads or physical_cores()
    extra = [b.strip() for b in args.also.split(",") if b.strip() and b.strip() != args.backend]
    embedders: dict[str, Embedder] = {
        "plain": MiniLMEmbedder(batch_size=args.batch_size, num_threads=threads)
    }
    if args.plain_b1:
        embedders["plain-b1"] = MiniLMEmbedder(batch_size=1, num_threads=threads)
    fast_options: dict[str, int] = {"num_threads": threads}
    if args.fast_batch_size is not None:
        fast_options["batch_size"] = args.fast_batch_size
    for backend in [args.backend, *extra]:
        if backend == "torch-int8":  # plain's batch size: torch pays per call at batch 1
            embedders[backend] = TorchInt8MiniLMEmbedder(batch_size=args.batch_size, num_threads=threads)
        else:
            embedders[backend] = minilm_embedder("minilm", backend=backend, **fast_options)

    _, texts = read_corpus(args.data / "corpus.jsonl", args.n)
    plain = embedders["plain"]
    assert isinstance(plain, MiniLMEmbedder)
    counts = plain._token_counts(texts)
    print(
        f"{len(texts)} SciFact abstracts: word pieces mean {counts.mean():.0f}, median "
        f"{int(np.median(counts))}, {int((counts > plain.max_tokens).sum())} truncated at "
        f"{plain.max_tokens}; {threads} threads, {args.rounds} rounds; batch sizes "
        + ", ".join(f"{n} {getattr(e, 'batch_size', '?')}" for n, e in embedders.items())
    )
    for name, embedder in embedders.items():  # load, export if needed, and warm up
        started = time.perf_counter()
        embedder.embed(texts[: args.batch_size])
        print(f"  {name}: ready in {time.perf_counter() - started:.1f} s", flush=True)

    timings = measure(embedders, texts, args.rounds)
    base = timings["plain"]
    speedups: dict[str, float] = {}
    for name, timing in timings.items():
        wall = statistics.median(timing.wall)
        cpu = statistics.median(timing.cpu)
        line = (
            f"{name:>12}: {len(texts) / wall:6.1f} chunks/s (wall {wall:6.1f} s), "
            f"CPU {cpu:6.1f} s"
        )
        if name != "plain":
            speedups[name] = statistics.median(
                p / c for p, c in zip(base.wall, timing.wall, strict=True))
            cpu_ratio = statistics.median(p / c for p, c in zip(base.cpu, timing.cpu, strict=True))
            line += f"; speedup x{speedups[name]:.2f} (CPU x{cpu_ratio:.2f})"
        print(line)

    delta = float("nan")
    if args.quality:
        # plain-b1 only differs from plain in speed (fp32 padding is masked exactly).
        scores = quality({n: e for n, e in embedders.items() if n != "plain-b1"}, args.data)
        delta = scores[args.backend] - scores["plain"]
    print(f"minilm_speedup={speedups[args.backend]:.3f} ndcg_delta={delta:.4f}")


if __name__ == "__main__":
    main()
