"""Pseudo-relevance feedback: a second search informed by the top hits of the first. Pure.

The top ``docs`` chunks of a first ranking are assumed relevant (no judgement is used):

- ``rm3`` (Lavrenko & Croft's relevance model, as Anserini's BM25+RM3): the ``terms`` words
  most likely under those chunks (each chunk's term frequencies, weighted by its share of the
  first ranking's scores) are searched with BM25 on their own, and that list is interpolated
  with the original BM25 list (z-scored, weight :data:`RM3_ORIGINAL_WEIGHT` each, Anserini's
  default 0.5). Separate searches rather than one longer query because FTS5's BM25 takes no
  per-term weights: appended terms would count as much as the user's own words.
- ``rocchio`` (Rocchio, 1971, on embeddings): the query vector moves towards the mean of the
  feedback chunks' vectors, ``q + ROCCHIO_BETA * mean(v)``, renormalised, and dense search
  runs again with it.
- ``rm3-rocchio``: both, for hybrid search (the two new lists are fused as the originals were).

For a hybrid variant the feedback chunks are the top of the fused ranking, which is better
than either list alone, so both second passes start from the best first pass there is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from mlflow_rag.errors import InvalidInput, UnknownChoice

FEEDBACKS = ("none", "rm3", "rocchio", "rm3-rocchio")
DEFAULT_FEEDBACK = "none"
DEFAULT_FEEDBACK_DOCS = 3
DEFAULT_FEEDBACK_TERMS = 20
RM3_ORIGINAL_WEIGHT = 0.5
ROCCHIO_BETA = 1.0
_WORD = re.compile(r"\w+")


def check_feedback(feedback: object) -> str:
    if not isinstance(feedback, str) or feedback not in FEEDBACKS:
        raise UnknownChoice("feedback", feedback, FEEDBACKS)
    return feedback


def uses_rm3(feedback: str | None) -> bool:
    return feedback in ("rm3", "rm3-rocchio")


def uses_rocchio(feedback: str | None) -> bool:
    return feedback in ("rocchio", "rm3-rocchio")


def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def expansion_terms(texts: Sequence[str], scores: Sequence[float], *, terms: int) -> list[str]:
    """The ``terms`` words of highest relevance-model weight over feedback chunks ``texts``
    (best first, their first-pass ``scores``): ``sum_d w_d * tf(t, d) / |d|`` with ``w_d``
    each chunk's score shifted to be positive, as a share of their sum. Stop words, numbers
    and words under three characters carry no topic and are left out."""
    if len(texts) != len(scores):
        raise InvalidInput(f"{len(texts)} feedback texts for {len(scores)} scores")
    if not texts or terms < 1:
        return []
    values = np.asarray(scores, dtype=np.float64)
    shares = values - values.min() + 1e-9  # the last feedback chunk still counts a little
    shares /= shares.sum()
    stop = _stopwords()
    weights: dict[str, float] = {}
    for text, share in zip(texts, shares, strict=True):
        words = [w for w in _WORD.findall(text.lower())
                 if len(w) > 2 and not w.isdigit() and w not in stop]
        for word, count in Counter(words).items():
            weights[word] = weights.get(word, 0.0) + float(share) * count / len(words)
    # highest weight first; equal weights keep the order words were first seen
    return sorted(weights, key=lambda word: -weights[word])[:terms]


def rocchio(query: np.ndarray, feedback: np.ndarray, *, beta: float = ROCCHIO_BETA) -> np.ndarray:
    """``query + beta * mean(feedback rows)``, L2-normalised (float32, the query's shape)."""
    if feedback.size == 0:
        return query
    moved = query.astype(np.float64) + beta * feedback.astype(np.float64).mean(axis=0)
    norm = float(np.linalg.norm(moved))
    return (moved / norm if norm > 0 else moved).astype(np.float32)


__all__ = [
    "DEFAULT_FEEDBACK",
    "DEFAULT_FEEDBACK_DOCS",
    "DEFAULT_FEEDBACK_TERMS",
    "FEEDBACKS",
    "check_feedback",
    "expansion_terms",
    "rocchio",
    "uses_rm3",
    "uses_rocchio",
]
