"""MLflow runs for ingestions and searches, and the retriever as a logged (registered) model.

A thin adapter: the core (store, search, ingest) never imports MLflow; this module turns its
results into MLflow params, metrics, tags, dataset inputs, tables and artifacts. MLflow is
imported inside the functions, so importing this module is cheap.

Tags tie runs to stores (``mlflow_rag.*``, see the ``TAG_*`` constants): an ingest run names
the store's id, the generation it left the store at, and the generation (and run) of the
previous ingest run of the same store in the experiment, so a later run can tell what changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_rag.errors import InvalidInput, RagError
from mlflow_rag.search import redact_emails
from mlflow_rag.store.manifest import read_manifest
from mlflow_rag.store.store import Store
from mlflow_rag.types import Hit, IngestReport

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger("mlflow_rag.tracking")

# MLflow's own default tracking store (mlflow.store.tracking.DEFAULT_TRACKING_URI and
# DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH): `mlflow ui`, `mlflow run` and `mlflow models serve`
# started in the same directory read the same runs without anything exported.
DEFAULT_TRACKING_DB = "mlflow.db"
DEFAULT_FILE_STORE = "mlruns"
LEGACY_TRACKING_DB = "mlruns.db"  # mlflow-rag's default before it followed MLflow's
DEFAULT_EXPERIMENT = "mlflow-rag"  # every command's experiment when none is given
BUNDLE_ARTIFACT_PATH = "store"  # ingest runs keep the store bundle under this artifact path
HITS_TABLE = "hits.json"

TAG_RUN_TYPE = "mlflow_rag.run_type"  # "ingest", "search", "log_model"
TAG_STORE_ID = "mlflow_rag.store_id"
TAG_GENERATION = "mlflow_rag.generation"
TAG_PREVIOUS_GENERATION = "mlflow_rag.previous_generation"
TAG_PREVIOUS_RUN_ID = "mlflow_rag.previous_run_id"
TAG_STORE_PATH = "mlflow_rag.store_path"
TAG_EMBEDDER = "mlflow_rag.embedder"  # an ingest's embedder; a model's, comma-separated
TAG_DOCUMENTS = "mlflow_rag.documents"  # documents in the store (the logged bundle)
TAG_INGEST_RUN_ID = "mlflow_rag.ingest_run_id"  # the ingest run that left the store so
TAG_DESCRIPTION = "mlflow.note.content"  # MLflow's run description (shown in the UI)
# An ingest run's store content (documents, vectors, index files), generation aside; an
# ingest that leaves it as the previous run did logs no second copy of the bundle but names
# the run that holds it.
TAG_CONTENT_DIGEST = "mlflow_rag.content_digest"
TAG_BUNDLE_RUN_ID = "mlflow_rag.bundle_run_id"

# Sources larger than this are fingerprinted by their file listing (path, size, mtime)
# instead of re-reading their bytes: the run must not cost a second full read of a huge corpus.
MAX_HASHED_BYTES = 512 * 1024 * 1024
MAX_DATASET_DIGEST = 36  # MLflow's limit on a dataset digest


class TrackingError(RagError):
    """MLflow could not record something (server unreachable, bad URI, registry error...)."""


# --------------------------------------------------------------------------- tracking URI


def resolve_tracking_uri(uri: str | None) -> str:
    """``--tracking-uri`` wins, then ``MLFLOW_TRACKING_URI``, else MLflow's own default, as
    ``mlflow.get_tracking_uri()`` resolves it: ``sqlite:///mlflow.db`` in the working
    directory, or ``./mlruns`` where that already holds a file store's experiments.

    Computed here rather than asked of MLflow so that commands start without importing it;
    a test compares the two.
    """
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if _has_file_store_experiments(Path.cwd() / DEFAULT_FILE_STORE):
        return (Path.cwd() / DEFAULT_FILE_STORE).as_uri()
    return f"sqlite:///{Path.cwd() / DEFAULT_TRACKING_DB}"


def _has_file_store_experiments(root: Path) -> bool:
    """MLflow's test (``_has_existing_mlruns_data``): an experiment folder with meta.yaml."""
    try:
        with os.scandir(root) as entries:
            return any(entry.is_dir() and entry.name.isdigit()
                       and os.path.lexists(os.path.join(entry.path, "meta.yaml"))
                       for entry in entries)
    except OSError:
        return False


