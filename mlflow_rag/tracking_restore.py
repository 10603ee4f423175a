"""``restore``: a writable store made from a bundle logged to MLflow, an ingest run's
(``runs:/RUN_ID/store``) or a logged model's (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/RUN_ID/retriever``), verified against its manifest before anything is written.

An MLflow adapter: MLflow is imported inside :func:`restore_store` only.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow_rag.errors import InvalidInput
from mlflow_rag.store import layout
from mlflow_rag.store.bundle import verify_bundle
from mlflow_rag.store.manifest import read_manifest, write_manifest
from mlflow_rag.tracking_bundles import BUNDLE_ARTIFACT_PATH, download_bundle
from mlflow_rag.tracking_session import TrackingError, check_tracking_uri, resolve_tracking_uri
from mlflow_rag.types import StoreStats

MODEL_BUNDLE_PATH = "artifacts/bundle"  # where a logged retriever model keeps its bundle
_RUNS_URI = re.compile(r"^runs:/(?P<run>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class RestoreReport:
    source: str
    target: str
    store_id: str
    generation: int
    files_verified: int
    stats: StoreStats


def restore_store(source: str, dest: str | Path, *, tracking_uri: str | None = None) -> RestoreReport:
    """Download the bundle ``source`` names, verify every file against its manifest, then make
    a writable store at ``dest`` (a new or empty folder, or ``postgresql://...``).

    A bundle that fails verification is refused naming the file, and ``dest`` is not created.
    """
    is_database = isinstance(dest, str) and dest.startswith("postgresql://")
    target: str | Path = dest if is_database else Path(dest)
    if isinstance(target, Path) and target.exists() and (
            not target.is_dir() or any(target.iterdir())):
        raise InvalidInput(f"restore destination {target} is not an empty folder")
    if not source.startswith(("runs:/", "models:/")):
        raise InvalidInput(f"restore source {source!r} is not runs:/RUN_ID/PATH, "
                           "models:/NAME@ALIAS or models:/NAME/VERSION")
    # The download holds all the bundle's text: keep it beside the destination (its disk and
    # permissions), never in a shared /tmp, and remove it whatever happens.
    parent = Path(target).parent if isinstance(target, Path) else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".mlflow-rag-restore-", dir=parent))
    try:
        bundle = _download(source, scratch, tracking_uri=tracking_uri)
        stamps = verify_bundle(bundle)
        if isinstance(target, Path):
            return _restore_folder(source, bundle, target, files_verified=len(stamps))
        return _restore_database(source, bundle, target, files_verified=len(stamps))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download(source: str, scratch: Path, *, tracking_uri: str | None) -> Path:
    """The bundle folder inside ``scratch`` that ``source`` names."""
    match = _RUNS_URI.match(source)
    if match and match["path"].strip("/") == BUNDLE_ARTIFACT_PATH:
        # an ingest run that changed nothing names the run holding its bundle: follow it
        return download_bundle(match["run"], scratch, tracking_uri=tracking_uri)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=source, dst_path=str(scratch), tracking_uri=uri))
    except MlflowException as exc:
        raise TrackingError(f"cannot download {source}: {exc.message}") from None
    except OSError as exc:
        raise TrackingError(f"cannot download {source}: {exc}") from None
    for candidate in (local, local / MODEL_BUNDLE_PATH):
        if (candidate / layout.MANIFEST_FILE).is_file():
            return candidate
    raise InvalidInput(
        f"{source} holds no store bundle (no {layout.MANIFEST_FILE}, nor {MODEL_BUNDLE_PATH}/ "
        "of a logged retriever; a model logged with --live serves its store and has none)")


def _restore_folder(source: str, bundle: Path, target: Path, *, files_verified: int) -> RestoreReport:
    from mlflow_rag.store.store import Store

    created = not target.exists()
    try:
        shutil.copytree(bundle, target, dirs_exist_ok=True)
        manifest = read_manifest(target)
        assert manifest is not None  # verify_bundle read it
        manifest.files = {}  # a live store's manifest lists no file hashes: it is no bundle
        write_manifest(target, manifest)
        with Store.open(target) as store:
            store.flush()
            return RestoreReport(source=source, target=store.location, store_id=store.store_id,
                                 generation=manifest.generation, files_verified=files_verified,
                                 stats=store.stats())
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in target.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def _restore_database(source: str, bundle: Path, target: str, *,
                      files_verified: int) -> RestoreReport:
    from mlflow_rag.store.copies import copy_store

    manifest = read_manifest(bundle)
    assert manifest is not None
    report = copy_store(bundle, target)
    return RestoreReport(source=source, target=report.target, store_id=manifest.store_id or "",
                         generation=manifest.generation, files_verified=files_verified,
                         stats=report.stats)
