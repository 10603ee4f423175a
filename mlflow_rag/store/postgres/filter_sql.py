"""Filters as PostgreSQL SQL: a plan (:mod:`mlflow_rag.store.filters`) rendered over the
aliases ``d`` (documents) and ``c`` (chunks), matching what the SQLite backend selects.

SQLite compares by type affinity and PostgreSQL by declared types, so the rendering spells
out SQLite's rules: a text column compares a number as its text (``source_type = 5`` is
``source_type = '5'``); an integer column compares a string that reads as a number as that
number and any other string as greater than every number; a metadata value compares strings
with strings (``txt``) and numbers with numbers (``num``), booleans being 0 and 1. Pure
functions: no connection.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from mlflow_rag.store.filters import COMPARISONS, Condition, Plan
from mlflow_rag.store.schema import HASH_PREFIX_CHARS

PREFIX_INDEXED = frozenset({"d.content_hash"})
INTEGER_COLUMNS = frozenset({"c.chunk_index", "c.token_count", "c.start_char", "c.end_char"})
_NUMERIC_TEXT = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_INTEGER_TEXT = re.compile(r"\s*[+-]?\d+\s*")


def render_sql(plan: Plan) -> tuple[str, list[Any]]:
    """The plan as one SQL boolean expression and its parameters, in order."""
    params: list[Any] = []

    def render(node: Plan) -> str:
        if isinstance(node, Condition):
            sql, values = condition_sql(node)
            params.extend(values)
            return sql
        if not node.parts:
            return "TRUE"
        return "(" + f" {node.op} ".join(render(part) for part in node.parts) + ")"

    return render(plan), params


def condition_sql(node: Condition) -> tuple[str, tuple[Any, ...]]:
    """One leaf inline, as a test of the row under ``d``/``c``."""
    if node.column is not None:
        return _column_test(node.column, node.op, node.arg)
    lookup, params = _field_lookup(node)
    owner = "d.id" if node.owner == "document" else "c.id"
    return f"({owner} {'NOT ' if node.negate else ''}IN ({lookup}))", params


def condition_ids_sql(node: Condition) -> tuple[str, tuple[Any, ...]]:
    """The ids one leaf's test selects, before any negation."""
    if node.column is not None:
        sql, params = _column_test(node.column, node.op, node.arg)
        alias, rows = ("d", "documents d") if node.owner == "document" else ("c", "chunks c")
        return f"SELECT {alias}.id FROM {rows} WHERE {sql}", params
    return _field_lookup(node)


def _sqlite_text(value: Any) -> str:
    """A scalar as SQLite's TEXT affinity turns it into text."""
    if isinstance(value, bool):
        return str(int(value))
    return value if isinstance(value, str) else repr(value)


def _as_number(value: Any) -> Decimal | None:
    """A scalar as SQLite's INTEGER affinity reads it: None for text that is no number."""
    if not isinstance(value, str):
        return decimal(value)
    if not _NUMERIC_TEXT.fullmatch(value):
        return None
    return decimal(int(value) if _INTEGER_TEXT.fullmatch(value) else float(value))


def decimal(value: bool | int | float) -> Decimal:
    """A number as ``numeric``: floats by their shortest repr, the same on the way in (a
    stored field) and in a filter, so equal doubles compare equal and order is kept."""
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(int(value))


def _column_test(column: str, op: str, arg: Any) -> tuple[str, tuple[Any, ...]]:
    if column in PREFIX_INDEXED and op in ("$eq", "$in") and arg is not None:
        # Indexed by a prefix (schema migration 6): the test names the indexed expression.
        prefix = f"substr({column}, 1, {HASH_PREFIX_CHARS})"
        if op == "$in":
            values = [_sqlite_text(v) for v in arg]
            return (f"({prefix} = ANY(%s::text[]) AND {column} = ANY(%s::text[]))",
                    ([v[:HASH_PREFIX_CHARS] for v in values], values))
        text = _sqlite_text(arg)
        return (f"({prefix} = %s::text AND {column} = %s::text)",
                (text[:HASH_PREFIX_CHARS], text))
    if op == "$exists":
        return f"({column} IS {'NOT ' if arg else ''}NULL)", ()
    if arg is None:
        return f"({column} IS {'NOT ' if op == '$ne' else ''}NULL)", ()
    if column in INTEGER_COLUMNS:
        return _integer_column_test(column, op, arg)
    if op in ("$in", "$nin"):
        values = [_sqlite_text(v) for v in arg]
        if op == "$in":
            return f"({column} = ANY(%s::text[]))", (values,)
        return f"({column} IS NULL OR NOT ({column} = ANY(%s::text[])))", (values,)
    if op == "$ne":
        return f"({column} IS NULL OR {column} != %s::text)", (_sqlite_text(arg),)
    return f"({column} {COMPARISONS[op]} %s::text)", (_sqlite_text(arg),)


def _integer_column_test(column: str, op: str, arg: Any) -> tuple[str, tuple[Any, ...]]:
    if op in ("$in", "$nin"):
        numbers = [n for n in (_as_number(v) for v in arg) if n is not None]
        if op == "$in":
            return f"({column} = ANY(%s::numeric[]))", (numbers,)
        return f"({column} IS NULL OR NOT ({column} = ANY(%s::numeric[])))", (numbers,)
    number = _as_number(arg)
    if number is None:  # SQLite: every number is less than every string
        if op == "$eq":
            return "FALSE", ()
        if op == "$ne":
            return "TRUE", ()
        if op in ("$lt", "$lte"):
            return f"({column} IS NOT NULL)", ()
        return "FALSE", ()
    if op == "$ne":
        return f"({column} IS NULL OR {column} != %s::numeric)", (number,)
    return f"({column} {COMPARISONS[op]} %s::numeric)", (number,)


def _field_lookup(node: Condition) -> tuple[str, tuple[Any, ...]]:
    id_column = "document_id" if node.owner == "document" else "chunk_id"
    lookup = f"SELECT {id_column} FROM {node.owner}_fields WHERE key = %s"
    params: tuple[Any, ...] = (node.field,)
    if node.op == "$exists":
        return lookup, params
    if node.op == "$notnull":
        return lookup + " AND (txt IS NOT NULL OR num IS NOT NULL)", params
    if node.op == "$in":
        texts = [v for v in node.arg if isinstance(v, str)]
        numbers = [decimal(v) for v in node.arg if not isinstance(v, str)]
        tests = []
        if texts:
            tests.append("txt = ANY(%s::text[])")
            params += (texts,)
        if numbers:
            tests.append("num = ANY(%s::numeric[])")
            params += (numbers,)
        return lookup + " AND (" + (" OR ".join(tests) or "FALSE") + ")", params
    column, value = _typed(node.arg)
    sign = "=" if node.op == "$eq" else COMPARISONS[node.op]
    return lookup + f" AND {column} {sign} %s::{'text' if column == 'txt' else 'numeric'}", \
        (*params, value)


def _typed(value: Any) -> tuple[str, Any]:
    """The field column a scalar is compared in, and the value as stored there."""
    if isinstance(value, str):
        return "txt", value
    return "num", decimal(value)


def field_columns(value: Any) -> tuple[str | None, Any]:
    """(txt, num) a metadata value is stored as."""
    if value is None:
        return None, None
    column, typed = _typed(value)
    return (typed, None) if column == "txt" else (None, typed)
