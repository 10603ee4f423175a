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
from mlflow_rag.serving_response import OUTPUT_COLUMNS, hit_metadata, hits_frame
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
