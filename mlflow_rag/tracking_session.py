"""Where MLflow runs go, and how one starts: the tracking URI, the experiment, the tags.

The base of the MLflow adapters (``tracking``, ``tracking_bundles``, ``tracking_model``,
``eval_tracking``): the tracking URI is resolved and checked without importing MLflow (so a
command fails fast and ``--help`` stays cheap); :func:`mlflow_session` points MLflow at it and
turns MLflow's errors into :class:`TrackingError`. MLflow is imported inside the functions.

Tags tie runs to stores (``mlflow_rag.*``, see the ``TAG_*`` constants): an ingest run names
the store's id, the generation it left the store at, and the generation (and run) of the
previous ingest run of the same store in the experiment, so a later run can tell what changed.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow_rag.errors import RagError

log = logging.getLogger("mlflow_rag.tracking")

# MLflow's own default tracking store (mlflow.store.tracking.DEFAULT_TRACKING_URI and
# DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH): `mlflow ui`, `mlflow run` and `mlflow models serve`
# started in the same directory read the same runs without anything exported.
DEFAULT_TRACKING_DB = "mlflow.db"
DEFAULT_FILE_STORE = "mlruns"
LEGACY_TRACKING_DB = "mlruns.db"  # mlflow-rag's default before it followed MLflow's
DEFAULT_EXPERIMENT = "mlflow-rag"  # every command's experiment when none is given

TAG_RUN_TYPE = "mlflow_rag.run_type"  # "ingest", "search", "log_model"
TAG_STORE_ID = "mlflow_rag.store_id"
TAG_GENERATION = "mlflow_rag.generation"
TAG_PREVIOUS_GENERATION = "mlflow_rag.previous_generation"
TAG_PREVIOUS_RUN_ID = "mlflow_rag.previous_run_id"
TAG_STORE_PATH = "mlflow_rag.store_path"
TAG_EMBEDDER = "mlflow_rag.embedder"  # an ingest's embedder; a model's, comma-separated
TAG_DOCUMENTS = "mlflow_rag.documents"  # documents in the store (the logged bundle)
TAG_INGEST_RUN_ID = "mlflow_rag.ingest_run_id"  # the ingest run that left the store so
# An ingest run's id in the store it wrote (document versions name it): lineage finds the
# MLflow run by it.
TAG_INGEST_ID = "mlflow_rag.ingest_id"
TAG_DESCRIPTION = "mlflow.note.content"  # MLflow's run description (shown in the UI)
# An ingest run's store content (documents, vectors, index files), generation aside; an
# ingest that leaves it as the previous run did logs no second copy of the bundle but names
# the run that holds it.
TAG_CONTENT_DIGEST = "mlflow_rag.content_digest"
TAG_BUNDLE_RUN_ID = "mlflow_rag.bundle_run_id"


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
    _quiet = True  # applied where MLflow is used (mlflow_session)
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
def mlflow_session(tracking_uri: str | None, experiment: str | None) -> Iterator[Any]:
    """Point MLflow (process-wide, like ``mlflow.set_tracking_uri``) at the tracking URI and
    experiment; MLflow errors become TrackingError.

    Under ``mlflow run`` (``MLFLOW_RUN_ID`` is set) the project's run receives the logs, so
    the experiment is that run's: ``start_run`` refuses a different active experiment. With
    a run already active in this process (a caller's parent run), the experiment stays
    and :func:`start_run` makes a child run.
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


def start_run(mlflow: Any, run_name: str | None) -> Any:
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
