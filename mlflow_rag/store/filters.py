"""The filter language, compiled to a plan of conditions (a pure function, no connection).

Each backend renders a plan as its own parameterised SQL
(:mod:`mlflow_rag.store.sqlite.filter_sql`); dense search evaluates the same plan as masks
(:mod:`mlflow_rag.store.filter_masks`).

A filter is a JSON object. Keys are fields; values are a scalar (equality) or an object of
operators. ``$and`` / ``$or`` take lists of filters::

    {"country": {"$in": ["Germany", "UK"]}, "imported_at": {"$gte": "2026-01-01"}}
    {"$or": [{"chunk_type": "abstract"}, {"chunk.page": {"$lte": 3}}]}

Fields:
- document columns: ``document_id, source_path, source_type, content_hash, imported_at,
  updated_at``; chunk columns: ``chunk_id, chunk_type, chunk_index, token_count, start_char,
  end_char``;
- ``chunk.<key>``: a key of the chunk's metadata;
- ``metadata.<key>`` or any other bare key: a key of the document's metadata.

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists``. ``$ne`` and ``$nin`` also match
where the field is missing (as in MongoDB); on a list-valued field, ``$eq``/``$in`` match when
any element matches. Range operators compare like with like: numbers with numbers, strings
with strings. Nested metadata objects are addressed with dotted keys (``metadata.author.name``).

Keys never become SQL text: columns come from an allow-list, and metadata keys and values are
bound parameters looked up in the indexed ``document_fields`` / ``chunk_fields`` tables (see
:func:`metadata_fields`), so a filter costs an index range scan, not a JSON parse per row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_rag.errors import FilterError, UnknownChoice

DOCUMENT_COLUMNS = {
    "document_id": "d.id",
    "source_path": "d.source_path",
    "source_type": "d.source_type",
    "content_hash": "d.content_hash",
    "imported_at": "d.imported_at",
    "updated_at": "d.updated_at",
}
CHUNK_COLUMNS = {
    "chunk_id": "c.id",
    "chunk_type": "c.chunk_type",
    "chunk_index": "c.chunk_index",
    "token_count": "c.token_count",
    "start_char": "c.start_char",
    "end_char": "c.end_char",
}
COLUMNS = {**DOCUMENT_COLUMNS, **CHUNK_COLUMNS}
COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
FIELD_OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists")
LOGICAL_OPERATORS = ("$and", "$or")
MAX_DEPTH = 16
MAX_LIST = 10_000
MAX_CONDITIONS = 512
MAX_KEY_LENGTH = 256
# Across the whole filter, not per list: a filter's cost (JSON parse, one json_each per
# condition, one id scan per value) grows with the values it holds, and 512 lists of 10,000
# values cost a minute of CPU and 1.4 GB per search before this bound.
MAX_VALUES = 10_000
MAX_FILTER_CHARS = 1_000_000  # the JSON text, or the strings (keys and values) of a mapping

Scalar = str | int | float | bool | None


def parse_filter(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Accept a JSON string, a mapping or nothing; return a dict (``{}`` means no filter)."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    if isinstance(text, str) and len(text) > MAX_FILTER_CHARS:
        raise FilterError(
            f"filter is {len(text):,} characters long; at most {MAX_FILTER_CHARS:,}"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FilterError(f"filter is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise FilterError(f"filter JSON is nested more than {MAX_DEPTH} levels deep") from None
    if not isinstance(value, dict):
        raise FilterError(f"filter must be a JSON object, got {type(value).__name__}")
    return value


def plan_filter(spec: str | Mapping[str, Any] | None) -> Plan:
    """The filter as a tree of :class:`Junction` and :class:`Condition` (validated)."""
    return _Compiler().filter(parse_filter(spec), depth=0)


def as_plan(spec: str | Mapping[str, Any] | Plan | None) -> Plan | None:
    """A filter in its compiled form, compiled at most once: a plan is returned as it is, JSON
    text or a mapping is compiled, and no filter (``None``, ``""``, ``{}``) is ``None``."""
    if isinstance(spec, (Condition, Junction)):
        return spec
    return plan_filter(spec) if spec else None


@dataclass(frozen=True)
class Condition:
    """One leaf: the rows whose ``owner`` id is (or, ``negate``, is not) among the ids one
    test selects, with no SQL in it (each backend renders it).

    A column test (``column`` set: an allow-listed column, under the aliases ``d`` for
    documents and ``c`` for chunks) keeps the filter's operator and is never negated: its
    rendering is NULL-safe, so SQL's NULL (unknown) and "no match" agree everywhere a leaf
    can appear. A metadata test (``field`` set) is a positive lookup in the indexed
    ``<owner>_fields`` rows: ``op`` is ``$exists`` (the key is present), ``$notnull`` (a
    non-null value), ``$in`` (a value in the list ``arg``), ``$eq`` or a range operator
    (compared like with like: strings with strings, numbers with numbers); ``$ne``, ``$nin``,
    ``$exists: false`` and equality with null are these lookups negated.
    """

    owner: str  # "document" | "chunk"
    column: str | None
    field: str | None
    op: str
    arg: Any
    negate: bool = False


@dataclass(frozen=True)
class Junction:
    """``$and`` / ``$or`` of parts; an empty ``AND`` matches everything."""

    op: str  # "AND" | "OR"
    parts: tuple[Plan, ...]


Plan = Condition | Junction


class _Compiler:
    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0
        self.chars = 0

    def count_condition(self) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(
                f"filter has more than {MAX_CONDITIONS} conditions (an empty object counts as one)"
            )

    def count_chars(self, text: str) -> None:
        self.chars += len(text)
        if self.chars > MAX_FILTER_CHARS:
            raise FilterError(
                f"filter holds more than {MAX_FILTER_CHARS:,} characters of keys and strings"
            )

    def filter(self, spec: Any, *, depth: int) -> Plan:
        if depth > MAX_DEPTH:
            raise FilterError(f"filter is nested more than {MAX_DEPTH} levels deep")
        if not isinstance(spec, Mapping):
            raise FilterError(f"expected a filter object, got {type(spec).__name__}")
        if not spec:
            # Matches everything, yet each one is a term of the SQL: {"$or": [{}] * 1001}
            # escaped the condition limit and overflowed SQLite's expression depth.
            self.count_condition()
        parts = []
        for key, value in spec.items():
            if not isinstance(key, str):
                raise FilterError(f"filter keys must be strings, got {key!r}")
            self.count_chars(key)
            if key.startswith("$"):
                parts.append(self.logical(key, value, depth=depth))
            else:
                parts.append(self.field(key, value))
        return parts[0] if len(parts) == 1 else Junction("AND", tuple(parts))

    def logical(self, op: str, value: Any, *, depth: int) -> Plan:
        if op not in LOGICAL_OPERATORS:
            raise UnknownChoice("filter operator", op, (*LOGICAL_OPERATORS, *FIELD_OPERATORS))
        if not isinstance(value, list) or not value:
            raise FilterError(f"{op} takes a non-empty list of filters")
        if len(value) > MAX_CONDITIONS:  # refused before walking a list of a million objects
            raise FilterError(
                f"filter has more than {MAX_CONDITIONS} conditions ({op} lists {len(value):,})"
            )
        parts = tuple(self.filter(v, depth=depth + 1) for v in value)
        return Junction("AND" if op == "$and" else "OR", parts)

    def field(self, key: str, value: Any) -> Plan:
        table, column, name = self.expression(key)
        if isinstance(value, Mapping):
            if not value:
                raise FilterError(f"empty operator object for field {key!r}")
            parts = [self.operator(key, table, column, name, op, arg) for op, arg in value.items()]
            return parts[0] if len(parts) == 1 else Junction("AND", tuple(parts))
        return self.operator(key, table, column, name, "$eq", value)

    def expression(self, key: str) -> tuple[str, str | None, str | None]:
        """(owner table, column expression or None, metadata key or None)."""
        if key in COLUMNS:
            return ("document" if key in DOCUMENT_COLUMNS else "chunk"), COLUMNS[key], None
        if key.startswith("chunk."):
            table, name = "chunk", key[len("chunk."):]
        elif key.startswith("metadata."):
            table, name = "document", key[len("metadata."):]
        else:
            table, name = "document", key
        if (not name or len(name) > MAX_KEY_LENGTH or any(ord(ch) < 32 for ch in name)
                or not _encodable(name)):
            raise FilterError(
                f"bad filter key {key!r}: metadata keys are 1-{MAX_KEY_LENGTH} printable characters"
            )
        return table, None, name

    def operator(
        self, key: str, table: str, column: str | None, name: str | None, op: str, arg: Any
    ) -> Condition:
        self.count_condition()
        if op not in FIELD_OPERATORS:
            raise UnknownChoice("filter operator", op, FIELD_OPERATORS)
        _check_argument(key, op, arg)
        values = arg if op in ("$in", "$nin") else [arg]
        self.values += len(values)
        if self.values > MAX_VALUES:
            raise FilterError(
                f"filter has more than {MAX_VALUES:,} values in all its conditions and "
                "$in/$nin lists together"
            )
        for value in values:
            if isinstance(value, str):
                self.count_chars(value)
        if column is not None:
            return Condition(table, column, None, op, arg)
        assert name is not None
        return field_condition(table, name, op, arg)


def field_condition(table: str, name: str, op: str, arg: Any) -> Condition:
    """A metadata test as a positive lookup in the indexed fields, negated where the operator
    asks for the rows that lack a match (``$ne``/``$nin`` also match a missing field)."""
    if op == "$exists":
        return Condition(table, None, name, "$exists", None, negate=not arg)
    if op in ("$in", "$nin"):
        return Condition(table, None, name, "$in", list(arg), negate=op == "$nin")
    if arg is None:  # null matches a missing field or an explicit null
        return Condition(table, None, name, "$notnull", None, negate=op != "$ne")
    if op in ("$eq", "$ne"):
        return Condition(table, None, name, "$eq", arg, negate=op == "$ne")
    return Condition(table, None, name, op, arg)


def _check_argument(key: str, op: str, arg: Any) -> None:
    if op in ("$in", "$nin"):
        if not isinstance(arg, list):
            raise FilterError(f"{op} on {key!r} takes a list, got {type(arg).__name__}")
        if len(arg) > MAX_LIST:
            raise FilterError(f"{op} on {key!r} has {len(arg)} values; at most {MAX_LIST}")
        for item in arg:
            _check_scalar(key, op, item)
            if item is None:
                raise FilterError(f"{op} on {key!r} may not contain null; use $exists")
        return
    if op == "$exists":
        if not isinstance(arg, bool):
            raise FilterError(f"$exists on {key!r} takes true or false")
        return
    _check_scalar(key, op, arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if arg is None:
            raise FilterError(f"{op} on {key!r} needs a number or string, not null")
        if isinstance(arg, bool):
            raise FilterError(f"{op} on {key!r} needs a number or string, not a boolean")


def metadata_fields(metadata: Mapping[str, Any], *, skip: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """(key, value) rows for the field tables: nested objects flatten to dotted keys, lists
    give one row per scalar element, booleans become 0/1 (as SQLite compares them)."""
    rows: list[tuple[str, Any]] = []

    def visit(prefix: str, value: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                visit(f"{prefix}.{sub}" if prefix else str(sub), inner, depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                if not isinstance(item, (Mapping, list, tuple)):
                    visit(prefix, item, depth + 1)
        elif value is None or isinstance(value, (str, int, float)):
            if isinstance(value, float) and value != value:
                return
            rows.append((prefix, int(value) if isinstance(value, bool) else value))

    for key, value in metadata.items():
        if key in skip:
            continue
        kind = type(value)
        if kind is str or kind is int or (kind is float and value == value) or value is None:
            rows.append((key, value))  # the common flat case, without the recursion
        else:
            visit(str(key), value, 0)
    return rows


# SQLite integers are signed 64-bit; a larger Python int cannot be bound as a parameter.
SQLITE_INT_MIN, SQLITE_INT_MAX = -(2**63), 2**63 - 1


def _encodable(text: str) -> bool:
    """False for strings SQLite cannot store (lone surrogates such as JSON's "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_scalar(key: str, op: str, value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if not _encodable(value):
            raise FilterError(f"{op} on {key!r}: the string is not valid Unicode (lone surrogate)")
        return
    if isinstance(value, int):
        if not SQLITE_INT_MIN <= value <= SQLITE_INT_MAX:
            raise FilterError(f"{op} on {key!r}: integers must fit in 64 bits")
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise FilterError(f"{op} on {key!r}: NaN and infinity are not comparable")
        return
    raise FilterError(
        f"{op} on {key!r} takes a string, number, boolean or null, got {type(value).__name__}"
    )