def legacy_tracking_note(uri: str | None) -> str | None:
    """A hint for users whose earlier runs are in ``mlruns.db`` (mlflow-rag's old default),
    now that runs go to MLflow's default store; None when it does not apply."""
    if uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    legacy = Path.cwd() / LEGACY_TRACKING_DB
    if not legacy.is_file() or (Path.cwd() / DEFAULT_TRACKING_DB).exists():
        return None
    return (f"note: runs now go to {resolve_tracking_uri(None)} (MLflow's default, which "
            f"`mlflow ui` reads); earlier runs are in {LEGACY_TRACKING_DB}: "
            f"`mlflow ui --backend-store-uri sqlite:///{LEGACY_TRACKING_DB}`")


def check_tracking_uri(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast with one clear line; MLflow's own client retries for minutes first."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as reply:
                if reply.status != 200:
                    raise OSError(f"/health answered HTTP {reply.status}")
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}); start it "
                "(e.g. `mlflow server --host 127.0.0.1 --port 5000`) or pass another "
                "--tracking-uri / MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise TrackingError(
                f"the directory {path.parent} of the tracking database in {uri} does not exist; "
                "create it or pass another --tracking-uri"
            )


_quiet = False


def quiet_mlflow() -> None:
    """For the CLI: keep MLflow's own chatter off the terminal (INFO and WARNING log lines,
    "Successfully registered model", progress bars of artifact downloads, Python warnings
    raised inside MLflow); its ERROR lines stay, and what fails reaches the user as our own
    one-line error. A user who sets ``MLFLOW_LOGGING_LEVEL`` gets MLflow's own output."""
    global _quiet
    if os.environ.get("MLFLOW_LOGGING_LEVEL"):
        return
    _quiet = True  # applied where MLflow is used (_mlflow_session)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")


class _Discard:
    """A stream that drops what it is given."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _silence_mlflow_prints() -> None:
    """MLflow prints registry messages ("Successfully registered model ...") to its own stream
    whatever the log level; point those prints at nothing. Its log records keep the handler
    made at import (the stream object it was given), so errors still show."""
    if not _quiet:
        return
    from mlflow.utils import logging_utils

    # eprint() looks the stream up at each call; internals, so a later MLflow without it
    # only prints its messages again.
    if hasattr(logging_utils, "MLFLOW_LOGGING_STREAM"):
        logging_utils.MLFLOW_LOGGING_STREAM = _Discard()  # type: ignore[assignment]
    # Not through MLFLOW_LOGGING_LEVEL: the variable would pass on to child processes.
    logger = logging.getLogger("mlflow")
    if logger.level < logging.ERROR:
        logger.setLevel(logging.ERROR)


@contextmanager
def _mlflow_session(tracking_uri: str | None, experiment: str | None) -> Iterator[Any]:
    """Point MLflow (process-wide, like ``mlflow.set_tracking_uri``) at the tracking URI and
    experiment; MLflow errors become TrackingError.

    Under ``mlflow run`` (``MLFLOW_RUN_ID`` is set) the project's run receives the logs, so
    the experiment is that run's: ``start_run`` refuses a different active experiment. With
    a run already active in this process (a caller's parent run), the experiment stays
    and :func:`_start_run` makes a child run.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    _silence_mlflow_prints()
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    try:
        mlflow.set_tracking_uri(uri)
        project_run = os.environ.get("MLFLOW_RUN_ID")
        if mlflow.active_run() is not None:
            pass
        elif project_run:
            run = mlflow.MlflowClient().get_run(project_run)
            if experiment:
                log.info("logging to the run of `mlflow run` (experiment %s), not to %r",
                         run.info.experiment_id, experiment)
            mlflow.set_experiment(experiment_id=run.info.experiment_id)
        elif experiment:
            mlflow.set_experiment(experiment)
        elif os.environ.get("MLFLOW_EXPERIMENT_ID"):
            mlflow.set_experiment(experiment_id=os.environ["MLFLOW_EXPERIMENT_ID"])
        else:
            # Explicitly, every time: a process may have pointed MLflow at another experiment.
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)
        yield mlflow
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {uri}: {exc.message}") from None


