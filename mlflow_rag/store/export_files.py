"""The files of an export: one table's rows as Parquet or JSON Lines, and back, exactly.

Rows come from :meth:`Backend.dump_rows` as tuples of ``None``, ``int``, ``float``, ``str``
and ``bytes``; reading a file gives back the same tuples, bit for bit. Each column gets one
encoding (:func:`column_kinds`), recorded in the manifest, because Parquet columns have one
type: a column whose values mix types (a metadata field's value: text or a number; SQLite's
columns are dynamically typed) is stored as JSON text so ``2000`` and ``2000.0`` stay apart.
A ``vector`` column (float32 little-endian bytes) is a list of floats: Parquet's
``fixed_size_list<float32>``, JSON numbers in JSON Lines (a float32 widened to a double
and printed shortest round-trips exactly), so other tools read the vectors as numbers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.errors import InvalidInput

FORMATS: dict[str, str] = {"parquet": "parquet", "jsonl": "jsonl"}  # format -> file suffix
KINDS = ("null", "int", "float", "str", "bytes", "vector", "mixed")
VECTOR_COLUMNS = frozenset({"vector"})

_PY_KINDS: dict[type, str] = {int: "int", float: "float", str: "str", bytes: "bytes"}


def column_kinds(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> dict[str, str]:
    """The encoding of each column: the one Python type of its non-null values, ``vector``
    for vector columns, ``mixed`` for several types, ``null`` for none."""
    kinds: dict[str, str] = {}
    for i, column in enumerate(columns):
        seen = {type(row[i]) for row in rows if row[i] is not None}
        unknown = [t.__name__ for t in seen if t not in _PY_KINDS]
        if unknown:
            raise InvalidInput(f"column {column!r} holds values of type {unknown[0]}, which an "
                               "export cannot write (int, float, str, bytes)")
        if column in VECTOR_COLUMNS and seen <= {bytes}:
            kinds[column] = "vector"
        elif not seen:
            kinds[column] = "null"
        elif len(seen) == 1:
            kinds[column] = _PY_KINDS[seen.pop()]
        else:
            kinds[column] = "mixed"
    return kinds


def write_rows(
    path: Path, fmt: str, columns: Sequence[str], kinds: dict[str, str],
    rows: Sequence[tuple[Any, ...]], *, dimension: int | None = None,
) -> None:
    """Write ``rows`` to ``path`` (a new file) as ``fmt``."""
    if fmt == "parquet":
        _write_parquet(path, columns, kinds, rows, dimension=dimension)
    else:
        _write_jsonl(path, columns, kinds, rows)


def read_rows(
    path: Path, fmt: str, columns: Sequence[str], kinds: dict[str, str]
) -> list[tuple[Any, ...]]:
    """The rows :func:`write_rows` wrote, exactly; a file that does not parse is an
    :class:`InvalidInput` naming it."""
    try:
        if fmt == "parquet":
            return _read_parquet(path, columns, kinds)
        return _read_jsonl(path, columns, kinds)
    except InvalidInput:
        raise
    except Exception as exc:  # pyarrow and json raise many types for a damaged file
        raise InvalidInput(f"{path.name} cannot be read as {fmt}: {exc}") from exc


# --------------------------------------------------------------------------- JSON Lines


def _json_value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "vector":
        return np.frombuffer(value, dtype="<f4").astype(np.float64).tolist()
    if kind == "bytes" or (kind == "mixed" and isinstance(value, bytes)):
        return {"base64": base64.b64encode(value).decode("ascii")}
    return value


def _from_json(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "vector":
        return np.asarray(value, dtype=np.float64).astype("<f4").tobytes()
    if isinstance(value, dict):  # only bytes are written as objects
        return base64.b64decode(value["base64"])
    return value


def _write_jsonl(
    path: Path, columns: Sequence[str], kinds: dict[str, str], rows: Sequence[tuple[Any, ...]]
) -> None:
    with path.open("x", encoding="utf-8") as out:
        for row in rows:
            record = {c: _json_value(v, kinds[c]) for c, v in zip(columns, row, strict=True)}
            out.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")


def _read_jsonl(path: Path, columns: Sequence[str], kinds: dict[str, str]) -> list[tuple[Any, ...]]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            record = json.loads(line)
            if not isinstance(record, dict) or set(record) != set(columns):
                raise InvalidInput(f"{path.name} line {number}: expected the columns "
                                   f"{', '.join(columns)}")
            rows.append(tuple(_from_json(record[c], kinds[c]) for c in columns))
    return rows


# --------------------------------------------------------------------------- Parquet


def _arrow_type(kind: str, dimension: int | None) -> Any:
    import pyarrow as pa

    if kind == "vector":
        return pa.list_(pa.float32(), dimension) if dimension else pa.list_(pa.float32())
    return {"null": pa.string(), "int": pa.int64(), "float": pa.float64(), "str": pa.string(),
            "bytes": pa.binary(), "mixed": pa.string()}[kind]


def _write_parquet(
    path: Path, columns: Sequence[str], kinds: dict[str, str], rows: Sequence[tuple[Any, ...]],
    *, dimension: int | None,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for i, column in enumerate(columns):
        kind = kinds[column]
        values = [row[i] for row in rows]
        if kind == "vector" and dimension and None not in values:
            # One buffer for the whole column: no Python float per component.
            flat = np.frombuffer(b"".join(values), dtype="<f4")
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), dimension))
            continue
        if kind == "vector":
            values = [None if v is None else np.frombuffer(v, dtype="<f4") for v in values]
        elif kind == "mixed":
            values = [None if v is None else json.dumps(_json_value(v, kind)) for v in values]
        arrays.append(pa.array(values, type=_arrow_type(kind, dimension)))
    table = pa.Table.from_arrays(arrays, names=list(columns))
    if path.exists():
        raise InvalidInput(f"{path} already exists")
    pq.write_table(table, path)


def _read_parquet(path: Path, columns: Sequence[str], kinds: dict[str, str]) -> list[tuple[Any, ...]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if table.column_names != list(columns):
        raise InvalidInput(f"{path.name}: expected the columns {', '.join(columns)}, found "
                           f"{', '.join(table.column_names)}")
    decoded: list[list[Any]] = []
    for column in columns:
        kind = kinds[column]
        data = table.column(column)
        if kind == "vector" and data.null_count == 0 and data.type.list_size > 0:
            dimension = data.type.list_size
            flat = data.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            matrix = np.ascontiguousarray(flat, dtype="<f4").reshape(-1, dimension)
            decoded.append([row.tobytes() for row in matrix])
            continue
        values = data.to_pylist()
        if kind == "vector":
            values = [None if v is None else np.asarray(v, dtype="<f4").tobytes() for v in values]
        elif kind == "mixed":
            values = [None if v is None else _from_json(json.loads(v), kind) for v in values]
        decoded.append(values)
    return list(zip(*decoded, strict=True)) if decoded else []
