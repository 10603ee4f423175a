"""The served models' HTTP bodies, read without ever echoing them: MLflow's scoring server
decodes the body and checks params against the signature before the model runs, and its
messages quote the request ("Failed to predict data '<the table>'"). The models
(pyfunc_model.py, pyfunc_rag_model.py) route requests through these functions first: the body
is decoded with messages that never hold request text, and every message MLflow still
produces passes :func:`private_message`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow_rag.errors import InvalidInput

QUERY_COLUMN = "query"


class BadRequest(InvalidInput):
    """A request the model cannot answer as sent (its message never contains query text)."""


# Where MLflow's messages start quoting request data (the body, the table, a value).
_QUOTING_MARKERS = ("Failed to predict data '", "Failed to enforce schema of data '", "Error: '",
                    "\nInput:", " for value `", "got `", "Received: ")
_PREDICT_WRAPPER = ("Failed to predict data '", "'. \nError: ")
WITHHELD = " (details withheld: they quote the request)"


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def scrub(message: str, private: Sequence[str]) -> str:
    """Belt and braces: request text that shows up in a message anyway is cut out."""
    for text in sorted(private, key=len, reverse=True):
        if len(text.strip()) >= 3:
            message = message.replace(text, "<query>")
    return message


def request_strings(body: Any) -> list[str]:
    """The string values of a decoded JSON body that may be private (queries and the like):
    not keys, not the column names of ``dataframe_split``."""
    found: list[str] = []
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if value != QUERY_COLUMN:
                found.append(value)
        elif isinstance(value, Mapping):
            stack.extend(v for key, v in value.items() if key != "columns")
        elif isinstance(value, list):
            stack.extend(value)
    return found


def decode_json_body(data: bytes | str) -> Any:
    """A request body decoded, or :class:`BadRequest` (without request text) when it is not
    UTF-8 JSON."""
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:  # a ValueError too: test it first
        raise BadRequest(f"the request body is not UTF-8 (invalid byte at position {exc.start}); "
                         "send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply to parse") from None


def body_strings(data: bytes | str) -> list[str]:
    """The cells of a non-JSON (CSV) body, to scrub from messages."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
    return [cell for cell in re.split(r'[,\r\n"]', text) if cell]


TABLE_HINT = f"send a table with a string column {QUERY_COLUMN!r}, one row per query"


def private_message(message: str, private: Sequence[str], *, hint: str = TABLE_HINT) -> str:
    """An MLflow error message about a request, without the request's text; ``hint`` says
    what the model takes (its signature's input)."""
    head, sep, inner = message.rpartition(_PREDICT_WRAPPER[1])
    if sep and head.startswith(_PREDICT_WRAPPER[0]):
        message = inner  # the model's (or MLflow's validation's) own message
    if "Failed to enforce schema" in message or "Failed to enforce model input schema" in message:
        return f"the input does not match the model's signature: {hint}"
    cut = min((i for i in (message.find(m) for m in _QUOTING_MARKERS) if i >= 0), default=-1)
    if cut >= 0:
        message = message[:cut].rstrip(" .:\n") + "." + WITHHELD
    message = scrub(message, private)
    return message if message.strip(" .") else "the request could not be read" + WITHHELD
