"""Paired significance tests between variants scored on the same queries. Pure (numpy, scipy).

Two variants of a grid answer the same queries, so their difference is judged query by query
(paired), not by comparing two means: a difference of 0.005 nDCG@10 can be real when one
variant wins on many queries by a little, and noise when a few queries swing it.

- ``randomization``: Fisher's randomization (permutation) test, the test Smucker et al. (CIKM
  2007) recommend for IR evaluation. Under the null hypothesis the two systems are exchangeable
  on every query, so each per-query difference is as likely to have either sign; the p-value is
  the share of random sign flips whose mean difference is at least as far from zero as the one
  observed (two-sided), counted as ``(hits + 1) / (permutations + 1)`` so it is never 0. Seeded:
  the same scores give the same p-value.
- ``t-test``: the two-sided paired Student's t-test (``scipy.stats.ttest_rel``).

ranx (a dev dependency) implements the same two tests; ``tests/test_significance.py`` checks
these against it. They live here so that ``evaluate`` does not need ranx (nor numba) at run time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlflow_rag.errors import InvalidInput, UnknownChoice

if TYPE_CHECKING:  # harness_types imports variants, which imports this module
    from mlflow_rag.evaluation.harness_types import EvaluationResult

SIGNIFICANCE_TESTS = ("randomization", "t-test")
DEFAULT_TEST = "randomization"
DEFAULT_ALPHA = 0.05
PERMUTATIONS = 10_000
SEED = 0
_BATCH = 1_000  # sign flips drawn at once (a 1,000 x queries matrix)


@dataclass(frozen=True)
class Comparison:
    """One variant against a reference, over the queries both scored."""

    variant: str
    reference: str
    test: str
    difference: float  # mean(variant) - mean(reference)
    p_value: float
    significant: bool  # p_value < alpha
    queries: int


def check_test(test: object) -> str:
    if not isinstance(test, str) or test not in SIGNIFICANCE_TESTS:
        raise UnknownChoice("significance test", test, SIGNIFICANCE_TESTS)
    return test


def check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InvalidInput(f"alpha must be a number between 0 and 1 (e.g. 0.05), got {alpha!r}")
    return float(alpha)


def paired_p_value(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                   test: str = DEFAULT_TEST, permutations: int = PERMUTATIONS,
                   seed: int = SEED) -> float:
    """Two-sided p-value of the paired ``test`` that ``a`` and ``b`` (one score per query, in
    the same query order) come from the same system. Identical scores give 1.0."""
    check_test(test)
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise InvalidInput(f"paired scores must be two equal-length non-empty lists, got "
                           f"{x.shape} and {y.shape}")
    diff = x - y
    if not np.any(diff):  # no query differs: nothing to test (scipy would return NaN)
        return 1.0
    if test == "t-test":
        from scipy.stats import ttest_rel

        p = float(ttest_rel(x, y, alternative="two-sided").pvalue)
        return 0.0 if np.isnan(p) else p  # NaN: every difference equal and non-zero
    return _randomization(diff, permutations=permutations, seed=seed)


def _randomization(diff: np.ndarray, *, permutations: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    observed = abs(diff.mean())
    # A tolerance, so a flip giving the same mean up to rounding counts as "as extreme".
    threshold = observed - 1e-12 * max(1.0, observed)
    hits = 0
    for start in range(0, permutations, _BATCH):
        n = min(_BATCH, permutations - start)
        signs = rng.integers(0, 2, size=(n, diff.size), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ diff) / diff.size >= threshold))
    return (hits + 1) / (permutations + 1)


def compare_to(
    reference: str, scores: Mapping[str, Mapping[str, float]], *, test: str = DEFAULT_TEST,
    alpha: float = DEFAULT_ALPHA,
) -> list[Comparison]:
    """Every variant of ``scores`` (label -> query id -> score) against ``reference``, over
    the queries both scored with a finite value; the reference itself is left out."""
    check_test(test)
    check_alpha(alpha)
    if reference not in scores:
        raise UnknownChoice("reference variant", reference, scores)
    base = scores[reference]
    out = []
    for label, by_query in scores.items():
        if label == reference:
            continue
        common = [q for q in base if q in by_query
                  and np.isfinite(base[q]) and np.isfinite(by_query[q])]
        if not common:
            continue
        a = np.array([by_query[q] for q in common])
        b = np.array([base[q] for q in common])
        p = paired_p_value(a, b, test=test)
        out.append(Comparison(variant=label, reference=reference, test=test,
                              difference=float(a.mean() - b.mean()), p_value=p,
                              significant=p < alpha, queries=len(common)))
    return out


def against_best(result: EvaluationResult, metric: str) -> dict[str, Comparison]:
    """Each variant of an evaluation against the best by ``metric``, with the grid's test and
    alpha, on the per-query values of ``metric`` (label -> comparison; the best has none)."""
    return _against(result, metric, result.best(metric).variant.label)


def against_baseline(result: EvaluationResult, metric: str) -> dict[str, Comparison]:
    """Each variant against the grid's ``baseline`` variant (empty when it names none)."""
    if result.grid.baseline is None:
        return {}
    return _against(result, metric, result.grid.baseline)


def _against(result: EvaluationResult, metric: str, reference: str) -> dict[str, Comparison]:
    scores = {r.variant.label: {q.query_id: q.scores[metric] for q in r.per_query
                                if metric in q.scores}
              for r in result.results}
    grid = result.grid
    return {c.variant: c for c in compare_to(reference, scores, test=grid.significance_test,
                                             alpha=grid.alpha)}


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_TEST",
    "SIGNIFICANCE_TESTS",
    "Comparison",
    "against_baseline",
    "against_best",
    "check_alpha",
    "check_test",
    "compare_to",
    "paired_p_value",
]
