"""Filters and BM25 queries as SQLite SQL: a plan (:mod:`mlflow_rag.store.filters`) rendered
as parameterised SQL over the aliases ``d`` (documents) and ``c`` (chunks), and free text as
an FTS5 query. Pure functions: no connection."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from mlflow_rag.store.filters import COMPARISONS, Condition, Plan, plan_filter
from mlflow_rag.store.schema import HASH_PREFIX_CHARS

# Columns indexed by a prefix (schema migration 6): an equality test also names the prefix,
# the indexed expression, or SQLite scans the table.
PREFIX_INDEXED = ("d.content_hash",)


def compile_filter(spec: str | Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """Return ``(sql, params)`` over the aliases ``d`` (documents) and ``c`` (chunks)."""
    return render_sql(plan_filter(spec))


def render_sql(plan: Plan) -> tuple[str, list[Any]]:
    """The plan as one SQL boolean expression and its parameters, in order."""
    params: list[Any] = []

    def render(node: Plan) -> str:
        if isinstance(node, Condition):
            sql, values = condition_sql(node)
            params.extend(values)
            return sql
        if not node.parts:
            return "1"
        return join(node.op, [render(part) for part in node.parts])

    def join(op: str, parts: list[str]) -> str:
        # SQLite parses "a OR b OR c ..." as a left-deep tree, one level per term, and refuses
        # expressions deeper than 1,000 (512 terms already failed inside find_documents'
        # subquery); halving keeps the depth logarithmic in the number of terms.
        if len(parts) == 1:
            return parts[0]
        if len(parts) <= 8:
            return "(" + f" {op} ".join(parts) + ")"
        middle = len(parts) // 2
        return f"({join(op, parts[:middle])} {op} {join(op, parts[middle:])})"

    return render(plan), params


def condition_sql(node: Condition) -> tuple[str, tuple[Any, ...]]:
    """One leaf inline, as a test of the row under ``d``/``c``."""
    if node.column is not None:
        return _column_test(node.column, node.op, node.arg)
    lookup, params = _field_lookup(node)
    owner = "d.id" if node.owner == "document" else "c.id"
    return f"({owner} {'NOT ' if node.negate else ''}IN ({lookup}))", params


def condition_ids_sql(node: Condition) -> tuple[str, tuple[Any, ...]]:
    """The ids (documents' or chunks', by ``owner``) one leaf's test selects, before any
    negation: one index range scan of one table."""
    if node.column is not None:
        sql, params = _column_test(node.column, node.op, node.arg)
        alias, rows = ("d", "documents d") if node.owner == "document" else ("c", "chunks c")
        return f"SELECT {alias}.id FROM {rows} WHERE {sql}", params
    return _field_lookup(node)


def _column_test(column: str, op: str, arg: Any) -> tuple[str, tuple[Any, ...]]:
    if column in PREFIX_INDEXED and op == "$in":
        prefix = f"substr({column}, 1, {HASH_PREFIX_CHARS})"
        listed = json.dumps(arg)
        return (f"({prefix} IN (SELECT substr(value, 1, {HASH_PREFIX_CHARS}) FROM "
                f"json_each(?)) AND {column} IN (SELECT value FROM json_each(?)))",
                (listed, listed))
    if column in PREFIX_INDEXED and op == "$eq" and isinstance(arg, str):
        # "+": SQLite would otherwise substitute the value for the column in the prefix test
        # (constant propagation), which then no longer matches the index. A string compares
        # with a text column alike with or without the column's affinity.
        return (f"(substr({column}, 1, {HASH_PREFIX_CHARS}) = ? AND +{column} = ?)",
                (arg[:HASH_PREFIX_CHARS], arg))
    if op == "$exists":
        return f"({column} IS {'NOT ' if arg else ''}NULL)", ()
    if op in ("$in", "$nin"):
        values = (json.dumps(arg),)
        if op == "$in":
            return f"({column} IN (SELECT value FROM json_each(?)))", values
        return f"({column} IS NULL OR {column} NOT IN (SELECT value FROM json_each(?)))", values
    if arg is None:
        return f"({column} IS {'NOT ' if op == '$ne' else ''}NULL)", ()
    if op == "$ne":
        return f"({column} IS NULL OR {column} != ?)", (arg,)
    return f"({column} {COMPARISONS[op]} ?)", (arg,)


def _field_lookup(node: Condition) -> tuple[str, tuple[Any, ...]]:
    id_column = "document_id" if node.owner == "document" else "chunk_id"
    lookup = f"SELECT {id_column} FROM {node.owner}_fields WHERE key = ?"
    params: tuple[Any, ...] = (node.field,)
    if node.op == "$in":
        return lookup + " AND value IN (SELECT value FROM json_each(?))", (*params, json.dumps(node.arg))
    if node.op == "$notnull":
        return lookup + " AND value IS NOT NULL", params
    if node.op == "$eq":
        return lookup + " AND value = ?", (*params, node.arg)
    if node.op == "$exists":
        return lookup, params
    kinds = "('text')" if isinstance(node.arg, str) else "('integer', 'real')"
    return (lookup + f" AND value {COMPARISONS[node.op]} ? AND typeof(value) IN {kinds}",
            (*params, node.arg))


def fts_query(text: str, *, max_terms: int = 64) -> str:
    """Free text -> an FTS5 OR-query of quoted terms (no FTS syntax from the user survives)."""
    terms = list(dict.fromkeys(t.lower() for t in re.findall(r"\w+", text)))[:max_terms]
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
