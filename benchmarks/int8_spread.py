"""How far ``minilm:onnx-int8`` vectors stray from the plain model's, and how much that varies.

    python benchmarks/int8_spread.py [--abstracts 200] [--claims 200] [--threads 1,2] [--runs 3]

Texts are the first ``--abstracts`` SciFact train abstracts (``title + "\\n\\n" + text``, as
ingest embeds them) and the first ``--claims`` claims, the texts that
``tests/test_minilm_fast.py`` uses (its first 20 of each). The plain model embeds them once
(batch 8, one thread, as the test's fixture does); ``onnx-int8`` embeds them ``--runs`` times
for every thread count in ``--threads``, each run with a new session. Reported per thread count:
the minimum, 0.1 % quantile and mean cosine to the plain model, over all texts and over the
test's 40; how far repeated runs and the thread counts differ from each other (max abs
component difference); and which text is the worst.

The last line is machine-readable:
``int8_min_cosine=<x> int8_min_cosine_test_texts=<y> int8_run_spread=<z> int8_thread_spread=<w>
int8_precision_option_effect=<v>`` (the max abs difference made by
:data:`~mlflow_rag.embed.minilm_fast.INT8_SESSION_CONFIG`, 0 on a CPU with VNNI)
fp32_query_min_cosine=<c> fp32_query_max_abs=<d>`` (the fp32 export that embeds the queries of a
plain ``minilm`` store, one query per run as search does, against the plain model).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_rag.embed import minilm_fast
from mlflow_rag.embed.minilm import MiniLMEmbedder
from mlflow_rag.embed.minilm_fast import OnnxInt8MiniLMEmbedder, minilm_query_embedder

# The tests' shared data: $MLFLOW_RAG_SHARED_DATA, else ../shared/data beside the checkout.
SHARED = Path(
    os.environ.get("MLFLOW_RAG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
DEFAULT_DATA = SHARED / "scifact-train"
TEST_ABSTRACTS = TEST_CLAIMS = 20  # what tests/test_minilm_fast.py embeds


def load_texts(folder: Path, abstracts: int, claims: int) -> list[str]:
    texts: list[str] = []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if len(texts) == abstracts:
                break
            row = json.loads(line)
            texts.append(f"{row['title']}\n\n{row['text']}")
    with (folder / "queries.jsonl").open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == claims:
                break
            texts.append(json.loads(line)["text"])
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--abstracts", type=int, default=200)
    parser.add_argument("--claims", type=int, default=200)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.abstracts < TEST_ABSTRACTS or args.claims < TEST_CLAIMS:
        parser.error(f"--abstracts and --claims must be >= {TEST_ABSTRACTS} (the test's texts)")
    texts = load_texts(args.data, args.abstracts, args.claims)
    test_rows = np.r_[0:TEST_ABSTRACTS, args.abstracts : args.abstracts + TEST_CLAIMS]

    started = time.perf_counter()
    plain = MiniLMEmbedder(batch_size=8, num_threads=1).embed(texts).vectors
    print(f"plain: {len(texts)} texts in {time.perf_counter() - started:.1f} s", flush=True)

    by_threads: dict[int, list[np.ndarray]] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        for run in range(args.runs):
            embedder = OnnxInt8MiniLMEmbedder(num_threads=threads)  # a new session per run
            started = time.perf_counter()
            vectors = embedder.embed(texts).vectors
            by_threads.setdefault(threads, []).append(vectors)
            cos = np.sum(vectors * plain, axis=1)
            print(
                f"threads={threads} run={run}: min {cos.min():.5f} (text {int(cos.argmin())}) "
                f"mean {cos.mean():.5f} test-texts min {cos[test_rows].min():.5f} "
                f"({time.perf_counter() - started:.1f} s)",
                flush=True,
            )

    # The same texts without the session option that makes non-VNNI CPUs exact: on a VNNI CPU
    # this must change nothing; on an AVX2-only CPU it shows what the option saves.
    saved = dict(minilm_fast.INT8_SESSION_CONFIG)
    minilm_fast.INT8_SESSION_CONFIG.clear()
    try:
        default_kernels = OnnxInt8MiniLMEmbedder(num_threads=1).embed(texts).vectors
    finally:
        minilm_fast.INT8_SESSION_CONFIG.update(saved)
    cos = np.sum(default_kernels * plain, axis=1)
    option_effect = float(np.abs(default_kernels - by_threads[min(by_threads)][0]).max())
    print(
        f"without {sorted(saved)}: min {cos.min():.5f} mean {cos.mean():.5f} "
        f"test-texts min {cos[test_rows].min():.5f}; max abs diff to with: {option_effect:.2e}"
    )

    print(
        "\n| intra-op threads | runs | min cosine | 0.1 % quantile | mean "
        "| min over the test's 40 | max abs diff between runs |"
    )
    print("|---|---|---|---|---|---|---|")
    run_spread = 0.0
    all_cos: list[np.ndarray] = []
    for threads, runs in by_threads.items():
        cos = np.sum(runs[0] * plain, axis=1)
        all_cos += [np.sum(v * plain, axis=1) for v in runs]
        spread = max(float(np.abs(v - runs[0]).max()) for v in runs)
        run_spread = max(run_spread, spread)
        print(
            f"| {threads} | {len(runs)} | {cos.min():.5f} | {np.quantile(cos, 0.001):.5f} | "
            f"{cos.mean():.5f} | {cos[test_rows].min():.5f} | {spread:.2e} |"
        )
    firsts = [runs[0] for runs in by_threads.values()]
    thread_spread = max(float(np.abs(v - firsts[0]).max()) for v in firsts)
    # For comparison, the fp32 export that embeds a plain minilm store's queries (search's path).
    fp32 = minilm_query_embedder(runtime="onnx", num_threads=1)
    fp32_vectors = np.stack([fp32.embed_query(text) for text in texts])
    fp32_cos = np.sum(fp32_vectors * plain, axis=1)
    fp32_max_abs = float(np.abs(fp32_vectors - plain).max())
    print(f"\nfp32 query path (minilm on ONNX Runtime): min cosine {fp32_cos.min():.7f}, "
          f"max abs diff {fp32_max_abs:.1e}")
    print(f"max abs diff between thread counts: {thread_spread:.2e}")
    worst = int(np.argmin(np.min(all_cos, axis=0)))
    print(f"worst text ({worst}): {texts[worst][:100]!r}")
    low = np.min(all_cos, axis=0)
    print(
        f"int8_min_cosine={low.min():.5f} int8_min_cosine_test_texts={low[test_rows].min():.5f} "
        f"int8_run_spread={run_spread:.2e} int8_thread_spread={thread_spread:.2e} "
        f"int8_precision_option_effect={option_effect:.2e} "
        f"fp32_query_min_cosine={fp32_cos.min():.7f} fp32_query_max_abs={fp32_max_abs:.1e}"
    )


if __name__ == "__main__":
    main()
