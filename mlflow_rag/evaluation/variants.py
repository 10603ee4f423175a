"""Variant grids: a YAML (or JSON) file -> the list of retrieval variants to evaluate. Pure.

A grid file names the axes of a comparison; every combination is one variant (one MLflow
child run)::

    name: scifact
    split: train                 # default qrels split (the CLI's --split wins)
    metric: ndcg_at_10           # picks the best variant (the CLI's --metric wins)
    ks: [1, 3, 5, 10, 100]       # metric cutoffs
    candidate_factor: 3          # chunks retrieved per document needed (before roll-up)
    significance_test: randomization  # paired test of each variant against the best: or t-test
    alpha: 0.05                  # a difference with p < alpha is called significant
    baseline: hybrid-minilm      # a variant's name: every variant is also tested against it
    cv_folds: 5                  # choose among the variants on k-1 folds, score the k-th
    grid:
      chunker: recursive         # a value or a list of values, on every axis
      chunk_size: 256
      chunk_overlap: 32          # default: chunk_size // 8
      embedder: [minilm, tfidf]
      index_type: flat
      mode: [bm25, dense, hybrid]
      k: 100                     # documents retrieved per query
      fusion: convex-zscore      # hybrid only: rrf, convex-minmax or convex-zscore
      fusion_weight: 0.5         # hybrid only: the dense list's weight (BM25's is 1 - it)
      fusion_depth: 150          # hybrid only: top chunks of each list fused (default: all)
      feedback: none             # pseudo-relevance feedback: none, rm3, rocchio, rm3-rocchio
      feedback_docs: 3           # feedback only: top chunks taken as relevant
      feedback_terms: 20         # rm3 only: expansion terms

``grid`` may also be a list of such mappings: the variants are the union of their products
(duplicates dropped), so a comparison need not be a full cross product.

Axes that do not apply to a variant are dropped before duplicates are removed: ``bm25`` has
no embedder, index type or fusion; ``dense`` has no fusion; the ``fields`` chunker has no
size or overlap; ``rm3`` feedback is BM25's and ``rocchio`` the dense list's (``bm25`` with
``rm3-rocchio`` is ``bm25`` with ``rm3``), feedback sizes apply only to feedback, and
``fusion_depth`` (None: every chunk retrieved) only to hybrid. So
``embedder: [minilm, tfidf]`` with ``mode: [bm25, dense, hybrid]`` gives
five variants, not six.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow_rag.chunk.registry import CHUNKERS, DEFAULT_CHUNK_SIZE, default_overlap
from mlflow_rag.embed.registry import DEFAULT_EMBEDDER, embedder_kind
from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.evaluation.cross_validation import check_folds
from mlflow_rag.evaluation.metrics import DEFAULT_KS, METRICS
from mlflow_rag.evaluation.significance import (
    DEFAULT_ALPHA,
    DEFAULT_TEST,
    check_alpha,
    check_test,
)
from mlflow_rag.index.choose import INDEX_TYPES
from mlflow_rag.relevance_feedback import (
    DEFAULT_FEEDBACK,
    DEFAULT_FEEDBACK_DOCS,
    DEFAULT_FEEDBACK_TERMS,
    FEEDBACKS,
    uses_rm3,
    uses_rocchio,
)
from mlflow_rag.search import DEFAULT_FUSION, FUSIONS, MODES
from mlflow_rag.store.checks import MAX_K

DEFAULT_METRIC = "ndcg_at_10"
DEFAULT_CANDIDATE_FACTOR = 3
DEFAULT_K = 100
DEFAULT_FUSION_WEIGHT = 0.5  # equal weights: hybrid search's own

# The axes of a grid, with the value used when the grid leaves one out.
AXIS_DEFAULTS: dict[str, Any] = {
    "chunker": "recursive",
    "chunk_size": DEFAULT_CHUNK_SIZE,
    "chunk_overlap": None,  # chunk_size // 8
    "embedder": DEFAULT_EMBEDDER,
    "index_type": "auto",
    "mode": list(MODES),
    "k": DEFAULT_K,
    "fusion": DEFAULT_FUSION,
    "fusion_weight": DEFAULT_FUSION_WEIGHT,
    "fusion_depth": None,  # every chunk retrieved (k * candidate_factor)
    "feedback": DEFAULT_FEEDBACK,
    "feedback_docs": DEFAULT_FEEDBACK_DOCS,
    "feedback_terms": DEFAULT_FEEDBACK_TERMS,
}
AXES = tuple(AXIS_DEFAULTS)
TOP_LEVEL_KEYS = ("name", "description", "grid", "ks", "metric", "split", "candidate_factor",
                  "significance_test", "alpha", "cv_folds", "baseline")


@dataclass(frozen=True)
class Chunking:
    """How a corpus is chunked; variants with equal chunking share one store."""

    chunker: str
    chunk_size: int | None  # None for ``fields`` (one chunk per field)
    chunk_overlap: int | None

    @property
    def slug(self) -> str:
        """``recursive-256-32``: a directory name and a label part."""
        if self.chunk_size is None:
            return self.chunker
        return f"{self.chunker}-{self.chunk_size}-{self.chunk_overlap}"


@dataclass(frozen=True)
class Variant:
    """One retrieval configuration to evaluate.

    ``embedder``, ``index_type`` are None for ``bm25``; ``fusion`` is None unless ``hybrid``.
    ``label`` is a short readable name (the axes that vary in its grid); it is not part of the
    variant's identity.
    """

    chunker: str
    chunk_size: int | None
    chunk_overlap: int | None
    embedder: str | None
    index_type: str | None
    mode: str
    k: int
    fusion: str | None = None
    fusion_weight: float | None = None  # hybrid only: the dense list's weight
    # hybrid only: the top chunks of each list that are normalised and fused (None: all the
    # k * candidate_factor retrieved); hybrid search's own is its ``candidates``
    fusion_depth: int | None = None
    feedback: str = DEFAULT_FEEDBACK
    feedback_docs: int | None = None  # None without feedback
    feedback_terms: int | None = None  # None without rm3
    label: str = field(default="", compare=False)

    @property
    def chunking(self) -> Chunking:
        return Chunking(self.chunker, self.chunk_size, self.chunk_overlap)

    @property
    def key(self) -> str:
        """Every axis, ``name=value`` joined by commas: a stable identity for tags."""
        return ",".join(f"{name}={'' if value is None else value}" for name, value in self.axes().items())

    def axes(self) -> dict[str, Any]:
        return {axis: getattr(self, axis) for axis in AXES}

    def params(self) -> dict[str, str]:
        """MLflow params (strings; an axis that does not apply is an empty string)."""
        return {axis: "" if value is None else str(value) for axis, value in self.axes().items()}


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: its variants (labelled, in file order) and evaluation settings."""

    name: str
    variants: tuple[Variant, ...]
    ks: tuple[int, ...] = DEFAULT_KS
    metric: str = DEFAULT_METRIC
    split: str | None = None
    candidate_factor: int = DEFAULT_CANDIDATE_FACTOR
    description: str = ""
    source: str | None = None  # the file it came from
    significance_test: str = DEFAULT_TEST  # one of significance.SIGNIFICANCE_TESTS
    alpha: float = DEFAULT_ALPHA
    cv_folds: int = 0  # 0: no cross-validation
    baseline: str | None = None  # a variant's label: paired tests against it too

    @property
    def chunkings(self) -> tuple[Chunking, ...]:
        return tuple(dict.fromkeys(v.chunking for v in self.variants))

    def embedders_for(self, chunking: Chunking) -> tuple[str, ...]:
        """The embedders variants with this chunking need, sorted (a stable ingest order)."""
        return tuple(sorted({v.embedder for v in self.variants
                             if v.chunking == chunking and v.embedder is not None}))

    def ks_for(self, variant: Variant) -> tuple[int, ...]:
        """Cutoffs a variant can be scored at: those up to its k, and k itself."""
        return tuple(sorted({k for k in self.ks if k <= variant.k} | {variant.k}))


