"""Store bundles as run artifacts: the folder a bundle is written to while it is logged, the
digest that tells whether an ingest changed the store, and the download of a logged bundle.

An MLflow adapter: MLflow is imported inside :func:`download_bundle` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_rag.store.manifest import read_manifest
from mlflow_rag.tracking_session import (
    TAG_BUNDLE_RUN_ID,
    TrackingError,
    check_tracking_uri,
    resolve_tracking_uri,
)

if TYPE_CHECKING:
    from mlflow_rag.store.store import Store

log = logging.getLogger("mlflow_rag.tracking")

BUNDLE_ARTIFACT_PATH = "store"  # ingest runs keep the store bundle under this artifact path


def content_digest(store: Store) -> str | None:
    """A digest of what the store holds: its counts and, per model, the embedder version and
    the index file's sha256 (an index holds the vector ids, which are never reused, so any
    document written or deleted changes it). None when the manifest on disk is not the
    store's current state (a writer has not flushed) or there is no index to vouch for it."""
    manifest = read_manifest(store.root)
    stats = store.stats()
    if manifest is None or manifest.generation != stats.generation or not manifest.models:
        return None
    state = {
        "store_id": store.store_id, "schema_version": manifest.schema_version,
        "documents": stats.documents, "chunks": stats.chunks, "embeddings": stats.embeddings,
        "source_types": dict(stats.source_types),
        "models": {name: [entry.embedder, entry.model_version, entry.index_type,
                          entry.index_params, entry.vector_count, entry.max_vector_id,
                          entry.sha256]
                   for name, entry in sorted(manifest.models.items())},
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()

def download_bundle(run_id: str, destination: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Download the store bundle an ingest run logged, or that of the run it names when it
    changed nothing (tag ``mlflow_rag.bundle_run_id``); returns the bundle directory.

    Open it with ``Store.open(path, immutable=True, verify_files=True)``.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    dest = Path(destination)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tags = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
        run_id = tags.get(TAG_BUNDLE_RUN_ID) or run_id
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=BUNDLE_ARTIFACT_PATH, dst_path=str(dest),
            tracking_uri=uri,
        )
    except MlflowException as exc:
        raise TrackingError(f"cannot download the bundle of run {run_id}: {exc.message}") from None
    return Path(local)


# --------------------------------------------------------------------------- scratch folders

SCRATCH_DIR = ".scratch"  # inside the store: the bundles being logged, while they are


@contextmanager
def scratch_dir(store_root: str | Path, kind: str) -> Iterator[str]:
    """A private folder for a bundle being logged, removed afterwards; inside the store.

    A bundle is a full copy of the store, all its text. In ``$TMPDIR`` a killed run left it
    there for good, often in a shared ``/tmp`` that nothing of this project looks at again.
    Inside ``STORE/.scratch/`` the copy stays under the store's own permissions and disk, and
    each run first removes the folders of runs on this host whose process is gone, so a
    killed ``log-model`` or tracked ingest leaves its copy only until the next one. A store
    folder that cannot be written (read-only media) falls back to ``$TMPDIR``, cleaned the
    same way.
    """
    import socket

    if "-" in kind:
        raise ValueError(f"scratch kind {kind!r} must not contain '-' (the name's separator)")
    host = socket.gethostname().replace("-", "_") or "host"
    prefix = f"mlflow-rag-{kind}-{host}-{os.getpid()}-"
    parent = Path(store_root) / SCRATCH_DIR
    try:
        parent.mkdir(mode=0o700, exist_ok=True)
        _remove_stale_scratch(parent, host)
        folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
    except OSError:
        parent = Path(tempfile.gettempdir())
        _remove_stale_scratch(parent, host)
        folder = tempfile.mkdtemp(prefix=prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if parent.name == SCRATCH_DIR:
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty: another run may be using it


def _remove_stale_scratch(parent: Path, host: str) -> None:
    """Remove scratch folders of runs on this host whose process no longer exists."""
    for folder in parent.glob(f"mlflow-rag-*-{host}-*-*"):
        try:
            pid = int(folder.name.removeprefix("mlflow-rag-").split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _process_alive(pid):
            continue
        log.info("removing %s, left by a run that was killed (pid %d)", folder, pid)
        shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def runs_holding_store(
    store_id: str, since: str, *, tracking_uri: str | None = None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The runs of the store ``store_id`` whose artifacts may hold what it held at or after
    ``since`` (an ISO-8601 time: an erased document's import): every run tagged with the
    store that had not ended by then, and the registered model versions made from them.
    Artifacts are immutable: these are what to delete to erase it from MLflow too."""
    from datetime import datetime

    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from mlflow_rag.tracking_session import TAG_RUN_TYPE, TAG_STORE_ID

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    since_ms = int(datetime.fromisoformat(since).timestamp() * 1000)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
        runs = []
        if experiments:
            found = client.search_runs(experiments, f"tags.`{TAG_STORE_ID}` = '{store_id}'",
                                       run_view_type=ViewType.ALL, max_results=50000)
            runs = [r for r in found if r.info.end_time is None or r.info.end_time >= since_ms]
        versions = []
        for run in runs:
            for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
                versions.append({"name": version.name, "version": str(version.version),
                                 "run_id": run.info.run_id})
    except Exception as exc:  # MLflow raises many types for an unreachable or broken store
        raise TrackingError(f"could not list the runs of store {store_id} in {uri}: {exc}") from exc
    listed = [{"run_id": r.info.run_id, "experiment_id": r.info.experiment_id,
               "run_type": r.data.tags.get(TAG_RUN_TYPE, ""), "run_name": r.info.run_name or ""}
              for r in runs]
    return listed, versions
