"""k-fold cross-validation over the queries of a grid: how well does choosing among the grid's
variants generalise to queries the choice never saw? Pure (numpy), no search.

Every variant is scored on every query once (the harness's per-query rows); a fold only
re-reads those scores, so cross-validating costs no search. The queries are dealt into
``folds`` folds by a seeded shuffle. For each fold, the variant with the best mean on the
other folds is chosen (its parameters "learned" there: a fusion weight, a feedback depth...),
and scored on the held-out fold. The estimate is the mean of the held-out scores, each fold
weighted by its queries (so it is a mean over queries, like the metric itself).

A single variant cross-validates to its own mean: the estimate differs from the best
variant's mean only by the cost of choosing, which is what it is there to show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlflow_rag.errors import InvalidInput

if TYPE_CHECKING:  # harness_types imports variants, which imports this module
    from mlflow_rag.evaluation.harness_types import EvaluationResult

SEED = 0


@dataclass(frozen=True)
class Fold:
    """One held-out fold: the variant chosen on the other folds, and its scores."""

    index: int
    chosen: str
    train_mean: float  # the chosen variant's mean on the other folds
    test_mean: float  # its mean on this fold
    queries: int  # held-out queries


@dataclass(frozen=True)
class CrossValidation:
    metric: str
    folds: tuple[Fold, ...]
    candidates: tuple[str, ...]  # the variants chosen among

    @property
    def mean(self) -> float:
        """Held-out mean over queries (folds weighted by their size)."""
        total = sum(f.queries for f in self.folds)
        return sum(f.test_mean * f.queries for f in self.folds) / total

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "folds": len(self.folds), "mean": self.mean,
                "candidates": list(self.candidates),
                "per_fold": [{"fold": f.index, "chosen": f.chosen, "train_mean": f.train_mean,
                              "test_mean": f.test_mean, "queries": f.queries}
                             for f in self.folds]}


def check_folds(folds: object) -> int:
    """0 (no cross-validation) or at least 2 folds."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0 or folds == 1:
        raise InvalidInput(f"cv_folds must be 0 (off) or an integer >= 2, got {folds!r}")
    return folds


def assign_folds(query_ids: Sequence[str], folds: int, *, seed: int = SEED) -> dict[str, int]:
    """Query id -> fold, by a seeded shuffle of the sorted ids (the same ids, the same folds)."""
    ordered = sorted(query_ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[j]: i % folds for i, j in enumerate(order)}


def cross_validate(
    scores: Mapping[str, Mapping[str, float]], *, folds: int, metric: str, seed: int = SEED,
) -> CrossValidation:
    """Cross-validate the choice among ``scores``'s variants (label -> query id -> score),
    over the queries every variant scored (a tie goes to the variant listed first)."""
    check_folds(folds)
    if folds == 0 or not scores:
        raise InvalidInput("cross-validation needs at least 2 folds and one variant")
    labels = list(scores)
    common = sorted(set.intersection(*(set(scores[label]) for label in labels)))
    if len(common) < folds:
        raise InvalidInput(f"{len(common)} queries scored by every variant: too few for "
                           f"{folds} folds")
    matrix = np.array([[scores[label][q] for q in common] for label in labels])
    fold_of = assign_folds(common, folds, seed=seed)
    which = np.array([fold_of[q] for q in common])
    out = []
    for f in range(folds):
        train, test = matrix[:, which != f], matrix[:, which == f]
        means = train.mean(axis=1)
        best = int(np.argmax(means))  # the first of equal means
        out.append(Fold(index=f, chosen=labels[best], train_mean=float(means[best]),
                        test_mean=float(test[best].mean()), queries=int(test.shape[1])))
    return CrossValidation(metric=metric, folds=tuple(out), candidates=tuple(labels))


def cross_validate_result(result: EvaluationResult, metric: str) -> CrossValidation | None:
    """The grid's cross-validation (``cv_folds``) over its variants' per-query ``metric``;
    None when the grid asks for none."""
    if not result.grid.cv_folds:
        return None
    scores = {r.variant.label: {q.query_id: q.scores[metric] for q in r.per_query
                                if metric in q.scores}
              for r in result.results}
    return cross_validate(scores, folds=result.grid.cv_folds, metric=metric)


def summary_line(cv: CrossValidation) -> str:
    """One line for the printed comparison."""
    queries = sum(f.queries for f in cv.folds)
    chosen = ", ".join(dict.fromkeys(f.chosen for f in cv.folds))
    return (f"cross-validation ({len(cv.folds)} folds, {queries} queries, choosing among "
            f"{len(cv.candidates)} variant(s) on the other folds): held-out {cv.metric} "
            f"{cv.mean:.4f}; chosen: {chosen}")


__all__ = ["CrossValidation", "Fold", "assign_folds", "check_folds", "cross_validate",
           "cross_validate_result", "summary_line"]
