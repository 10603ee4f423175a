"""Bundles: a store copied whole and sealed with the sha256 of every file (``Store.snapshot``),
and the check that refuses a bundle whose files do not match (``verify_bundle``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mlflow_rag.errors import BundleCorrupt, InvalidInput, UnsafePath
from mlflow_rag.store import layout
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.files import FileStamp, StorageError, confined, sha256_fd, sha256_file, storage_error
from mlflow_rag.store.manifest import Manifest, read_manifest, write_manifest
from mlflow_rag.store.schema import SCHEMA_VERSION
from mlflow_rag.store.sqlite.connection import finalize_snapshot, is_storage_failure


def write_bundle(
    dest: Path, *, copy_live_files: Callable[[Path], None],
    persist_indexes: Callable[[Path], None],
) -> Path:
    """Make ``dest`` a bundle: ``copy_live_files`` copies the store's files and database into
    it (under the store's locks), ``persist_indexes`` brings the copied indexes up to the
    copied database, then every file's hash goes into the manifest.

    If any step fails (disk full, I/O error), what was written of the bundle is removed and
    StorageError names the file that could not be written; the store is not changed.
    """
    if dest.exists() and any(dest.iterdir()):
        raise InvalidInput(f"snapshot destination {dest} is not empty")
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        copy_live_files(dest)
        _seal(dest, persist_indexes)
    except BaseException as exc:
        _remove_partial_bundle(dest, remove_folder=created)
        raise _bundle_write_error(exc, dest) from exc
    return dest


def copy_store_files(root: Path, dest: Path, backend: Backend) -> None:
    """Copy the derived files (index, models, manifest), then the database by VACUUM INTO.
    The caller holds the store's lock file, so no flush rewrites them meanwhile."""

    def copy_inside(source: str, target: str) -> None:
        # copytree follows symlinks: copy a file only if it resolves inside the store
        shutil.copy2(confined(root, Path(source).relative_to(root), what="store file"), target)

    for sub in (layout.INDEX_DIR, layout.MODELS_DIR):
        if (root / sub).is_dir():
            shutil.copytree(root / sub, dest / sub, copy_function=copy_inside)
    if (root / layout.MANIFEST_FILE).is_file():
        shutil.copy2(root / layout.MANIFEST_FILE, dest / layout.MANIFEST_FILE)
    backend.copy_to(dest / layout.DB_FILE)


def _seal(dest: Path, persist_indexes: Callable[[Path], None]) -> None:
    db_file = layout.DB_FILE
    finalize_snapshot(dest / db_file)
    persist_indexes(dest)
    for stray in (dest / layout.LOCK_FILE, dest / f"{db_file}-wal", dest / f"{db_file}-shm"):
        stray.unlink(missing_ok=True)
    finalize_snapshot(dest / db_file)
    manifest = read_manifest(dest)
    assert manifest is not None
    manifest.files = {
        str(p.relative_to(dest)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(dest.rglob("*"))
        if p.is_file() and p.name != layout.MANIFEST_FILE
    }
    write_manifest(dest, manifest)


def verify_bundle(root: Path) -> dict[str, FileStamp]:
    """Refuse a bundle whose files do not match the hashes its manifest records.

    Every message names the file and what is wrong with it: missing, truncated or grown (size),
    damaged or replaced (sha256), outside the bundle, or made by a newer schema. Returns the
    stamp of every file it hashed, so the store opened next need not hash an index again.
    """
    manifest = read_manifest(root)
    if manifest is None:
        raise BundleCorrupt(f"{root} has no readable manifest.json")
    if manifest.schema_version > SCHEMA_VERSION:
        raise BundleCorrupt(
            f"{root} was written with schema version {manifest.schema_version}, newer than "
            f"this mlflow-rag ({SCHEMA_VERSION}); upgrade mlflow-rag"
        )
    if not manifest.files:
        raise BundleCorrupt(f"{root}/manifest.json records no file hashes; not a bundle")
    if layout.DB_FILE not in manifest.files:
        raise BundleCorrupt(f"{root}/manifest.json records no hash for {layout.DB_FILE}")
    stamps: dict[str, FileStamp] = {}
    try:
        layout.check_folders_confined(root, what="bundle")
    except UnsafePath as exc:
        raise BundleCorrupt(str(exc)) from None
    for relative, meta in manifest.files.items():
        try:
            path = confined(root, relative, what="manifest.json names the bundle file")
        except UnsafePath:
            raise BundleCorrupt(
                f"manifest.json names a file outside the bundle: {relative!r}") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int) \
                or not isinstance(meta.get("sha256"), str):
            raise BundleCorrupt(f"manifest.json has no size and sha256 for bundle file {relative}")
        if path.is_symlink() or not path.is_file():
            raise BundleCorrupt(f"bundle file {relative} is missing (or not a regular file)")
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size != meta["bytes"]:
                change = "truncated" if size < meta["bytes"] else "grown"
                raise BundleCorrupt(
                    f"bundle file {relative} is {size} bytes, the manifest records "
                    f"{meta['bytes']} ({change} or replaced)"
                )
            digest = sha256_fd(handle.fileno())
            if digest != meta["sha256"]:
                raise BundleCorrupt(
                    f"bundle file {relative} does not match its recorded sha256 (damaged or "
                    "replaced)"
                )
            stamps[relative] = FileStamp.of(handle.fileno(), digest)
    for name, entry in manifest.models.items():
        recorded = manifest.files.get(entry.index_file)
        if recorded is None or recorded["sha256"] != entry.sha256:
            raise BundleCorrupt(
                f"manifest.json is inconsistent: the index of model {name!r} ({entry.index_file}) "
                "is not the file its hash list records"
            )
    return stamps


def check_identity(
    manifest: Manifest | None, *, store_id: str | None, generation: int, db_path: Path
) -> None:
    """A verified bundle's manifest and database must come from the same store and moment."""
    assert manifest is not None  # verify_bundle read it
    if manifest.store_id != store_id:
        raise BundleCorrupt(
            f"{db_path} belongs to store {store_id} but manifest.json to store "
            f"{manifest.store_id}: files from two different stores"
        )
    if manifest.generation != generation:
        raise BundleCorrupt(
            f"{db_path} is at generation {generation} but manifest.json at "
            f"{manifest.generation}: files from two different snapshots"
        )


def _remove_partial_bundle(dest: Path, *, remove_folder: bool) -> None:
    """Remove what a failed snapshot wrote (dest was missing or empty when it started)."""
    if remove_folder:
        shutil.rmtree(dest, ignore_errors=True)
        return
    if dest.is_dir():
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _bundle_write_error(exc: BaseException, dest: Path) -> BaseException:
    """The error a failed snapshot raises: StorageError naming the file for disk failures."""
    if isinstance(exc, StorageError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        _source, target, why = exc.args[0][0]
        return StorageError(f"cannot write bundle file {target}: {why}", filename=str(target))
    if isinstance(exc, OSError):
        return storage_error(exc.filename or dest, exc)
    if is_storage_failure(exc):
        return StorageError(f"cannot write bundle file {dest / layout.DB_FILE}: {exc}",
                            filename=str(dest / layout.DB_FILE))
    return exc
