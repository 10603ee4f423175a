"""MiniLM throughput on a BEIR corpus, with and without length bucketing.

    python benchmarks/minilm_bucketing.py /path/to/corpus.jsonl --n 500 --threads 1

Each text is ``title + " " + text`` of one corpus line (``--vary`` cuts each to a seeded
8..200 words, like chunks of mixed length). Modes, each timed ``--repeat`` times
(best kept) after one warm-up batch:

* ``bucketed``: :class:`MiniLMEmbedder` as shipped (batches sorted by token count);
* ``input-order``: the same, with ``length_bucketing=False`` (each batch padded to its longest);
* ``st-single-call``: one ``SentenceTransformer.encode`` call over all texts, which sorts by
  character length internally (the library's own bucketing), for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlflow_rag.embed.minilm import MiniLMEmbedder


def vary_lengths(texts: list[str], *, seed: int = 0) -> list[str]:
    """Each text cut to a seeded random number of words in 8..200: chunk-like mixed lengths."""
    import random

    rng = random.Random(seed)
    out = []
    for text in texts:
        words = text.split()
        out.append(" ".join(words[: rng.randint(8, 200)]))
    return out


def read_corpus(path: Path, n: int) -> list[str]:
    texts: list[str] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(texts) >= n:
                break
            row = json.loads(line)
            text = f"{row.get('title', '')} {row.get('text', '')}".strip()
            if text:
                texts.append(text)
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="BEIR corpus.jsonl")
    parser.add_argument("--n", type=int, default=500, help="number of texts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--vary", action="store_true", help="cut texts to 8..200 words (mixed-length chunks)"
    )
    args = parser.parse_args(argv)

    import torch

    texts = read_corpus(args.corpus, args.n)
    if args.vary:
        texts = vary_lengths(texts)
    embedder = MiniLMEmbedder(batch_size=args.batch_size, num_threads=args.threads)
    model = embedder.model
    counts = embedder._token_counts(texts)
    print(
        f"{len(texts)} texts, word pieces mean {counts.mean():.0f} / median "
        f"{int(sorted(counts)[len(counts) // 2])} / max {counts.max()}, "
        f"{int((counts > embedder.max_tokens).sum())} over {embedder.max_tokens} (truncated); "
        f"batch_size {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    embedder.embed(texts[: args.batch_size])  # warm-up

    def bucketed() -> object:
        embedder.length_bucketing = True
        return embedder.embed(texts)

    def input_order() -> object:
        embedder.length_bucketing = False
        return embedder.embed(texts)

    def st_single_call() -> object:
        return model.encode(
            texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False
        )

    modes: dict[str, Callable[[], object]] = {
        "bucketed": bucketed, "input-order": input_order, "st-single-call": st_single_call
    }
    # Best of --repeat rounds, modes alternating within a round so that load from other
    # processes hits every mode alike. CPU seconds (this process) are reported next to wall
    # seconds: on a shared machine they are the steadier measure.
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for _ in range(args.repeat):
        for mode, run in modes.items():
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            run()
            wall[mode] = min(wall.get(mode, float("inf")), time.perf_counter() - wall_start)
            cpu[mode] = min(cpu.get(mode, float("inf")), time.process_time() - cpu_start)
    for mode in modes:
        print(
            f"{mode:>15}: wall {wall[mode]:7.2f} s = {len(texts) / wall[mode]:6.1f} chunks/s;"
            f"  cpu {cpu[mode]:7.2f} s = {len(texts) / cpu[mode]:6.1f} chunks/cpu-s"
        )


if __name__ == "__main__":
    main()
