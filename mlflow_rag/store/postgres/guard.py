"""Losing the server: psycopg's connection failures as one-line errors, and a new connection
on the next call that starts outside a transaction.

A server that stops, restarts or terminates our backend breaks the connection: the statement
running fails, and so would every later one. :func:`guarded` wraps every public method of the
backend so that such a failure (and a missing permission) leaves as one
:class:`~mlflow_rag.errors.DatabaseUnavailable` line naming the store's location (never its
password). The backend reconnects on its next call when no transaction of its is open, so a
long-lived Store (a server) recovers once the database is back.

What is never done: retrying a statement or a transaction. A write whose connection broke
before COMMIT was rolled back by the server; one whose connection broke during COMMIT may
or may not have landed, and the message says so, so a caller re-checks (re-ingesting is
safe: unchanged documents are skipped) instead of writing twice.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from mlflow_rag.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from mlflow_rag.store.postgres.location import Location

T = TypeVar("T")

# Where the failure struck decides what happened to the write: the outcome each case states.
OUTSIDE = "nothing was written"
IN_WRITE = "the transaction was rolled back: nothing of it was written"
AT_COMMIT = ("the connection broke while committing, so the write may or may not have "
             "landed; check before writing again (re-ingesting skips unchanged documents)")


def is_connection_failure(exc: BaseException) -> bool:
    """A broken or refused connection (not a bad statement): psycopg's OperationalError
    family without a SQLSTATE of a query's own (class 57 is the server going away)."""
    import psycopg

    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = getattr(exc, "sqlstate", None)
    return state is None or state[:2] in ("08", "57")


def is_permission_failure(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.errors.InsufficientPrivilege)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def unavailable(exc: BaseException, location: Location, *, outcome: str) -> DatabaseUnavailable:
    """The one line for a lost connection or a refused permission."""
    shown = location.shown
    if is_permission_failure(exc):
        return DatabaseUnavailable(
            f"{shown}: {first_line(exc)}; {outcome}. Grant the role USAGE on schema "
            f"{location.schema} and SELECT (to read) or INSERT, UPDATE, DELETE (to write) on "
            "its tables")
    return DatabaseUnavailable(
        f"lost the connection to {shown} ({first_line(exc)}); {outcome}. The next call "
        "reconnects once the server is back")


def guarded(cls: type[T]) -> type[T]:
    """Wrap the public methods ``cls`` defines (generators included) so that connection
    and permission failures leave as :class:`DatabaseUnavailable`; the instance's
    ``store_location`` and ``_outcome()`` name the store and what happened to the write."""
    for name, attr in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(attr):
            continue
        setattr(cls, name, _wrap(attr))
    return cls


def _translated(self: Any, exc: BaseException) -> BaseException | None:
    if is_connection_failure(exc) or is_permission_failure(exc):
        return unavailable(exc, self.store_location, outcome=self._outcome())
    return None


def _wrap(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from method(self, *args, **kwargs)
            except Exception as exc:
                named = _translated(self, exc)
                if named is None:
                    raise
                raise named from exc
        return generator

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            named = _translated(self, exc)
            if named is None:
                raise
            raise named from exc
    return wrapper
