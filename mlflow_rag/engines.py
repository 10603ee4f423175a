"""Where batch work runs (``--engine`` of ``ingest``, ``batch-search`` and ``evaluate``):
``local``, this process; ``spark``, the partitions of the active Spark session
(``spark-submit``'s, or a local one)."""

from __future__ import annotations

from typing import Any

from mlflow_rag.errors import InvalidInput

ENGINES = ("local", "spark")


def spark_session(app: str) -> Any:
    """The active Spark session (the one ``spark-submit`` or the caller configured), else a
    new one named ``app``; a clear error without pyspark."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise InvalidInput("--engine spark needs pyspark: pip install 'mlflow-rag[spark]'") from None
    return SparkSession.getActiveSession() or SparkSession.builder.appName(app).getOrCreate()
