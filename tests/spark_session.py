"""A Spark session in ``local[2]`` for the tests (pyspark from the ``spark`` extra, Java 17),
started once per test session and stopped at its end; skipped with a message where pyspark
or java is missing, except where ``MLFLOW_RAG_REQUIRE_SPARK=1`` (.ci/run) makes that a failure."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def spark_unavailable(reason: str) -> None:
    if os.environ.get("MLFLOW_RAG_REQUIRE_SPARK", "") not in ("", "0"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def local_spark(work_dir: Path, *, master: str = "local[2]") -> Iterator[Any]:
    """A ``local[2]`` session whose Python workers run this interpreter; small shuffles, no
    UI, its scratch files under ``work_dir``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        spark_unavailable("pyspark is not installed: pip install -e '.[spark]'")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        spark_unavailable("no java on PATH (Spark needs Java 17: openjdk-17-jre-headless)")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master(master).appName("mlflow-rag-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.local.dir", str(work_dir))
        .config("spark.driver.memory", "1g")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000")  # a request each
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
