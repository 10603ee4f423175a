"""Variant grids: parsing, validation with clear errors, expansion, labels. Pure and fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.evaluation.variants import (
    AXES,
    Chunking,
    Variant,
    expand_grid,
    label_variants,
    load_grid,
    parse_grid,
)

REPO = Path(__file__).resolve().parent.parent


def _variant(**overrides: Any) -> Variant:
    values: dict[str, Any] = {"chunker": "recursive", "chunk_size": 256, "chunk_overlap": 32,
                              "embedder": "minilm", "index_type": "flat", "mode": "dense",
                              "k": 100, "fusion": None}
    values.update(overrides)
    return Variant(**values)


# --------------------------------------------------------------------------- expansion


def test_grid_expands_to_the_cross_product_of_its_axes() -> None:
    variants = expand_grid({"embedder": ["minilm", "tfidf"], "mode": "dense",
                            "chunk_size": [128, 256], "k": [10, 100], "index_type": "flat"})
    assert len(variants) == 2 * 2 * 2
    assert {(v.embedder, v.chunk_size, v.k) for v in variants} == {
        (e, s, k) for e in ("minilm", "tfidf") for s in (128, 256) for k in (10, 100)
    }


def test_bm25_drops_embedder_and_index_so_it_is_not_duplicated_per_embedder() -> None:
    variants = expand_grid({"embedder": ["minilm", "tfidf"], "mode": ["bm25", "dense", "hybrid"],
                            "index_type": ["flat", "hnsw"]})
    lexical = [v for v in variants if v.mode == "bm25"]
    assert len(lexical) == 1
    assert lexical[0].embedder is None and lexical[0].index_type is None
    assert lexical[0].fusion is None
    assert len(variants) == 1 + 2 * 2 * 2  # bm25 + {dense, hybrid} x embedders x index types


def test_fusion_applies_to_hybrid_only() -> None:
    variants = expand_grid({"mode": ["dense", "hybrid"], "fusion": ["rrf", "convex-minmax"]})
    assert [(v.mode, v.fusion) for v in variants] == [
        ("dense", None), ("hybrid", "rrf"), ("hybrid", "convex-minmax")
    ]


def test_missing_overlap_defaults_to_an_eighth_of_the_size() -> None:
    (variant,) = expand_grid({"chunk_size": 128, "mode": "bm25"})
    assert (variant.chunk_size, variant.chunk_overlap) == (128, 16)


def test_fields_chunker_has_no_size() -> None:
    variants = expand_grid({"chunker": "fields", "chunk_size": [128, 256], "mode": "bm25"})
    assert variants == [_variant(chunker="fields", chunk_size=None, chunk_overlap=None,
                                 embedder=None, index_type=None, mode="bm25")]
    assert variants[0].chunking.slug == "fields"


def test_missing_axes_take_the_defaults() -> None:
    variants = expand_grid({})
    assert [v.mode for v in variants] == ["dense", "bm25", "hybrid"]
    assert all(v.chunking == Chunking("recursive", 256, 32) for v in variants)
    assert {v.embedder for v in variants} == {"minilm", None}


def test_a_list_of_grids_gives_the_union_without_duplicates() -> None:
    grid = parse_grid({"grid": [{"mode": "bm25"}, {"mode": ["bm25", "dense"], "embedder": "tfidf"}]})
    assert [v.label for v in grid.variants] == ["bm25", "dense-tfidf"]


def test_variants_sharing_chunking_are_grouped_with_their_embedders() -> None:
    grid = parse_grid({"grid": {"embedder": ["tfidf", "minilm"], "mode": ["bm25", "dense"],
                                "chunk_size": [128, 256]}})
    assert grid.chunkings == (Chunking("recursive", 128, 16), Chunking("recursive", 256, 32))
    assert grid.embedders_for(Chunking("recursive", 128, 16)) == ("minilm", "tfidf")


# --------------------------------------------------------------------------- labels and params


def test_labels_name_mode_and_embedder_and_only_the_axes_that_vary() -> None:
    grid = parse_grid({"grid": {"embedder": ["minilm", "tfidf"], "mode": ["bm25", "dense", "hybrid"]}})
    assert [v.label for v in grid.variants] == [
        "bm25", "dense-minilm", "hybrid-minilm", "dense-tfidf", "hybrid-tfidf"
    ]
    grid = parse_grid({"grid": {"mode": "dense", "embedder": "tfidf", "chunk_size": [64, 128],
                                "k": [10, 20]}, "metric": "ndcg_at_10"})
    assert grid.variants[0].label == "dense-tfidf/recursive-64-8/k10"


def test_labels_stay_unique() -> None:
    variants = label_variants([_variant(), _variant(chunk_overlap=0)])
    assert len({v.label for v in variants}) == 2


def test_params_hold_every_axis_as_strings_with_mode() -> None:
    params = _variant(mode="bm25", embedder=None, index_type=None).params()
    assert set(params) == set(AXES)
    assert params["mode"] == "bm25"
    assert params["embedder"] == "" and params["chunk_size"] == "256" and params["k"] == "100"


def test_label_is_not_part_of_a_variants_identity() -> None:
    assert _variant(label="a") == _variant(label="b")


def test_metric_cutoffs_stop_at_the_variants_k() -> None:
    grid = parse_grid({"ks": [1, 10, 100], "grid": {"mode": "bm25", "k": [10, 50]},
                       "metric": "ndcg_at_10"})
    assert [grid.ks_for(v) for v in grid.variants] == [(1, 10), (1, 10, 50)]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        ({"grid": {"chunkr": "recursive"}}, UnknownChoice, ["chunkr", "chunker", "embedder"]),
        ({"gird": {}}, UnknownChoice, ["gird", "grid", "metric"]),
        ({"grid": {"chunker": "fix"}}, UnknownChoice, ["fix", "fixed", "recursive"]),
        ({"grid": {"embedder": "bert"}}, UnknownChoice, ["bert", "minilm", "tfidf", "openai:<model>"]),
        ({"grid": {"mode": "semantic"}}, UnknownChoice, ["semantic", "bm25", "dense", "hybrid"]),
        ({"grid": {"index_type": "annoy"}}, UnknownChoice, ["annoy", "flat", "hnsw", "ivf"]),
        ({"grid": {"fusion": "max"}}, UnknownChoice, ["max", "rrf", "convex-minmax"]),
        ({"grid": {"k": 0}}, InvalidInput, ["k", "0"]),
        ({"grid": {"k": "ten"}}, InvalidInput, ["k", "ten"]),
        ({"grid": {"chunk_size": 64, "chunk_overlap": 64}}, InvalidInput,
         ["chunk_overlap=64", "chunk_size=64"]),
        ({"grid": {"chunk_overlap": -1}}, InvalidInput, ["chunk_overlap", "-1"]),
        ({"grid": {"mode": []}}, InvalidInput, ["mode", "empty"]),
        ({"grid": []}, InvalidInput, ["grid"]),
        ({"grid": {}, "metric": "ndcg@10"}, UnknownChoice, ["ndcg@10", "ndcg_at_10"]),
        ({"grid": {}, "metric": "ndcg_at_20"}, UnknownChoice, ["ndcg_at_20", "ndcg_at_10"]),
        ({"grid": {"k": 5}}, InvalidInput, ["ndcg_at_10", "k >= 10"]),
        ({"grid": {}, "ks": []}, InvalidInput, ["ks"]),
        (["bm25"], InvalidInput, ["mapping"]),
    ],
)
def test_bad_grids_are_refused_naming_the_bad_value_and_the_choices(
    data: Any, error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as raised:
        parse_grid(data)
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("spec", ["minilm", "minilm:torch", "minilm:onnx", "minilm:onnx-int8",
                                  "tfidf", "openai:text-embedding-3-small"])
def test_a_grid_takes_every_embedder_ingest_takes(spec: str) -> None:
    # The grid asks the embedder registry: a spec ingest and search accept is a grid value too.
    grid = parse_grid({"grid": {"embedder": spec, "mode": "dense"}})
    assert [v.embedder for v in grid.variants] == [spec]


@pytest.mark.parametrize("spec", ["minilm:fp16", "openai:", "bert", "MiniLM", 3])
def test_a_grid_refuses_an_embedder_ingest_would_refuse(spec: Any) -> None:
    with pytest.raises(UnknownChoice) as raised:
        parse_grid({"grid": {"embedder": spec, "mode": "dense"}})
    for word in (repr(spec), "minilm:onnx-int8", "tfidf", "openai:<model>"):
        assert word in str(raised.value)


def test_grid_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text("grid:\n  mode: [bm25, vector]\n", encoding="utf-8")
    with pytest.raises(UnknownChoice, match=r"grid\.yaml.*'vector'"):
        load_grid(path)
    path.write_text("grid: [unclosed\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="cannot parse"):
        load_grid(path)
    with pytest.raises(InvalidInput, match="does not exist"):
        load_grid(tmp_path / "missing.yaml")


def test_json_grid_files_are_read_too(tmp_path: Path) -> None:
    path = tmp_path / "grid.json"
    path.write_text('{"name": "j", "grid": {"mode": "bm25"}}', encoding="utf-8")
    grid = load_grid(path)
    assert grid.name == "j" and [v.mode for v in grid.variants] == ["bm25"]


# --------------------------------------------------------------------------- the shipped grids


@pytest.mark.parametrize("name", ["scifact.yaml", "small.yaml"])
def test_shipped_grid_files_parse(name: str) -> None:
    grid = load_grid(REPO / "evaluations" / name)
    assert grid.variants
    assert {"bm25", "dense", "hybrid"} <= {v.mode for v in grid.variants}


@pytest.mark.parametrize("name", ["scifact-ranking.yaml", "scifact-ranking-2.yaml",
                                  "scifact-ranking-3.yaml", "scifact-ranking-4.yaml"])
def test_ranking_grids_parse_with_their_baseline_and_cross_validation(name: str) -> None:
    grid = load_grid(REPO / "evaluations" / name)
    assert grid.baseline in {v.label for v in grid.variants}
    assert grid.cv_folds == 5 and grid.split == "train"


def test_the_e5_grid_embeds_the_baselines_chunks() -> None:
    """e5-small has no tokenizer of its own: paired with MiniLM on one chunking, its store is
    the baseline's (chunks sized in MiniLM word pieces), so the two models see the same chunks."""
    from mlflow_rag.evaluation.harness_plan import chunk_tokenizer

    grid = load_grid(REPO / "evaluations" / "scifact-ranking-4.yaml")
    (chunking,) = grid.chunkings
    assert set(grid.embedders_for(chunking)) == {"minilm", "e5-small"}
    assert chunk_tokenizer(grid.embedders_for(chunking)) == "minilm"


def test_scifact_grid_compares_bm25_minilm_tfidf_and_hybrid() -> None:
    grid = load_grid(REPO / "evaluations" / "scifact.yaml")
    pairs = {(v.mode, v.embedder) for v in grid.variants}
    assert {("bm25", None), ("dense", "minilm"), ("dense", "tfidf"), ("hybrid", "minilm")} <= pairs
    assert grid.split == "train"
