"""The served response: hits as the response table (a contract), without MLflow.

Built column by column from numpy arrays: building the frame row by row from tuples and then
casting its number columns cost ~1.3 ms for ten hits (pandas infers and converts every
column of a list of tuples), more than the top-k search at 100K chunks; columns cost ~0.2 ms.
The frame is the same (the same dtypes: pandas infers its string dtype from the object
arrays) and so is its JSON, byte for byte (tests/test_serving_response.py).

:func:`records_json` is that JSON as ``mlflow models serve`` writes it, written faster.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mlflow_rag.types import Hit

# The response table (a contract): one row per hit.
OUTPUT_COLUMNS = (
    "query_index", "rank", "score", "chunk_id", "document_id", "chunk_type", "text",
    "source_path", "metadata",
)
# The shape of the response (the ``output`` param): "rows", the HTTP contract, one row per hit
# (OUTPUT_COLUMNS); "nested", one row per query with its ranked hits in a list, so that
# ``mlflow.pyfunc.spark_udf`` gets the one output row per input row a UDF must return.
OUTPUTS = ("rows", "nested")
NESTED_COLUMN = "hits"
# The fields of each hit of a nested response, in order.
HIT_FIELDS = OUTPUT_COLUMNS[1:]
# A missing string cell: what pandas' string dtype made of None (JSON ``NaN``), kept so.
_MISSING = float("nan")
_TEXT_COLUMNS: tuple[tuple[str, Callable[[Hit], Any]], ...] = (
    ("chunk_id", lambda hit: hit.chunk_id),
    ("document_id", lambda hit: hit.document_id),
    ("chunk_type", lambda hit: hit.chunk_type),
    ("text", lambda hit: hit.text),
    ("source_path", lambda hit: hit.source_path),
)


def hit_metadata(hit: Hit) -> str:
    """The ``metadata`` column: document and chunk metadata as one JSON object."""
    return json.dumps(
        {
            "document": dict(hit.document_metadata),
            "chunk": dict(hit.chunk_metadata),
            "chunk_index": hit.chunk_index,
        },
        ensure_ascii=False, sort_keys=True, default=str,
    )


def _objects(values: list[Any]) -> np.ndarray:
    """An object array of ``values`` (None as NaN, as the string dtype stores it)."""
    array = np.empty(len(values), dtype=object)
    array[:] = [_MISSING if value is None else value for value in values]
    return array


def hits_frame(hits_per_query: Sequence[Sequence[Hit]]) -> pd.DataFrame:
    """The response table: one row per hit, columns exactly :data:`OUTPUT_COLUMNS`."""
    rows = [(i, hit) for i, hits in enumerate(hits_per_query) for hit in hits]
    if not rows:  # as a frame built from no rows: object columns but the three numbers
        empty = pd.DataFrame({name: np.empty(0, dtype=object) for name in OUTPUT_COLUMNS})
        return empty.astype({"query_index": "int64", "rank": "int64", "score": "float64"})
    count = len(rows)
    data: dict[str, np.ndarray] = {
        "query_index": np.fromiter((i for i, _ in rows), dtype=np.int64, count=count),
        "rank": np.fromiter((hit.rank for _, hit in rows), dtype=np.int64, count=count),
        "score": np.fromiter((float(hit.score) for _, hit in rows), dtype=np.float64,
                             count=count),
    }
    for name, value in _TEXT_COLUMNS:
        data[name] = _objects([value(hit) for _, hit in rows])
    data["metadata"] = _objects([hit_metadata(hit) for _, hit in rows])
    return pd.DataFrame(data, columns=list(OUTPUT_COLUMNS))


def nested_frame(hits_per_query: Sequence[Sequence[Hit]]) -> pd.DataFrame:
    """The ``output: nested`` response: one row per query, its hits (dicts of
    :data:`HIT_FIELDS`, in rank order) in the column :data:`NESTED_COLUMN`."""
    hits = [[dict(zip(HIT_FIELDS, (hit.rank, float(hit.score), hit.chunk_id, hit.document_id,
                                   hit.chunk_type, hit.text, hit.source_path,
                                   hit_metadata(hit)), strict=True))
             for hit in query_hits]
            for query_hits in hits_per_query]
    return pd.DataFrame({NESTED_COLUMN: hits})


def response_frame(hits_per_query: Sequence[Sequence[Hit]], *, output: str) -> pd.DataFrame:
    """The response in the shape ``output`` (one of :data:`OUTPUTS`) asks for."""
    return nested_frame(hits_per_query) if output == "nested" else hits_frame(hits_per_query)


# The column types whose values as objects are the ones ``DataFrame.to_dict("records")``
# gives (Python scalars; NaN for a missing string): bool, integer, float, object, string.
_LISTED_KINDS = frozenset("biufO")


class _NotPlainJson(TypeError):
    """A value the standard encoder cannot write as it is (a NumPy scalar in an object cell)."""


def _refuse(value: Any) -> Any:
    raise _NotPlainJson(type(value).__name__)


def records_json(frame: pd.DataFrame) -> str | None:
    """The scoring server's response body for ``frame``, the same text, or None when the frame
    holds a value this does not encode exactly as the server would.

    ``mlflow models serve`` answers ``json.dump({"predictions": frame.to_dict("records")},
    cls=NumpyEncoder)``: pandas builds the records cell by cell through ``itertuples`` and the
    encoder is the pure-Python one (``json.dump`` streams). For the ten-hit response that was
    1.6-1.8 ms of each request on a machine where the search took ~12. Here the rows are zipped
    from the frame as one object array and encoded in one piece by the C encoder: the same
    separators, escapes, float reprs and ``NaN``; the keys in column order. A value the
    standard encoder has no rule for (anything MLflow's ``NumpyEncoder`` would convert) makes
    this return None, so that the caller writes the response MLflow's way.
    """
    if not frame.columns.is_unique:  # to_dict keeps the last of equal names, with a warning
        return None
    if not all(dtype.kind in _LISTED_KINDS or isinstance(dtype, pd.StringDtype)
               for dtype in frame.dtypes.tolist()):
        return None
    columns = frame.columns.tolist()
    # One object array for the whole frame, not a Series per column (~40 us each in pandas)
    records = [dict(zip(columns, row, strict=True))
               for row in frame.to_numpy(dtype=object).tolist()] if columns else \
        [{} for _ in range(len(frame))]  # no columns: to_dict gives one empty record per row
    try:
        return json.dumps({"predictions": records}, default=_refuse)
    except _NotPlainJson:
        return None