def _start_run(mlflow: Any, run_name: str | None) -> Any:
    """A run of its own, nested when the caller has a run active (an evaluation's parent)."""
    return mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None)


def log_params_once(mlflow: Any, params: Mapping[str, str]) -> None:
    """Log params, tolerating the ones already on the run.

    Under ``mlflow run`` the project's -P values are params of the same run, and MLflow
    refuses to change a param: an equal value is skipped, a different one is kept under
    ``mlflow_rag.<name>`` instead of failing the whole run at its end.
    """
    run = mlflow.active_run()
    existing = mlflow.MlflowClient().get_run(run.info.run_id).data.params if run else {}
    fresh: dict[str, str] = {}
    for key, value in params.items():
        if key not in existing:
            fresh[key] = value
        elif existing[key] != value:
            fresh[f"mlflow_rag.{key}"] = value
    if fresh:
        mlflow.log_params(fresh)


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested settings -> ``prefix.key`` params (MLflow params are flat strings)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if isinstance(value, (list, tuple)):
        return {prefix: json.dumps(list(value), default=str)}
    return {prefix: "" if value is None else str(value)}


# --------------------------------------------------------------------------- ingest runs


def source_table(sources: Sequence[str]) -> list[dict[str, Any]]:
    """One row per source: kind, size and a digest (sha256 of content, or of the listing)."""
    rows = []
    for source in sources:
        row: dict[str, Any] = {"source": source, "kind": "url", "files": 0, "bytes": 0,
                               "sha256": "", "digest_of": "url"}
        path = Path(source)
        if "://" not in source and path.exists():
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            sizes = [p.stat().st_size for p in files]
            row.update(kind="file" if path.is_file() else "directory", files=len(files),
                       bytes=sum(sizes))
            digest = hashlib.sha256()
            by_content = sum(sizes) <= MAX_HASHED_BYTES
            for file in files:
                relative = file.name if file == path else str(file.relative_to(path))
                digest.update(relative.encode("utf-8") + b"\0")
                if by_content:
                    with open(file, "rb") as handle:
                        while block := handle.read(1 << 20):
                            digest.update(block)
                else:
                    stat = file.stat()
                    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
                digest.update(b"\0")
            row.update(sha256=digest.hexdigest(), digest_of="content" if by_content else "listing")
        else:
            row["sha256"] = hashlib.sha256(source.encode("utf-8")).hexdigest()
        rows.append(row)
    return rows


def ingest_params(report: IngestReport) -> dict[str, str]:
    params = {
        "source_digest": report.source_digest,
        "sources": json.dumps(list(report.sources)),
        "loader": report.loader,
        "embedder": report.embedder,
        "embedder_version": report.embedder_version or "",
        "dimension": str(report.dimension),
    }
    chunker = dict(report.chunker)
    params["chunker"] = str(chunker.pop("name", chunker.pop("chunker", "")))
    params.update(_flatten("chunker", chunker))
    index = dict(report.index)
    params["index_type"] = str(index.pop("kind", index.pop("type", "")))
    index_params = index.pop("params", {})
    params.update(_flatten("index", {**index, **dict(index_params or {})}))
    return params


def ingest_metrics(report: IngestReport, *, store_bytes: int | None = None) -> dict[str, float]:
    metrics: dict[str, float] = {
        "documents_new": report.documents_new,
        "documents_updated": report.documents_updated,
        "documents_unchanged": report.documents_unchanged,
        "documents_failed": report.documents_failed,
        "files_skipped": sum(report.skipped.values()),  # of types no loader reads
        "chunks": report.chunks,
        "vectors_embedded": report.vectors_embedded,
        "vectors_cached": report.vectors_cached,
        "tokens": report.tokens,
        "cost_usd": report.cost_usd,
        "chunks_per_second": report.chunks_per_second,
        "seconds_total": report.total_seconds,
        "store_bytes": store_bytes if store_bytes is not None else report.store_bytes,
    }
    for stage, seconds in report.seconds.items():
        metrics[f"seconds_{stage}"] = float(seconds)
    return {k: float(v) for k, v in metrics.items()}


