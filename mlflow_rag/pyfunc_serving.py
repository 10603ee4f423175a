"""The plain retrieval request answered inside MLflow's scoring server without its generic
parsing and JSON encoding: the same model call, the same response text.

``mlflow models serve`` reads every JSON body through ``_parse_json_data`` (the body decoded
twice, a frame built and cast to the signature) and writes every answer with
``predictions_to_json`` (``DataFrame.to_dict`` then the pure-Python JSON encoder). For the
request nearly every client sends (one string column ``query`` and params, which the model's
guard has already decoded and checked) that cost 1.6-2.4 ms of each request over ``predict``
where the search took ~12; answered here, 0.8-1.0 ms (benchmarks/RESULTS.md, issue 19,
helper serve21). The guard in ``pyfunc_model.py`` hands
such requests here; any other body, and any answer :func:`records_json` cannot write exactly
as MLflow would, still goes MLflow's way.
"""

from __future__ import annotations

import io
import traceback
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from mlflow_rag.serving_body import QUERY_COLUMN
from mlflow_rag.serving_response import records_json


def plain_json(content_type: Any) -> bool:
    """Whether MLflow's scoring server reads a body of ``content_type`` as JSON, with no
    parameter that it answers with 415 (its own reading: ``charset`` alone, UTF-8)."""
    parts = [part.strip() for part in str(content_type or "").split(";")]
    return parts[0] == "application/json" and all(
        key == "charset" and value.lower() == "utf-8"
        for key, _, value in (part.partition("=") for part in parts[1:]))


def answer_plain_table(server: Any, model: Any, queries: list[str],
                       params: dict[str, Any] | None) -> Any:
    """What ``server.invocations`` (MLflow's scoring server module) answers for a table of
    ``queries`` and ``params``: ``model.predict`` called as it calls it, its errors raised as
    it raises them, and its ``InvocationsResponse``."""
    frame = pd.DataFrame({QUERY_COLUMN: queries})
    try:
        predictions = model.predict(frame, params=params)
    except MlflowException:
        raise  # MLflow prefixes the request table, which the guard strips again: not added
    except Exception:
        raise MlflowException(
            message=("Encountered an unexpected error while evaluating the model. Verify that "
                     "the serialized input Dataframe is compatible with the model for inference."),
            error_code=BAD_REQUEST, stack_trace=traceback.format_exc(),
        ) from None
    text = records_json(predictions) if isinstance(predictions, pd.DataFrame) else None
    if text is None:
        buffer = io.StringIO()
        server.predictions_to_json(predictions, buffer)
        text = buffer.getvalue()
    return server.InvocationsResponse(response=text, status=200, mimetype="application/json")
