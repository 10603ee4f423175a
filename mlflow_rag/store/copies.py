"""A store copied to another location, on the same or the other backend: SQLite ->
PostgreSQL to grow past one machine, PostgreSQL -> SQLite to ship a folder. The copy keeps
the store's identity, rows, ids and fitted embedders; its indexes are built from its rows."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mlflow_rag.store.store import Store
from mlflow_rag.store.transfer import copy_rows
from mlflow_rag.types import StoreStats


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    rows: dict[str, int]
    stats: StoreStats


def copy_store(source: str | Path, target: str | Path) -> CopyReport:
    """Copy the store at ``source`` into a new (or empty) store at ``target``."""
    with Store.open(source, read_only=True) as src:
        dst = Store.open(target, create=True)
        try:
            empty_root = dst.root
            rows = copy_rows(src.backend, dst.backend)
        finally:
            dst.close(flush=False)
        with Store.open(target) as dst:
            if dst.root != empty_root:  # a database's cache folder is named by its store id
                shutil.rmtree(empty_root, ignore_errors=True)
            for info in src.models():
                state = src.model_dir(info.name)
                if state.is_dir():
                    shutil.copytree(state, dst.model_dir(info.name), dirs_exist_ok=True)
            dst.flush()
            return CopyReport(source=src.location, target=dst.location, rows=rows,
                              stats=dst.stats())