def previous_ingest_run(client: Any, experiment_id: str, store_id: str,
                        *, exclude_run_id: str | None = None) -> Any | None:
    """The latest ingest run of this store in the experiment (other than ``exclude_run_id``)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_STORE_ID}` = '{store_id}' and tags.`{TAG_RUN_TYPE}` = 'ingest'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return next((r for r in runs if r.info.run_id != exclude_run_id), None)


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


def _changed_nothing(report: IngestReport) -> bool:
    return (report.documents_new == report.documents_updated == 0
            and report.vectors_embedded == report.vectors_cached == 0)


def ingest_summary(report: IngestReport) -> str:
    """``6 new, 1 updated, 0 unchanged`` (and ``, 2 failed`` when some failed)."""
    text = (f"{report.documents_new} new, {report.documents_updated} updated, "
            f"{report.documents_unchanged} unchanged")
    return text + (f", {report.documents_failed} failed" if report.documents_failed else "")


def _ingest_description(report: IngestReport, store: Store, *, generation: int, documents: int,
                        chunks: int, run_id: str, previous: Any | None,
                        bundle_run: str | None = None) -> str:
    sources = ", ".join(f"`{s}`" for s in report.sources[:3])
    if len(report.sources) > 3:
        sources += f" and {len(report.sources) - 3} more"
    chunker = dict(report.chunker).get("name", "")
    return (
        f"Ingest of {sources} into the store `{Path(store.root).name}` at "
        f"`{Path(store.root).resolve()}` (store id `{store.store_id}`, generation {generation}): "
        f"{ingest_summary(report)} documents; the store holds {documents} documents and "
        f"{chunks} chunks.\n\n"
        f"Embedder `{report.embedder}` ({report.embedder_version or 'no version'}, dimension "
        f"{report.dimension}), chunker `{chunker}`, index `{dict(report.index).get('kind', '')}`."
        + (f"\n\nNothing changed since ingest run `{bundle_run}`, which holds this state's "
           f"bundle: `runs:/{bundle_run}/{BUNDLE_ARTIFACT_PATH}` (not copied again). "
           if bundle_run else
           f"\n\nThe store bundle: `runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}`. ")
        + (f"Previous ingest run of this store: `{previous.info.run_id}`."
           if previous is not None else "No earlier ingest run of this store in this experiment.")
    )


def log_ingest_run(
    report: IngestReport, *, store: Store, experiment: str | None, tracking_uri: str | None,
    run_name: str | None = None, tags: Mapping[str, str] | None = None,
) -> str:
    """Record an ingestion as an MLflow run; returns the run id.

    Params: source digest, loader, chunker (+ settings), embedder (name, version, dimension),
    index (type + params). Metrics: document/chunk/vector counts, tokens, cost, seconds per
    stage, chunks per second, store bytes. Input: the sources as a dataset with their digests.
    Artifacts: a consistent snapshot of the store (``store/``, with ``manifest.json`` and file
    hashes) and the report itself (``ingest_report.json``). An ingest that changed nothing,
    leaving the store as the previous ingest run of it in the experiment recorded
    (:func:`content_digest`), copies no second bundle: its tag ``mlflow_rag.bundle_run_id``
    names the run that holds it (:func:`download_bundle` follows it).
    """
    import pandas as pd

    with _mlflow_session(tracking_uri, experiment) as mlflow, scratch_dir(
        store.root, "ingest_run"
    ) as tmp:
        client = mlflow.MlflowClient()
        stats = store.stats()
        digest = content_digest(store)
        if run_name is None and not os.environ.get("MLFLOW_RUN_ID"):  # not `mlflow run`'s run
            run_name = f"ingest {Path(store.root).name}: {ingest_summary(report)}"
        with _start_run(mlflow, run_name) as run:
            previous = previous_ingest_run(client, run.info.experiment_id, store.store_id,
                                           exclude_run_id=run.info.run_id)
            bundle_run = None
            if (digest is not None and previous is not None and _changed_nothing(report)
                    and previous.data.tags.get(TAG_CONTENT_DIGEST) == digest):
                bundle_run = previous.data.tags.get(TAG_BUNDLE_RUN_ID) or previous.info.run_id
            bundle = None
            if bundle_run is None:
                # Snapshot before tagging: the tags must name the generation the bundle holds.
                bundle = store.snapshot(Path(tmp) / BUNDLE_ARTIFACT_PATH)
                manifest = read_manifest(bundle)
                generation = manifest.generation if manifest else report.store_generation
                bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
            else:
                generation, bundle_bytes = stats.generation, 0
            run_tags = {
                TAG_RUN_TYPE: "ingest",
                TAG_STORE_ID: store.store_id,
                TAG_EMBEDDER: report.embedder,
                TAG_DOCUMENTS: str(stats.documents),
                TAG_GENERATION: str(generation),
                # 0 is the empty store: no earlier ingest run of this store was logged here.
                TAG_PREVIOUS_GENERATION: previous.data.tags.get(TAG_GENERATION, "0")
                if previous else "0",
                TAG_STORE_PATH: str(Path(store.root).resolve()),
                **(dict(tags) if tags else {}),
            }
            if previous is not None:
                run_tags[TAG_PREVIOUS_RUN_ID] = previous.info.run_id
            if digest is not None:
                run_tags[TAG_CONTENT_DIGEST] = digest
            if bundle_run is not None:
                run_tags[TAG_BUNDLE_RUN_ID] = bundle_run
            if TAG_DESCRIPTION not in run.data.tags:  # a description someone wrote stays
                run_tags[TAG_DESCRIPTION] = _ingest_description(
                    report, store, generation=generation, documents=stats.documents,
                    chunks=stats.chunks, run_id=run.info.run_id, previous=previous,
                    bundle_run=bundle_run)
            mlflow.set_tags(run_tags)
            log_params_once(mlflow, ingest_params(report))
            mlflow.log_metrics(ingest_metrics(report, store_bytes=report.store_bytes or bundle_bytes))
            sources = pd.DataFrame(source_table(report.sources),
                                   columns=["source", "kind", "files", "bytes", "sha256",
                                            "digest_of"])
            with warnings.catch_warnings():
                # MLflow hints that integer columns cannot hold missing values: ours never do.
                warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
                mlflow.log_input(_sources_dataset(mlflow, sources, report), context="ingest")
            if report.failures:
                mlflow.log_table(
                    pd.DataFrame([dataclasses.asdict(f) for f in report.failures]),
                    artifact_file="failures.json",
                )
            mlflow.log_text(json.dumps(dataclasses.asdict(report), indent=2, default=str),
                            "ingest_report.json")
            if bundle is not None:
                mlflow.log_artifacts(str(bundle), artifact_path=BUNDLE_ARTIFACT_PATH)
            return str(run.info.run_id)


def _sources_dataset(mlflow: Any, table: Any, report: IngestReport) -> Any:
    """The sources table as an MLflow dataset with the ingest's digest. One path or URL is
    also its dataset source; several sources (or one MLflow cannot resolve) only the table."""
    import warnings

    from mlflow.exceptions import MlflowException

    source: str | None = None
    if len(report.sources) == 1:
        single = report.sources[0]
        source = single if "://" in single else str(Path(single).resolve())
    digest = report.source_digest[:MAX_DATASET_DIGEST] or None
    with warnings.catch_warnings():
        # A local path matches two registered source types; MLflow picks one and warns.
        warnings.simplefilter("ignore", UserWarning)
        try:
            return mlflow.data.from_pandas(table, source=source, name="sources", digest=digest)
        except MlflowException:
            return mlflow.data.from_pandas(table, name="sources", digest=digest)


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


# --------------------------------------------------------------------------- search runs


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy for two numbers."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def search_hits_table(
    queries: Sequence[str], hits_per_query: Sequence[Sequence[Hit]], *,
    redact: Callable[[str], str] | None = redact_emails,
) -> list[dict[str, Any]]:
    rows = []
    for i, (query, hits) in enumerate(zip(queries, hits_per_query, strict=True)):
        shown = redact(query) if redact else query
        if not hits:  # a query without hits still appears in the table
            rows.append({"query_index": i, "query": shown, "rank": None, "score": None,
                         "chunk_id": None, "document_id": None, "chunk_type": None,
                         "source_path": None, "text": None})
        for hit in hits:
            rows.append({"query_index": i, "query": shown, "rank": hit.rank, "score": hit.score,
                         "chunk_id": hit.chunk_id, "document_id": hit.document_id,
                         "chunk_type": hit.chunk_type, "source_path": hit.source_path,
                         "text": hit.text})
    return rows


def log_search_run(
    queries: Sequence[str], hits_per_query: Sequence[Sequence[Hit]], *,
    latencies_ms: Sequence[float], params: Mapping[str, Any], experiment: str | None,
    tracking_uri: str | None, run_name: str | None = None,
    tags: Mapping[str, str] | None = None, redact: Callable[[str], str] | None = redact_emails,
) -> str:
    """Record a retrieval run: the queries and hits as a table (``hits.json``), latency
    metrics (p50/p95/mean ms) and params (mode, k, filters, embedder...). Returns the run id.

    Queries pass through ``redact`` (e-mail addresses by default) before they are logged.
    """
    import pandas as pd

    if len(queries) != len(hits_per_query) or len(queries) != len(latencies_ms):
        raise ValueError(
            f"{len(queries)} queries, {len(hits_per_query)} hit lists and {len(latencies_ms)} "
            "latencies: give one of each per query"
        )
    if not queries:
        raise ValueError("log_search_run needs at least one query")
    with _mlflow_session(tracking_uri, experiment) as mlflow, _start_run(mlflow, run_name) as run:
        mlflow.set_tags({TAG_RUN_TYPE: "search", **(dict(tags) if tags else {})})
        flat: dict[str, str] = {}
        for key, value in params.items():
            if isinstance(value, Mapping):
                flat[key] = json.dumps(value, sort_keys=True, default=str)
            else:
                flat[key] = "" if value is None else str(value)
        log_params_once(mlflow, flat)
        latencies = [float(x) for x in latencies_ms]
        mlflow.log_metrics({
            "latency_p50_ms": _percentile(latencies, 0.50),
            "latency_p95_ms": _percentile(latencies, 0.95),
            "latency_mean_ms": statistics.fmean(latencies),
            "queries": float(len(queries)),
            "hits_mean": statistics.fmean(len(h) for h in hits_per_query),
        })
        table = pd.DataFrame(
            search_hits_table(queries, hits_per_query, redact=redact),
            columns=["query_index", "query", "rank", "score", "chunk_id", "document_id",
                     "chunk_type", "source_path", "text"],
        )
        mlflow.log_table(table, artifact_file=HITS_TABLE)
        return str(run.info.run_id)


# --------------------------------------------------------------------------- the model


# What the served model imports: every bundle needs the base; each embedder adds what the
# embedder registry lists for it. Test tools are never here (pytest is a dev extra, and
# nothing at run time imports it).
BASE_REQUIREMENTS = ("mlflow", "numpy", "pandas", "faiss-cpu", "scikit-learn", "scipy", "click")


def requirement_names(embedders: Sequence[str | None]) -> list[str]:
    """The distributions the served model needs for these embedders (a TF-IDF or BM25-only
    bundle needs no torch, no sentence-transformers; imported vectors need no embedder)."""
    from mlflow_rag.embed.registry import find_embedder_kind

    names = list(BASE_REQUIREMENTS)
    for embedder in embedders:
        kind = find_embedder_kind(embedder)
        extra = kind.requirements if kind is not None else ()
        names += [name for name in extra if name not in names]
    return names


def public_version(version: str) -> str:
    """A version a public index serves: without the local label (``2.13.0+cpu`` -> ``2.13.0``).

    ``torch==2.13.0`` still installs the CPU build where the installer is pointed at it
    (docs/serving.md), and a local label pins a build no public index has under that name.
    """
    return version.split("+", 1)[0]


def _requirements(embedders: Sequence[str | None]) -> list[str]:
    """pip requirements of the served model, pinned to the versions that run here."""
    out = []
    for name in requirement_names(embedders):
        try:
            out.append(f"{name}=={public_version(importlib_metadata.version(name))}")
        except importlib_metadata.PackageNotFoundError:
            out.append(name)
    return out


def _copy_package(destination: Path) -> Path:
    """The ``mlflow_rag`` package as model code (``code_paths``), so the model carries the
    code that reads its bundle; caches and build leftovers are not part of it."""
    source = Path(__file__).resolve().parent
    target = destination / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
    return target


def _examples(bundle: Path, *, embedder: str | None) -> tuple[Any, Any]:
    """An input example drawn from the bundle's own text and the real output for it."""
    import pandas as pd

    from mlflow_rag.serving import PARAM_DEFAULTS, Retriever, hits_frame

    retriever = Retriever(bundle, embedder=embedder)
    try:
        query = "example query"
        documents = retriever.store.find_documents(limit=1)
        if documents:
            chunks = retriever.store.get_document(documents[0].id).chunks
            if chunks:
                query = " ".join(chunks[0].text.split()[:6]) or query
        example = pd.DataFrame({"query": [query]})
        output = None
        for mode in ("hybrid", "bm25"):
            try:
                output = retriever.predict(example, {**PARAM_DEFAULTS, "mode": mode, "k": 2})
            except RagError:
                continue
            if len(output):
                break
        if output is None or not len(output):
            sample = Hit(rank=1, score=1.0, chunk_id="chunk", document_id="document",
                         chunk_type="text", chunk_index=0, text="text", source_path="path",
                         document_metadata={}, chunk_metadata={})
            output = hits_frame([[sample]])
        output["chunk_type"] = output["chunk_type"].fillna("")
        return example, output
    finally:
        retriever.close()


