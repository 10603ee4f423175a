"""Roll ranked chunk hits up to ranked documents. Pure; no I/O.

Search returns chunks, but relevance judgements (BEIR qrels, a user's questions file) judge
whole documents, so a run must be scored at document level: a document ranks where its best
chunk ranks, and its other chunks must not take further ranks (that would count it twice).
"""

from __future__ import annotations

from collections.abc import Iterable

from mlflow_rag.errors import InvalidInput


def rollup_to_documents(
    ranked_chunk_hits: Iterable[tuple[str, float]],
    *,
    limit: int | None = None,
) -> list[tuple[str, float]]:
    """Keep each document's best chunk: ``[(doc_id, score), ...]`` in rank order.

    ``ranked_chunk_hits`` holds one ``(document_id, score)`` pair per chunk hit, best first.
    The input order *is* the ranking: scores are carried along but never compared, so this is
    right for similarities and distances alike. The best chunk of a document is therefore its
    first one, and the document keeps that chunk's rank and score.

    ``limit`` stops after that many documents (a search for 100 chunks may yield fewer
    documents; ask for more chunks than documents you need).

    >>> rollup_to_documents([("a", 0.9), ("b", 0.8), ("a", 0.7), ("c", 0.6)])
    [('a', 0.9), ('b', 0.8), ('c', 0.6)]
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInput(f"limit must be an integer >= 1 or None, got {limit!r}")
    documents: list[tuple[str, float]] = []
    seen: set[str] = set()
    for doc_id, score in ranked_chunk_hits:
        if doc_id in seen:
            continue
        seen.add(doc_id)
        documents.append((doc_id, score))
        if limit is not None and len(documents) >= limit:
            break
    return documents
