"""Copying a store's rows from one backend to another (SQLite <-> PostgreSQL), as of one
snapshot of the source, in one transaction of the target: a copy has every row or none."""

from __future__ import annotations

from mlflow_rag.errors import InvalidInput
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.tables import TABLES


def copy_rows(source: Backend, target: Backend) -> dict[str, int]:
    """Every row of every table of ``source`` into ``target``, an empty store (its identity,
    generation and id sequence become the source's). Returns the rows per table."""
    if target.counts()["documents"]:
        raise InvalidInput(f"{target.location} already holds documents; copy into a new store")
    copied: dict[str, int] = {}
    with source.read_transaction(), target.immediate_transaction():
        for table in TABLES:
            rows = list(source.dump_rows(table))
            target.load_rows(table, rows)
            copied[table] = len(rows)
    return copied
