"""A store exported to a folder of Parquet or JSON Lines files, and imported back.

An export holds every table of :data:`~mlflow_rag.store.tables.TABLES` (the logs of
:data:`LOG_TABLES` only when asked), the vectors in one file per embedding model, the state
of embedders fitted on the corpus (tfidf), and ``manifest.json``: the format version, the
store's id and generation, rows per table, each model's name, version, dimension and index,
and the sha256 of every file. It is written manifest last, so a folder without one is an
export that did not finish.

An import checks every file against the manifest and decodes every row before it opens the
target, then loads the rows in one transaction of an empty store: a damaged export writes
nothing. The imported store has the exported one's identity, ids, generation and id sequence
(as ``mlflow-rag copy``); its indexes are built from its rows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_rag.errors import InvalidInput, RagError, UnknownChoice
from mlflow_rag.store.export_files import FORMATS, KINDS, column_kinds, read_rows, write_rows
from mlflow_rag.store.files import confined, sha256_file
from mlflow_rag.store.opening import is_database_location
from mlflow_rag.store.store import Store
from mlflow_rag.store.tables import TABLES, utc_now

EXPORT_FORMAT = "mlflow-rag-export"
EXPORT_VERSION = 1
MANIFEST = "manifest.json"
# What a store logged about its use, not what it needs to be rebuilt: exported only when
# asked. A table added to TABLES is exported unless it is named here.
LOG_TABLES = frozenset({"queries", "retrievals", "generations", "citations", "feedback",
                        "audit_log"})
VECTORS_TABLE = "embeddings"
_MODEL_NAME = TABLES[VECTORS_TABLE].index("model_name")
_STATE_MARKER = ".version"  # the cache folder's own bookkeeping (store.models.ModelFiles)


@dataclass(frozen=True)
class ExportReport:
    folder: str
    format: str
    rows: dict[str, int]
    files: int
    bytes: int


@dataclass(frozen=True)
class ImportReport:
    source: str
    target: str
    rows: dict[str, int]
    documents: int
    chunks: int
    embeddings: int


# --------------------------------------------------------------------------- export


def export_store(
    location: str | Path, dest: str | Path, *, fmt: str, include_logs: bool = False
) -> ExportReport:
    """Write the store at ``location`` to the new (or empty) folder ``dest`` as ``fmt``."""
    if fmt not in FORMATS:
        raise UnknownChoice("export format", fmt, FORMATS)
    folder = Path(dest)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidInput(f"{folder} is not an empty folder; export into a new one")
    tables = [t for t in TABLES if include_logs or t not in LOG_TABLES]
    with Store.open(location, read_only=True) as store:
        models = {info.name: info for info in store.models()}
        folder.mkdir(parents=True, exist_ok=True)
        entries: dict[str, Any] = {}
        vectors: dict[str, Any] = {}
        with store.backend.read_transaction():  # one snapshot: counts agree with each other
            generation = store.backend.generation()
            for table in tables:
                rows = list(store.backend.dump_rows(table))
                entries[table] = _write_table(folder, fmt, table, rows, models, vectors)
        state = _export_model_state(store, folder, models)
        counts: dict[str, int] = {table: entry["rows"] for table, entry in entries.items()}
        manifest = {
            "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "file_format": fmt,
            "store_id": store.store_id, "generation": generation,
            "schema_version": store.backend.schema_version(), "exported_at": utc_now(),
            "include_logs": include_logs, "tables": entries, "vectors": vectors,
            "model_state": state,
            "counts": counts,
        }
        # the rows have left the store: recorded even if the manifest cannot be written
        store.governance.audit("export", {"folder": str(folder.resolve()), "format": fmt,
                               "include_logs": include_logs, "rows": counts})
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    manifest["files"] = {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return ExportReport(folder=str(folder), format=fmt, rows=counts,
                        files=len(files) + 1, bytes=sum(p.stat().st_size for p in files))


def _write_table(
    folder: Path, fmt: str, table: str, rows: list[tuple[Any, ...]], models: Mapping[str, Any],
    vectors: dict[str, Any],
) -> dict[str, Any]:
    columns = TABLES[table]
    suffix = FORMATS[fmt]
    if table != VECTORS_TABLE:
        kinds = column_kinds(columns, rows)
        name = f"tables/{table}.{suffix}"
        (folder / "tables").mkdir(exist_ok=True)
        write_rows(folder / name, fmt, columns, kinds, rows)
        return {"columns": list(columns), "kinds": kinds, "rows": len(rows), "files": [name]}
    # Vectors: one file per model, so a model's vectors are read (or left) on their own.
    by_model: dict[str, list[tuple[Any, ...]]] = {name: [] for name in models}
    for row in rows:
        by_model.setdefault(row[_MODEL_NAME], []).append(row)
    (folder / "vectors").mkdir(exist_ok=True)
    kinds = column_kinds(columns, rows)
    kinds["vector"] = "vector"
    names = []
    for model_name, model_rows in by_model.items():
        info = models[model_name]
        name = f"vectors/{info.slug}.{suffix}"
        write_rows(folder / name, fmt, columns, kinds, model_rows, dimension=info.dimension)
        names.append(name)
        vectors[model_name] = {
            "file": name, "rows": len(model_rows), "slug": info.slug,
            "dimension": info.dimension, "model_version": info.model_version,
            "embedder": info.embedder, "index_type": info.index_type,
            "index_params": dict(info.index_params),
        }
    return {"columns": list(columns), "kinds": kinds, "rows": len(rows), "files": names}


def _export_model_state(store: Store, folder: Path, models: Mapping[str, Any]) -> dict[str, Any]:
    """The files an embedder fitted on the corpus saved (tfidf's vocabulary): without them
    the imported store could not embed a query in its model's space."""
    state: dict[str, Any] = {}
    for name, info in models.items():
        source = store.model_dir(name)
        files = sorted(p for p in source.glob("*") if p.is_file() and p.name != _STATE_MARKER) \
            if source.is_dir() else []
        if not files:
            continue
        target = folder / "model_state" / info.slug
        target.mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, target / path.name)
        state[name] = {"version": info.model_version,
                       "files": [f"model_state/{info.slug}/{p.name}" for p in files]}
    return state


