"""benchmarks/postgres.py runs end to end on a tiny store (the figures themselves are in
benchmarks/RESULTS.md): every section measured, every writer's rows landed."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.postgres import parse_args, report, run
from tests.pg_cluster import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_postgres_benchmark_smoke(pg_cluster: PgCluster, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_RAG_CACHE_DIR", str(tmp_path / "cache"))
    args = parse_args(["--n", "300", "--dim", "16", "--writers", "1,2", "--queries", "3",
                       "--reps", "1", "--log-clients", "2", "--log-queries", "5",
                       "--visibility", "2"])
    figures = run(args, pg_cluster, tmp_path)  # raises if a writer's rows are missing
    report(figures, args)
    assert set(figures["ingest"]) == {"sqlite_1", "postgres_1", "postgres_2"}
    assert set(figures["search"]) == {"dense", "filtered_1pct", "filtered_10pct", "bm25", "hybrid"}
    assert figures["query_log"]["postgres_per_s"] > 0
    assert figures["visibility"]["postgres"]["max_ms"] < 60_000
    assert "pg_ingest_w2_ratio=" in capsys.readouterr().out.splitlines()[-1]


def test_bad_writer_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--writers", "0,2"])
    assert "--writers" in capsys.readouterr().err
