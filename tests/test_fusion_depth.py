"""The grid's ``fusion_depth`` axis: how many of each list's top chunks a hybrid variant
normalises and fuses (hybrid search's ``candidates``), its one-line errors, and a grid with
it run through the CLI on a store that already holds the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.harness_feedback import ranked_pairs
from mlflow_rag.evaluation.harness_types import Candidates
from mlflow_rag.evaluation.variants import parse_grid
from mlflow_rag.search import fuse
from tests.test_harness import write_beir


def _hybrid(**axes: object) -> object:
    grid = parse_grid({"grid": {"embedder": "tfidf", "mode": "hybrid", "k": 10, **axes}})
    return grid.variants[0]


def test_fusion_depth_applies_to_hybrid_only_and_names_its_variants() -> None:
    grid = parse_grid({"grid": {"embedder": "tfidf", "mode": ["bm25", "dense", "hybrid"],
                                "k": 10, "fusion_depth": [None, 10]}})
    assert [v.label for v in grid.variants] == ["bm25", "dense-tfidf", "hybrid-tfidf/c-all",
                                                "hybrid-tfidf/c10"]
    assert [v.fusion_depth for v in grid.variants] == [None, None, None, 10]
    assert grid.variants[3].params()["fusion_depth"] == "10"
    assert grid.variants[2].params()["fusion_depth"] == ""  # all retrieved


def test_fusion_depth_errors_are_one_line_naming_what_is_allowed() -> None:
    with pytest.raises(InvalidInput, match=r"^fusion_depth \(top chunks of each list fused; "
                                           r"omit it for all\) must be a positive integer, got 0$"):
        _hybrid(fusion_depth=0)
    with pytest.raises(InvalidInput, match=r"must be a positive integer, got 'deep'"):
        _hybrid(fusion_depth="deep")
    # k 10 x candidate_factor 3: 30 chunks of each list are all there is to fuse
    with pytest.raises(InvalidInput, match=r"^fusion_depth 31 is deeper than the 30 chunks "
                                           r"variant hybrid-tfidf retrieves .* give at most 30, "
                                           r"or leave fusion_depth out to fuse them all$"):
        _hybrid(fusion_depth=31)
    assert _hybrid(fusion_depth=30).fusion_depth == 30


def test_ranked_pairs_fuse_only_the_top_of_each_list() -> None:
    dense = Candidates(pairs=((("a", 0.9), ("b", 0.8), ("c", 0.1), ("d", 0.0)),),
                       latency_ms=(1.0,))
    lexical = Candidates(pairs=((("b", 9.0), ("a", 1.0), ("d", 0.5), ("c", 0.2)),),
                         latency_ms=(1.0,))
    every = ranked_pairs(_hybrid(), lexical, dense, 0, 4)
    top2 = ranked_pairs(_hybrid(fusion_depth=2), lexical, dense, 0, 4)
    assert every == tuple(fuse([dense.pairs[0], lexical.pairs[0]], method="convex-zscore"))
    # only a and b are fused: c and d, below the depth in both lists, are not ranked at all,
    # and a and b are z-scored against each other alone
    assert top2 == tuple(fuse([dense.pairs[0][:2], lexical.pairs[0][:2]],
                              method="convex-zscore"))
    assert {c for c, _ in top2} == {"a", "b"} and len(every) == 4
    assert dict(top2)["a"] != dict(every)["a"]


def test_cli_evaluate_compares_fusion_depths_on_a_store_with_data(tmp_path: Path) -> None:
    beir = write_beir(tmp_path / "tiny")
    work = tmp_path / "work"
    grid = tmp_path / "depths.yaml"
    grid.write_text("ks: [1, 3, 5]\nmetric: ndcg_at_5\nbaseline: hybrid-tfidf/c-all\n"
                    "grid:\n  embedder: tfidf\n  chunk_size: 64\n  mode: hybrid\n  k: 5\n"
                    "  fusion_depth: [null, 3]\n", encoding="utf-8")
    args = ["evaluate", "--dataset", str(beir), "--variants", str(grid), "--no-track",
            "--work-dir", str(work)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "hybrid-tfidf/c-all" in first.output and "hybrid-tfidf/c3" in first.output
    stores = sorted(p.name for p in work.rglob("manifest.json"))
    assert stores  # the store the first run wrote, with the corpus in it
    again = CliRunner().invoke(main, args)  # the same store, found holding the corpus
    assert again.exit_code == 0, again.output
    assert again.output.count("hybrid-tfidf/c3") == first.output.count("hybrid-tfidf/c3")
    # a bad depth: one line naming the file, the value and the choices; the store is intact
    grid.write_text(grid.read_text(encoding="utf-8").replace("[null, 3]", "[null, 0]"),
                    encoding="utf-8")
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code == 1
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "fusion_depth" in lines[0] and "got 0" in lines[0]
    assert str(grid) in lines[0]
    assert sorted(p.name for p in work.rglob("manifest.json")) == stores
