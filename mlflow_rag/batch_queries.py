"""The query files of ``batch-search``: a table of queries in, a table of hits out. Pure
pandas; the MLflow side (the model, the run, Spark) is in :mod:`mlflow_rag.tracking_batch`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from mlflow_rag.errors import InvalidInput
from mlflow_rag.serving import (
    HIT_FIELDS,
    MAX_QUERIES_PER_REQUEST,
    NESTED_COLUMN,
    QUERY_COLUMN,
    ROW_PARAM_COLUMNS,
)

# The file formats of a query file, by suffix.
QUERY_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
# Input columns carried into the hits table beside each hit (what a user joins on).
ID_COLUMNS = ("id", "query_id")
# The hits table: the query's row in the file, its id when the file has one, the query, then
# each hit's fields (the served model's response columns).
HITS_COLUMNS = ("query_index", *ID_COLUMNS, QUERY_COLUMN, *HIT_FIELDS)


def read_queries(path: Path) -> pd.DataFrame:
    """The queries of a CSV, Parquet or JSONL file: a ``query`` column, optionally ``id`` /
    ``query_id`` and the per-row ``k``, ``mode`` and ``filters`` columns (other columns are
    dropped); a file the model cannot take is refused naming what is wrong."""
    kind = QUERY_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InvalidInput(f"unknown query file type {path.suffix or path.name!r}; "
                           f"choose from {sorted(QUERY_FORMATS)}")
    if not path.is_file():
        raise InvalidInput(f"no query file at {path}")
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype={QUERY_COLUMN: str, "id": str, "query_id": str,
                                             "mode": str, "filters": str})
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_json(path, lines=True, dtype={"id": str, "query_id": str})
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path} as {kind}: {str(exc).splitlines()[0]}") from None
    if QUERY_COLUMN not in frame.columns:
        raise InvalidInput(f"{path} has no {QUERY_COLUMN!r} column (columns: "
                           f"{[str(c) for c in frame.columns][:10]})")
    if frame.empty:
        raise InvalidInput(f"{path} holds no query")
    keep = [c for c in (*ID_COLUMNS, QUERY_COLUMN, *ROW_PARAM_COLUMNS) if c in frame.columns]
    frame = frame[keep].reset_index(drop=True)
    if "k" in frame.columns:
        if frame["k"].isna().any():
            raise InvalidInput(f"{path}: the k column has empty cells; fill them or drop the "
                               "column (the k option applies to every row)")
        frame["k"] = frame["k"].astype("int64")
    return frame


def batches(frame: pd.DataFrame, *, size: int = MAX_QUERIES_PER_REQUEST) -> Iterator[pd.DataFrame]:
    """The queries in requests the model takes (at most ``size`` queries each)."""
    for start in range(0, len(frame), size):
        yield frame.iloc[start:start + size]


def hits_table(queries: pd.DataFrame, nested: Sequence[Sequence[dict]]) -> pd.DataFrame:
    """One row per hit (:data:`HITS_COLUMNS` that apply), from the queries and each one's
    nested hits (the ``output: nested`` response, in the queries' order)."""
    rows = []
    ids = [c for c in ID_COLUMNS if c in queries.columns]
    for index, (record, hits) in enumerate(zip(queries.to_dict("records"), nested, strict=True)):
        carried = {c: record[c] for c in ids}
        for hit in hits:
            rows.append({"query_index": index, **carried, QUERY_COLUMN: record[QUERY_COLUMN],
                         **{f: hit[f] for f in HIT_FIELDS}})
    columns = [c for c in HITS_COLUMNS if c not in ID_COLUMNS or c in ids]
    table = pd.DataFrame(rows, columns=columns)
    return table.astype({"query_index": "int64", "rank": "int64", "score": "float64"})


def nested_hits(frame: pd.DataFrame) -> list[list[dict]]:
    """The hits of a nested response as plain lists of dicts (Spark and pandas give arrays)."""
    return [[dict(hit) for hit in hits] for hits in frame[NESTED_COLUMN]]
