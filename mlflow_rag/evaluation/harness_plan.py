"""The evaluation harness's pure decisions: the tokenizer that sizes a store's chunks, the
directory names of stores (per dataset, corpus, chunking and tokenizer), how deep to search,
what to ingest, and which judged documents the corpus lacks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.embed.registry import find_embedder_kind
from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.eval_dataset import EvalDataset, corpus_digest
from mlflow_rag.evaluation.variants import Chunking
from mlflow_rag.store.checks import MAX_K, model_slug
from mlflow_rag.store.store import Store

APPROX_TOKENIZER = "approx"


def chunk_tokenizer(embedders: Sequence[str]) -> str | None:
    """The tokenizer that sizes a store's chunks (the first of its embedders' own, so a chunk
    is never longer than the model reads), or None for the approximate one."""
    return next(filter(None, (tokenizer_of(spec) for spec in embedders)), None)


def tokenizer_of(spec: str) -> str | None:
    kind = find_embedder_kind(spec)
    return kind.tokenizer if kind is not None else None


def store_dir_name(chunking: Chunking, tokenizer: str | None) -> str:
    """``recursive-256-32-minilm``: the chunking and the tokenizer that measured it."""
    return f"{chunking.slug}-{tokenizer or APPROX_TOKENIZER}"


def dataset_dir_name(dataset: EvalDataset) -> str:
    """The dataset's name and a digest of its corpus file: stores of two corpora (or versions
    of one) never share a directory, and the stores of one corpus are reused whatever the
    queries (``--max-queries``, new claims or judgements), which change no chunk or vector.
    Without a corpus file the name alone (:func:`corpus_dir_name` adds the sources)."""
    name = model_slug(dataset.name)
    if dataset.corpus_path is None:
        return name
    return f"{name}-{corpus_digest(Path(dataset.corpus_path))[:12]}"


def candidate_depth(k: int, factor: int) -> int:
    """Chunks to retrieve so that ``k`` distinct documents usually remain after roll-up."""
    return min(k * factor, MAX_K)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q * 100)) if values else 0.0


def corpus_dir_name(dataset: EvalDataset, sources: Sequence[str],
                    loader_options: Mapping[str, Any]) -> str:
    """The dataset's directory name, plus a digest of the corpus sources and loader options
    when they are given: stores of one questions file over two corpora never mix."""
    name = dataset_dir_name(dataset)
    if not sources and not loader_options:
        return name
    import hashlib
    import json

    key = json.dumps({"sources": [str(Path(s).resolve()) if "://" not in s else s
                                  for s in sources],
                      "loader_options": dict(loader_options)}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:8]}"


def corpus_problems(store: Store, dataset: EvalDataset) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Judged relevant ids (grade > 0) that are no document of ``store``, and the queries with
    none of their relevant ids in it (every variant scores 0 on those, whatever it does)."""
    relevant = {qid: {d for d, grade in judged.items() if grade > 0}
                for qid, judged in dataset.qrels.items() if qid in dataset.queries}
    wanted = sorted(set().union(*relevant.values())) if relevant else []
    present = set(store.catalog.document_states(wanted)) if wanted else set()
    missing = tuple(d for d in wanted if d not in present)
    hopeless = tuple(q for q, ids in relevant.items() if ids and not ids & present)
    return missing, hopeless


def corpus_sources(dataset: EvalDataset, sources: Sequence[str]) -> list[str]:
    """What to ingest: the dataset's own corpus (a BEIR folder), else the given sources."""
    if sources:
        return list(sources)
    if dataset.corpus_path is None:
        raise InvalidInput(
            f"dataset {dataset.name!r} is a questions file without a corpus; name the documents "
            "its relevant ids refer to with --corpus SOURCE"
        )
    corpus = Path(dataset.corpus_path)
    # The BEIR loader is chosen for the folder (title and text as sections), not the file.
    return [str(corpus.parent if corpus.name == "corpus.jsonl" else corpus)]
