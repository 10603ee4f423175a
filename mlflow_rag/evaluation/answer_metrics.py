"""Scores of one answer against its reference: pure functions, no I/O, no mlflow.

- ``exact_match`` and ``token_f1`` compare the answer with the reference answer after SQuAD's
  normalisation (lower case, punctuation and the articles a/an/the removed, whitespace
  collapsed). Citation markers ``[chunk id]`` are removed from the answer first: they hold
  document ids (speaker names), which would otherwise score as answer words.
- ``citation_precision``/``citation_recall`` compare the documents an answer cites (unique)
  with the relevant documents. An answer that cites nothing has precision 0 (it supports no
  claim), and recall 0 unless nothing is relevant.
- ``retrieval_scores`` is the project's ranking engine (``metrics.evaluate_run``) on one
  question: recall@k and nDCG@k of the retrieved documents.
- ``usage_summary``: what a variant's answers cost (tokens, cost, latency per stage).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.metrics import evaluate_run

_CITATION = re.compile(r"\[[^\]]*\]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# Curly quotes and dashes are punctuation too (the speakers' abstracts are full of them).
_PUNCTUATION = set(string.punctuation) | set("‘’“”–—…")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation, after removing ``[citation]`` markers."""
    text = _CITATION.sub(" ", text).lower()
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the normalised answer equals the normalised reference, else 0.0."""
    return float(normalize_answer(answer) == normalize_answer(reference))


def token_f1(answer: str, reference: str) -> float:
    """The harmonic mean of token precision and recall (tokens counted with multiplicity);
    1.0 when both are empty, 0.0 when only one is."""
    got, want = normalize_answer(answer).split(), normalize_answer(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def citation_precision(cited: Iterable[str], relevant: Iterable[str]) -> float:
    """Share of the cited documents (unique) that are relevant; 0.0 when none is cited."""
    cited_set, relevant_set = set(cited), set(relevant)
    if not cited_set:
        return 0.0
    return len(cited_set & relevant_set) / len(cited_set)


def citation_recall(cited: Iterable[str], relevant: Iterable[str]) -> float:
    """Share of the relevant documents that are cited; 1.0 when nothing is relevant."""
    cited_set, relevant_set = set(cited), set(relevant)
    if not relevant_set:
        return 1.0
    return len(cited_set & relevant_set) / len(relevant_set)


def retrieval_scores(retrieved: Sequence[str], relevant: Iterable[str], *,
                     k: int) -> dict[str, float]:
    """``recall_at_K`` and ``ndcg_at_K`` of the ranked document ids ``retrieved``."""
    judged = {doc: 1 for doc in relevant}
    if not judged:
        raise InvalidInput("retrieval scores need at least one relevant document id")
    result = evaluate_run({"q": list(retrieved)}, {"q": judged}, ks=(k,),
                          metrics=("recall", "ndcg"))
    return result.per_query["q"]


# What answering a question cost, as an evaluation's child run logs it (``<name>/sum`` and
# ``<name>/mean`` per question; latency per stage as mean and p95).
USAGE_TOTALS = ("input_tokens", "output_tokens", "cost_usd")
LATENCY_STAGES = ("embed", "retrieve", "generate")


def usage_summary(usages: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Tokens and cost (sum over the questions and mean per question) and latency per stage
    (``embed_ms/mean``, ``embed_ms/p95``..., and ``answer_ms`` their sum) of the answers'
    usages: ``{"input_tokens", "output_tokens", "cost_usd", "latency_ms": {stage: ms}}``.
    Empty when there are none."""
    if not usages:
        return {}
    out: dict[str, float] = {}
    for name in USAGE_TOTALS:
        values = [float(u.get(name) or 0) for u in usages]
        out[f"{name}/sum"] = sum(values)
        out[f"{name}/mean"] = sum(values) / len(values)
    stages = {stage: [float(u["latency_ms"][stage]) for u in usages
                      if stage in (u.get("latency_ms") or {})] for stage in LATENCY_STAGES}
    stages["answer"] = [sum(float(v) for v in (u.get("latency_ms") or {}).values())
                        for u in usages]
    for stage, values in stages.items():
        if values:
            out[f"{stage}_ms/mean"] = sum(values) / len(values)
            out[f"{stage}_ms/p95"] = float(np.percentile(values, 95))
    return out