# --------------------------------------------------------------------------- import


def read_export(source: str | Path) -> tuple[dict[str, Any], dict[str, list[tuple[Any, ...]]]]:
    """The manifest and every table's rows of the export at ``source``, after checking each
    file against the manifest. Raises :class:`InvalidInput` naming the first damaged file."""
    folder = Path(source)
    manifest = _read_manifest(folder)
    fmt = manifest["file_format"]
    for name, digest in manifest["files"].items():
        path = confined(folder, name, what="export file")
        if not path.is_file():
            raise InvalidInput(f"{folder}: {name} is missing; the export is incomplete")
        if sha256_file(path) != digest:
            raise InvalidInput(f"{folder}: {name} does not match its sha256 in {MANIFEST}; "
                               "the export is damaged")
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for table, entry in manifest["tables"].items():
        if table not in TABLES:
            raise InvalidInput(f"{folder}: table {table!r} is not one this version of mlflow-rag "
                               f"has ({', '.join(TABLES)})")
        columns = tuple(entry["columns"])
        if columns != TABLES[table]:
            raise InvalidInput(f"{folder}: table {table} has the columns {', '.join(columns)}; "
                               f"this version has {', '.join(TABLES[table])}")
        kinds = entry["kinds"]
        if set(kinds) != set(columns) or not set(kinds.values()) <= set(KINDS):
            raise InvalidInput(f"{folder}: the column encodings of table {table} are not valid")
        rows[table] = []
        for name in entry["files"]:
            if name not in manifest["files"]:
                raise InvalidInput(f"{folder}: {name} has no sha256 in {MANIFEST}")
            rows[table].extend(read_rows(folder / name, fmt, columns, kinds))
        if len(rows[table]) != entry["rows"]:
            raise InvalidInput(f"{folder}: table {table} has {len(rows[table])} rows, its "
                               f"manifest says {entry['rows']}")
    return manifest, rows


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise InvalidInput(f"{folder} has no {MANIFEST}: not an export, or one that did not "
                           "finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{path} cannot be read: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"{path} is not the manifest of an mlflow-rag export")
    if manifest.get("format_version") != EXPORT_VERSION:
        raise InvalidInput(f"{path}: export format version {manifest.get('format_version')!r}; "
                           f"this version of mlflow-rag reads {EXPORT_VERSION}")
    for key in ("files", "tables"):
        if not isinstance(manifest.get(key), dict):
            raise InvalidInput(f"{path} has no {key!r} object; the manifest is damaged")
    if manifest.get("file_format") not in FORMATS:
        raise UnknownChoice("export file format", str(manifest.get("file_format")), FORMATS)
    return manifest


def import_store(source: str | Path, target: str | Path) -> ImportReport:
    """Load the export at ``source`` into the new (or empty) store at ``target``."""
    manifest, rows = read_export(source)
    state = _read_model_state(Path(source), manifest)
    new_folder = not is_database_location(target) and not Path(target).exists()
    dst = Store.open(target, create=True)
    try:
        empty_root = dst.root
        _check_empty(dst)
        with dst.backend.immediate_transaction():
            for table in TABLES:  # TABLES' order: rows after the rows they reference
                if table in rows:
                    _load(dst, table, rows[table], source)
    except BaseException:
        dst.close(flush=False)
        if new_folder:  # refused: leave no store behind where there was none
            shutil.rmtree(target, ignore_errors=True)
        raise
    dst.close(flush=False)
    with Store.open(target) as dst:
        if dst.root != empty_root:  # a database's cache folder is named by its store id
            shutil.rmtree(empty_root, ignore_errors=True)
        for name, (version, files) in state.items():
            folder = dst.model_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            for file_name, content in files.items():
                confined(folder, file_name, what="model state file").write_bytes(content)
            dst.publish_model_state(name, version)
        dst.flush()
        stats = dst.stats()
        return ImportReport(source=str(source), target=dst.location,
                            rows={t: len(r) for t, r in rows.items()},
                            documents=stats.documents, chunks=stats.chunks,
                            embeddings=stats.embeddings)


def _load(store: Store, table: str, rows: list[tuple[Any, ...]], source: str | Path) -> None:
    """Rows the database refuses (a chunk of no document: an export edited with its hashes
    recomputed) roll the import back, named in one line."""
    try:
        store.backend.load_rows(table, rows)
    except RagError:
        raise
    except Exception as exc:
        if store.backend.is_storage_failure(exc):
            raise store.backend.storage_failure(exc, outcome="nothing was imported") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{source}: the rows of table {table} do not load ({first}); "
                           "nothing was imported") from exc


def _read_model_state(
    folder: Path, manifest: Mapping[str, Any]
) -> dict[str, tuple[str, dict[str, bytes]]]:
    state: dict[str, tuple[str, dict[str, bytes]]] = {}
    for name, entry in manifest.get("model_state", {}).items():
        files = {}
        for file_name in entry["files"]:
            if file_name not in manifest["files"]:
                raise InvalidInput(f"{folder}: {file_name} has no sha256 in {MANIFEST}")
            files[Path(file_name).name] = confined(folder, file_name, what="export file").read_bytes()
        state[name] = (str(entry["version"]), files)
    return state


def _check_empty(store: Store) -> None:
    counts = store.backend.counts()
    held = [f"{n} {what}" for what, n in counts.items() if n]
    if held or store.models() or store.backend.generation():
        raise RagError(f"{store.location} is not empty ({', '.join(held) or 'it has been written'}"
                       "); import into a new store")