# --------------------------------------------------------------------------- parsing


def load_grid(path: str | Path) -> Grid:
    """Parse a grid file (``.yaml``/``.yml``/``.json``). Errors name the file and the bad key."""
    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"variants file {str(file)!r} does not exist")
    text = file.read_text(encoding="utf-8")
    import yaml

    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:  # the message names the line and column
        raise InvalidInput(f"cannot parse variants file {file}: {exc}") from None
    try:
        return parse_grid(data, name=file.stem, source=str(file))
    except (InvalidInput, UnknownChoice) as exc:
        exc.args = (f"{file}: {exc}",)  # same error type, with the file named
        raise


def parse_grid(data: Any, *, name: str = "grid", source: str | None = None) -> Grid:
    """A grid from parsed YAML/JSON data (a mapping with a ``grid`` key)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidInput(f"a variants file holds a mapping with a 'grid' key, got {type(data).__name__}")
    _check_keys(data, TOP_LEVEL_KEYS, "variants file key")
    ks = _parse_ks(data.get("ks", DEFAULT_KS))
    candidate_factor = _positive_int(data.get("candidate_factor", DEFAULT_CANDIDATE_FACTOR),
                                     "candidate_factor")
    grids = data.get("grid", {})
    if isinstance(grids, Mapping):
        grids = [grids]
    if not isinstance(grids, list) or not grids:
        raise InvalidInput("'grid' must be a mapping of axes or a non-empty list of such mappings")
    variants: list[Variant] = []
    for i, grid in enumerate(grids):
        where = "grid" if len(grids) == 1 else f"grid[{i}]"
        if not isinstance(grid, Mapping):
            raise InvalidInput(f"{where} must be a mapping of axes, got {type(grid).__name__}")
        variants.extend(expand_grid(grid, where=where))
    variants = label_variants(list(dict.fromkeys(variants)))
    _check_fusion_depths(variants, candidate_factor)
    metric = data.get("metric", DEFAULT_METRIC)
    check_metric(metric, ks=ks, variants=variants)
    split = data.get("split")
    if split is not None and not isinstance(split, str):
        raise InvalidInput(f"split must be a string such as 'test', got {split!r}")
    description = data.get("description", "")
    return Grid(
        name=str(data.get("name") or name), variants=tuple(variants), ks=ks, metric=metric,
        split=split, candidate_factor=candidate_factor,
        description=str(description or ""), source=source,
        significance_test=check_test(data.get("significance_test", DEFAULT_TEST)),
        alpha=check_alpha(data.get("alpha", DEFAULT_ALPHA)),
        cv_folds=check_folds(data.get("cv_folds", 0)),
        baseline=_check_baseline(data.get("baseline"), variants),
    )


def expand_grid(grid: Mapping[str, Any], *, where: str = "grid") -> list[Variant]:
    """Every combination of the axes in ``grid`` (missing axes take :data:`AXIS_DEFAULTS`),
    with axes that do not apply dropped, duplicates removed, in product order."""
    _check_keys(grid, AXES, f"{where} axis")
    values = {axis: _axis_values(grid.get(axis, AXIS_DEFAULTS[axis]), axis, where)
              for axis in AXES}
    _check_axes(values)
    out = [_variant(dict(zip(AXES, combo, strict=True)), where)
           for combo in itertools.product(*(values[axis] for axis in AXES))]
    return list(dict.fromkeys(out))


def _check_axes(values: Mapping[str, Sequence[Any]]) -> None:
    """Every value of every axis is one its vocabulary holds (one-line errors)."""
    for axis, choices, kind in (("chunker", CHUNKERS, "chunker"),
                                ("index_type", INDEX_TYPES, "index type"),
                                ("mode", MODES, "search mode"), ("fusion", FUSIONS, "fusion"),
                                ("feedback", FEEDBACKS, "feedback")):
        for value in values[axis]:
            _check_choice(value, choices, kind)
    for embedder in values["embedder"]:
        check_embedder(embedder)
    for axis in ("k", "chunk_size", "feedback_docs", "feedback_terms"):
        for value in values[axis]:
            _positive_int(value, axis)
    for depth in values["fusion_depth"]:
        if depth is not None:
            _positive_int(depth, "fusion_depth (top chunks of each list fused; omit it for all)")
    for overlap in values["chunk_overlap"]:
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int)
                                    or overlap < 0):
            raise InvalidInput(f"chunk_overlap must be a non-negative integer, got {overlap!r}")
    for weight in values["fusion_weight"]:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1:
            raise InvalidInput(f"fusion_weight (the dense list's share) must be a number "
                               f"between 0 and 1, e.g. 0.5, got {weight!r}")


def _applicable_feedback(feedback: str, mode: str) -> str:
    """The part of ``feedback`` that ``mode`` has a list for (rm3: BM25, rocchio: dense)."""
    rm3 = uses_rm3(feedback) and mode != "dense"
    rocchio = uses_rocchio(feedback) and mode != "bm25"
    return {(True, True): "rm3-rocchio", (True, False): "rm3",
            (False, True): "rocchio"}.get((rm3, rocchio), "none")


def _variant(axes: Mapping[str, Any], where: str) -> Variant:
    """One combination of axis values as a variant, the axes that do not apply dropped."""
    chunker, size, overlap, mode = (axes["chunker"], axes["chunk_size"], axes["chunk_overlap"],
                                    axes["mode"])
    if chunker == "fields":  # one chunk per field: sizes do not apply
        size = overlap = None
    else:
        overlap = default_overlap(size) if overlap is None else overlap
        if overlap >= size:
            raise InvalidInput(
                f"chunk_overlap must be smaller than chunk_size: chunk_overlap={overlap}, "
                f"chunk_size={size} (in {where})"
            )
    lexical, hybrid = mode == "bm25", mode == "hybrid"
    feedback = _applicable_feedback(axes["feedback"], mode)
    return Variant(
        chunker=chunker, chunk_size=size, chunk_overlap=overlap,
        embedder=None if lexical else axes["embedder"],
        index_type=None if lexical else axes["index_type"],
        mode=mode, k=axes["k"], fusion=axes["fusion"] if hybrid else None,
        fusion_weight=float(axes["fusion_weight"]) if hybrid else None,
        fusion_depth=axes["fusion_depth"] if hybrid else None, feedback=feedback,
        feedback_docs=axes["feedback_docs"] if feedback != "none" else None,
        feedback_terms=axes["feedback_terms"] if uses_rm3(feedback) else None,
    )


def label_variants(variants: Sequence[Variant]) -> list[Variant]:
    """Give each variant a short label: mode and embedder, plus the axes that vary.

    ``bm25``, ``dense-minilm``, ``hybrid-minilm``; when chunking, index type, k or fusion
    differ between variants, those parts follow after ``/`` (``dense-minilm/recursive-128-16``).
    Labels are unique (a numeric suffix settles any remaining clash).
    """
    # An axis varies when variants it applies to disagree (bm25's None index type does not count).
    varying = {
        axis: len({getattr(v, axis) for v in variants} - {None}) > 1
        for axis in ("index_type", "k", "fusion", "fusion_weight", "feedback", "feedback_docs",
                     "feedback_terms")
    }
    # a hybrid variant's None fusion depth is a value of its own: all it retrieved
    varying["fusion_depth"] = len({v.fusion_depth for v in variants if v.mode == "hybrid"}) > 1
    chunking_varies = len({v.chunking for v in variants}) > 1
    labels: list[str] = []
    for v in variants:
        head = v.mode if v.embedder is None else f"{v.mode}-{v.embedder}"
        parts = [head]
        if chunking_varies:
            parts.append(v.chunking.slug)
        if varying["index_type"] and v.index_type is not None:
            parts.append(v.index_type)
        if varying["fusion"] and v.fusion is not None:
            parts.append(v.fusion)
        if varying["fusion_weight"] and v.fusion_weight is not None:
            parts.append(f"w{v.fusion_weight:g}")
        if varying["fusion_depth"] and v.mode == "hybrid":
            parts.append("c-all" if v.fusion_depth is None else f"c{v.fusion_depth}")
        if varying["feedback"]:
            parts.append(v.feedback)
        for axis, prefix in (("feedback_docs", "d"), ("feedback_terms", "t")):
            if varying[axis] and getattr(v, axis) is not None:
                parts.append(f"{prefix}{getattr(v, axis)}")
        if varying["k"]:
            parts.append(f"k{v.k}")
        labels.append("/".join(parts))
    seen: dict[str, int] = {}
    out = []
    for v, label in zip(variants, labels, strict=True):
        seen[label] = seen.get(label, 0) + 1
        out.append(replace(v, label=label if seen[label] == 1 else f"{label}#{seen[label]}"))
    return out


# --------------------------------------------------------------------------- validation


def check_embedder(spec: Any) -> str:
    """An embedder spec ingest takes (the embedder registry decides; nothing is loaded)."""
    embedder_kind(spec)
    return str(spec)


def metric_choices(ks: Iterable[int]) -> list[str]:
    return [f"{m}_at_{k}" for m in METRICS for k in sorted(set(ks))]


def check_metric(metric: Any, *, ks: Sequence[int], variants: Sequence[Variant] = ()) -> str:
    """``metric`` must be one the evaluation computes for every variant (``ndcg_at_10``...)."""
    if not isinstance(metric, str) or metric not in metric_choices(ks):
        raise UnknownChoice("metric", metric, metric_choices(ks))
    cutoff = int(metric.rsplit("_", 1)[1])
    short = [v for v in variants if v.k < cutoff]
    if short:
        raise InvalidInput(
            f"metric {metric} needs k >= {cutoff}, but variant(s) {[v.label or v.key for v in short]} "
            f"retrieve only {short[0].k} documents"
        )
    return metric


def _check_fusion_depths(variants: Sequence[Variant], candidate_factor: int) -> None:
    """A fusion depth deeper than the chunks a variant retrieves would fuse them all while
    naming another number: refused, naming the depth there is."""
    for v in variants:
        retrieved = min(v.k * candidate_factor, MAX_K)
        if v.fusion_depth is not None and v.fusion_depth > retrieved:
            raise InvalidInput(
                f"fusion_depth {v.fusion_depth} is deeper than the {retrieved} chunks variant "
                f"{v.label} retrieves (k x candidate_factor, at most {MAX_K}); give at most "
                f"{retrieved}, or leave fusion_depth out to fuse them all")


def _check_baseline(baseline: Any, variants: Sequence[Variant]) -> str | None:
    """None, or the name (label) of one of the grid's variants."""
    labels = [v.label for v in variants]
    if baseline is not None and baseline not in labels:
        raise UnknownChoice("baseline variant", baseline, labels)
    return baseline if baseline is None else str(baseline)


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], kind: str) -> None:
    for key in data:
        if key not in allowed:
            raise UnknownChoice(kind, key, allowed)


def _check_choice(value: Any, choices: Sequence[str], kind: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise UnknownChoice(kind, value, choices)


def _axis_values(raw: Any, axis: str, where: str) -> list[Any]:
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not values:
        raise InvalidInput(f"{where} axis {axis!r} is an empty list; give at least one value")
    return list(dict.fromkeys(values))


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{what} must be a positive integer, got {value!r}")
    return value


def _parse_ks(raw: Any) -> tuple[int, ...]:
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not values:
        raise InvalidInput("ks is empty; give at least one cutoff, e.g. ks: [10]")
    return tuple(sorted({_positive_int(k, "each of ks") for k in values}))


__all__ = [
    "AXES",
    "AXIS_DEFAULTS",
    "Chunking",
    "Grid",
    "Variant",
    "check_metric",
    "expand_grid",
    "label_variants",
    "load_grid",
    "parse_grid",
]
