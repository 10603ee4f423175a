"""The response table is built column by column (fast); its frame and its HTTP bytes are what
the row-by-row build gave, which is the contract clients parse."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server import predictions_to_json

from mlflow_rag.serving import hits_frame as exported_hits_frame
from mlflow_rag.serving_response import (
    OUTPUT_COLUMNS,
    hit_metadata,
    hits_frame,
    records_json,
    response_frame,
)
from mlflow_rag.types import Hit


def _row_by_row(hits_per_query: Sequence[Sequence[Hit]]) -> pd.DataFrame:
    """The response as it was built before (the reference: rows of tuples, then casts)."""
    rows = [(i, hit.rank, float(hit.score), hit.chunk_id, hit.document_id, hit.chunk_type,
             hit.text, hit.source_path, hit_metadata(hit))
            for i, hits in enumerate(hits_per_query) for hit in hits]
    frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    return frame.astype({"query_index": "int64", "rank": "int64", "score": "float64"})


def _hit(rank: int, *, chunk_type: str | None = "text", text: str = "plain") -> Hit:
    return Hit(rank=rank, score=np.float32(0.5) - np.float32(rank) / 7, chunk_id=f"d{rank}#0",
               document_id=f"d{rank}", chunk_type=chunk_type, chunk_index=rank, text=text,
               source_path=f"/data/ä{rank}.md",
               document_metadata={"title": "Grüße", "tags": ["a", "b"], "n": 3},
               chunk_metadata={"page": rank})


def _json(frame: pd.DataFrame) -> str:
    out = io.StringIO()
    predictions_to_json(frame, out)  # what `mlflow models serve` answers
    return out.getvalue()


CASES = {
    "one query": [[_hit(1), _hit(2), _hit(3)]],
    "several queries, one without hits": [[_hit(1)], [], [_hit(1), _hit(2)]],
    "no chunk type, unicode, quotes, newlines": [[
        _hit(1, chunk_type=None, text='snow ☃ "quoted"\nnext line \\ back'),
        _hit(2, text="e\u0301 \U0001f600 \x00 nul"),
    ]],
    "no hits at all": [[], []],
    "no queries": [],
}


@pytest.mark.parametrize("hits", list(CASES.values()), ids=list(CASES))
def test_the_response_frame_and_its_json_bytes_are_the_row_by_row_ones(
    hits: list[list[Hit]],
) -> None:
    expected, got = _row_by_row(hits), hits_frame(hits)
    assert list(got.columns) == list(OUTPUT_COLUMNS)
    assert got.dtypes.to_dict() == expected.dtypes.to_dict()
    pd.testing.assert_frame_equal(got, expected)
    assert _json(got) == _json(expected)
    assert exported_hits_frame is hits_frame  # serving's name is this one


def test_a_missing_chunk_type_is_what_it_always_was_on_the_wire() -> None:
    body = _json(hits_frame([[_hit(1, chunk_type=None)]]))
    assert '"chunk_type": NaN' in body  # pandas' missing string, as before: clients parse it
    assert json.loads(body)["predictions"][0]["rank"] == 1


@pytest.mark.parametrize("hits", list(CASES.values()), ids=list(CASES))
@pytest.mark.parametrize("output", ["rows", "nested"])
def test_the_fast_response_text_is_the_scoring_servers_own(hits: list[list[Hit]],
                                                           output: str) -> None:
    frame = response_frame(hits, output=output)
    assert records_json(frame) == _json(frame)


OTHER_FRAMES = {
    "numbers, booleans, missing strings": pd.DataFrame(
        {"i": [1, 2], "u": np.array([1, 2], dtype=np.uint8), "f": [0.1, float("nan")],
         "f32": np.array([0.1, np.inf], dtype=np.float32), "b": [True, False],
         "s": pd.array(["x", None], dtype="str")}),
    "no columns": pd.DataFrame(index=range(3)),
    "no rows": pd.DataFrame({"a": np.empty(0, dtype=np.int64)}),
    "nested values": pd.DataFrame({"o": [[{"a": None, "b": [1.5]}], []]}),
}
# Values MLflow's NumpyEncoder converts (or pandas boxes): written MLflow's way instead.
NOT_PLAIN = {
    "a NumPy scalar in an object cell": pd.DataFrame({"o": [np.int64(3), "x"]}),
    "a nullable integer with NA": pd.DataFrame({"a": pd.array([1, None], dtype="Int64")}),
    "timestamps": pd.DataFrame({"t": pd.to_datetime(["2020-01-01"])}),
    "repeated column names": pd.DataFrame([[1, 2]], columns=["a", "a"]),
}


@pytest.mark.parametrize("frame", list(OTHER_FRAMES.values()), ids=list(OTHER_FRAMES))
def test_the_fast_text_matches_for_any_plain_frame(frame: pd.DataFrame) -> None:
    assert records_json(frame) == _json(frame)


@pytest.mark.parametrize("frame", list(NOT_PLAIN.values()), ids=list(NOT_PLAIN))
def test_a_frame_the_fast_text_cannot_match_is_left_to_mlflow(frame: pd.DataFrame) -> None:
    assert records_json(frame) is None
