"""The ``mlflow-rag`` group and what its commands share: named errors as one line, choices
read from the registries that own them, the ``--store`` and tracking options, JSON output."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from mlflow_rag import __version__
from mlflow_rag.errors import RagError


class ErrorsAsOneLine(click.Group):
    """Turns our named errors into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RagError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


class Names(click.Choice):
    """The names a registry owns (``"package.module.ATTRIBUTE"``), read when the option is
    used or its help shown: never a second copy in the CLI, and ``mlflow-rag --help`` still
    imports none of the layers below (numpy, FAISS)."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._names: tuple[str, ...] | None = None
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        if self._names is None:
            module, _, attribute = self._source.rpartition(".")
            self._names = tuple(getattr(importlib.import_module(module), attribute))
        return self._names

    @choices.setter
    def choices(self, value: Iterable[str]) -> None:  # click.Choice.__init__ sets ()
        self._names = tuple(value) or None


class HelpFrom(click.Option):
    """An option whose help a registry writes (``help_from``) when help is shown."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._help_from = help_from

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = self._help_from()
        return super().get_help_record(ctx)


def embedders_help_text() -> str:
    from mlflow_rag.embed.registry import embedders_help

    return f"{embedders_help()}."


class StoreLocation(click.ParamType):
    """A store's folder (a Path), or a database location kept as text (a URL is no path:
    ``Path`` would fold its ``//``)."""

    name = "store"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Path | str:
        text = str(value)
        return text if text.startswith(("postgresql://", "postgres://")) else Path(text)


STORE_LOCATION = StoreLocation()


def store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store", "store_path", required=True, type=STORE_LOCATION,
        help="Store directory (metadata.db, index/, manifest.json), or a PostgreSQL store: "
             "postgresql://[USER@]HOST[:PORT]/DB[?schema=NAME] (password from PGPASSWORD or "
             "~/.pgpass).",
    )(func)


def query_log_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--query-log", "query_log", default=None, metavar="FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Read served queries, answers and feedback from this query-log file (a served "
             "model's MLFLOW_RAG_QUERY_LOG) instead of the store's own log [default: the "
             "store's].",
    )(func)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


@click.group(cls=ErrorsAsOneLine, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlflow-rag")
@click.option("--user", default=None, metavar="NAME",
              help="Who the audit log names for this command (a store with `audit --enable`); "
                   "default MLFLOW_RAG_USER, else the operating-system user.")
def main(user: str | None) -> None:
    """mlflow-rag: the metadata store, search and evaluation harness for RAG, on MLflow."""
    from mlflow_rag.store.audit import set_user

    set_user(user)  # None too: a second command in one process must not inherit the first's


def split_commas(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def key_ints(pairs: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key or not value.strip().isdigit():
            raise click.BadParameter(f"expected KEY=INTEGER, got {pair!r}", param_hint="--index-param")
        out[key.strip()] = int(value)
    return out


TRACKING_URI_HELP = ("MLflow tracking URI [default: MLFLOW_TRACKING_URI, else MLflow's own "
                     "default (sqlite:///mlflow.db in the working directory), which `mlflow ui` "
                     "reads].")
EXPERIMENT_HELP = "MLflow experiment [default: MLFLOW_EXPERIMENT_NAME, else mlflow-rag]."


def tracking_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)(func)
    func = click.option("--no-track", is_flag=True, help="Do not log an MLflow run.")(func)
    return click.option("--experiment", default=None, help=EXPERIMENT_HELP)(func)


def principal_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--principal NAME --groups G1,G2``: read only what this principal may see
    (docs/governance.md). Who may claim a principal is the caller's business."""
    func = click.option("--groups", "principal_groups", default=None,
                        help="The principal's groups, comma-separated (labels it holds).")(func)
    return click.option(
        "--principal", default=None,
        help="Read as this principal: only documents without access labels or with a label "
             "it holds (its name or one of --groups) [default: everything].",
    )(func)


def parse_principal(name: str | None, groups: str | None) -> Any:
    """The CLI's principal (a :class:`~mlflow_rag.store.access.Principal`), or ``None``."""
    from mlflow_rag.store.access import Principal

    return Principal.optional(name, groups)


def check_tracking(tracking_uri: str | None) -> None:
    """An unreachable tracking server fails before the work, not after a long ingest."""
    from mlflow_rag.tracking_session import (  # no mlflow import
        check_tracking_uri,
        legacy_tracking_note,
        quiet_mlflow,
        resolve_tracking_uri,
    )

    check_tracking_uri(resolve_tracking_uri(tracking_uri))
    quiet_mlflow()
    note = legacy_tracking_note(tracking_uri)
    if note:
        click.echo(note, err=True)