def ingest_run_of(client: Any, store_id: str, generation: int) -> tuple[str, str] | None:
    """The latest ingest run, in any experiment, that left this store at this generation, and
    the run holding that state's bundle (itself, unless it changed nothing), or None."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiments,
        filter_string=(f"tags.`{TAG_STORE_ID}` = '{store_id}' and tags.`{TAG_RUN_TYPE}` = "
                       f"'ingest' and tags.`{TAG_GENERATION}` = '{generation}'"),
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not runs:
        return None
    run_id = str(runs[0].info.run_id)
    return run_id, str(runs[0].data.tags.get(TAG_BUNDLE_RUN_ID) or run_id)


def _model_description(store_name: str, *, store_id: str, generation: int,
                       models: Sequence[Any], documents: int,
                       ingest_run: tuple[str, str] | None) -> str:
    spaces = ", ".join(f"`{m.name}` ({m.vector_count} vectors, dimension {m.dimension}, "
                       f"{m.index_type} index)" for m in models) or "none (BM25 only)"
    source = (f"the state ingest run `{ingest_run[0]}` left (its bundle: "
              f"`runs:/{ingest_run[1]}/{BUNDLE_ARTIFACT_PATH}`)" if ingest_run
              else "a state no logged ingest run recorded")
    return (f"mlflow-rag retriever over the store `{store_name}` (store id `{store_id}`, "
            f"generation {generation}): {documents} documents; embedding models: {spaces}. "
            f"The bundle is {source}. Request params: `k`, `mode` (dense, bm25, hybrid), "
            f"`filters`.")


def _describe_version(client: Any, name: str, version: str, *, description: str,
                      tags: Mapping[str, str]) -> None:
    """A registered model version's description and tags; the registered model gets a
    description too when it has none."""
    from mlflow.exceptions import MlflowException

    try:
        client.update_model_version(name, version, description=description)
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        if not client.get_registered_model(name).description:
            client.update_registered_model(
                name, description="mlflow-rag retrievers (pyfunc); each version's description "
                                  "names its store, embedders and ingest run.")
    except MlflowException as exc:
        raise TrackingError(f"cannot describe {name} version {version}: {exc.message}") from None


def log_model(
    store_path: str | Path, *, name: str = "retriever", register: str | None = None,
    alias: str | None = None, experiment: str | None = None, tracking_uri: str | None = None,
    model_config: Mapping[str, Any] | None = None, run_name: str | None = None,
) -> ModelInfo:
    """Log the store as a pyfunc retriever (models-from-code + the bundle as an artifact).

    ``register`` names a registered model to add a version to; ``alias`` (needs ``register``)
    points e.g. ``champion`` at that version, so ``models:/NAME@champion`` serves it.
    ``model_config``: see :class:`mlflow_rag.pyfunc_model.RetrieverModel`.
    """
    if alias and not register:
        raise TrackingError("--alias needs --register NAME (aliases belong to registered models)")
    check_tracking_uri(resolve_tracking_uri(tracking_uri))  # before snapshotting a big store
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, DataType, Schema

    from mlflow_rag.serving import DEFAULT_MODEL_CONFIG, PARAM_DEFAULTS, QUERY_COLUMN

    unknown = sorted(set(model_config or {}) - set(DEFAULT_MODEL_CONFIG))
    if unknown:
        raise InvalidInput(
            f"unknown model_config keys {unknown}; choose from {sorted(DEFAULT_MODEL_CONFIG)}"
        )
    config = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
    with Store.open(store_path, read_only=True) as store, scratch_dir(
        store.root, "log_model"
    ) as tmp:
        bundle = store.snapshot(Path(tmp) / "bundle")
        manifest = read_manifest(bundle)
        models = store.models()
        documents = store.stats().documents
        example, output = _examples(bundle, embedder=config["embedder"] or None)
        signature = infer_signature(example, output, params=PARAM_DEFAULTS)
        # The query column is declared optional so that a request without it reaches the
        # model, whose error names the problem (MLflow's own error quotes the request data).
        signature.inputs = Schema([ColSpec(DataType.string, QUERY_COLUMN, required=False)])
        code = _copy_package(Path(tmp) / "code")
        store_name = Path(store_path).resolve().name
        if run_name is None and not os.environ.get("MLFLOW_RUN_ID"):  # not `mlflow run`'s run
            run_name = f"log-model {store_name}" + (f" -> {register}" if register else "")
        with _mlflow_session(tracking_uri, experiment) as mlflow, _start_run(
            mlflow, run_name
        ) as run:
            from mlflow.exceptions import MlflowException

            generation = manifest.generation if manifest else -1
            embedders = ",".join(m.name for m in models)
            ingest_run = ingest_run_of(mlflow.MlflowClient(), store.store_id, generation)
            about = {
                TAG_STORE_ID: store.store_id,
                TAG_GENERATION: str(generation),
                TAG_EMBEDDER: embedders,
                TAG_DOCUMENTS: str(documents),
                **({TAG_INGEST_RUN_ID: ingest_run[0]} if ingest_run else {}),
            }
            description = _model_description(
                store_name, store_id=store.store_id, generation=generation, models=models,
                documents=documents, ingest_run=ingest_run)
            run_tags = {TAG_RUN_TYPE: "log_model", **about,
                        TAG_STORE_PATH: str(Path(store_path).resolve())}
            if TAG_DESCRIPTION not in run.data.tags:
                run_tags[TAG_DESCRIPTION] = description
            mlflow.set_tags(run_tags)
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(Path(__file__).resolve().parent / "pyfunc_model.py"),
                artifacts={"bundle": str(bundle)},
                code_paths=[str(code)],
                signature=signature,
                input_example=example,
                pip_requirements=_requirements([m.embedder for m in models]),
                model_config=config,
                registered_model_name=register,
                tags=about,
                metadata={
                    "mlflow_rag": {
                        "store_id": store.store_id,
                        "generation": generation,
                        "models": {m.name: {"embedder": m.embedder, "dimension": m.dimension,
                                            "index_type": m.index_type} for m in models},
                    }
                },
            )
            if register:
                _describe_version(mlflow.MlflowClient(), register,
                                  str(info.registered_model_version), description=description,
                                  tags={**about, "mlflow_rag.log_model_run_id": run.info.run_id})
            if alias and register:
                version = info.registered_model_version
                try:
                    mlflow.MlflowClient().set_registered_model_alias(register, alias, str(version))
                except MlflowException as exc:
                    raise TrackingError(
                        f"cannot set alias {alias!r} on {register} version {version}: {exc.message}"
                    ) from None
            log.info("logged %s in run %s", info.model_uri, run.info.run_id)
            return info
