"""The opt-in audit log (issue 15): who deleted, purged, exported, forgot or searched as a
principal, what, and when, in the table ``audit_log``.

Off until ``mlflow-rag audit --enable`` (the store setting ``audit`` in ``store_meta``): it is
a store's property, not a per-command option, so every process that writes the store records
the same things. Entries are written in the transaction of the change they describe where
there is one (delete, forget, purges); an export or a read-only search changes nothing and
gets a transaction of its own. ``detail`` holds ids and counts, never document or query text.
"""

from __future__ import annotations

import getpass
import hashlib
import math
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from mlflow_rag import codec
from mlflow_rag.errors import ForeignStore, InvalidInput
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.tables import new_id, utc_now

SETTING = "audit"  # store_meta key: "on" or "off"
USER_ENV = "MLFLOW_RAG_USER"
# What an entry records: one name per kind of change.
ACTIONS = ("audit-on", "audit-off", "delete", "forget", "forget-logs", "purge-queries",
           "purge-audit", "export", "search")

_user: str | None = None  # the CLI's --user, for this process


def set_user(name: str | None) -> None:
    """Who the entries this process writes name (the CLI's ``--user``); None: the default."""
    global _user
    if name is not None and not name.strip():
        raise InvalidInput("--user must not be empty")
    _user = name.strip() if name else None


def current_user() -> str:
    """``--user``, else ``MLFLOW_RAG_USER``, else the operating-system user. Who may claim
    which name is the deployment's business, as for principals."""
    if _user:
        return _user
    named = os.environ.get(USER_ENV, "").strip()
    if named:
        return named
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's numeric uid)
        return f"uid:{os.getuid()}"


def is_enabled(backend: Backend) -> bool:
    try:
        return backend.get_meta(SETTING) == "on"
    except ForeignStore:  # never set: off
        return False


def record(backend: Backend, action: str, detail: Mapping[str, Any]) -> None:
    """Append an entry if the audit is on; call it inside the change's transaction."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; valid: {', '.join(ACTIONS)}")
    if is_enabled(backend):
        backend.append_audit((new_id(), utc_now(), current_user(), action, codec.dumps(detail)))


def set_enabled(backend: Backend, enabled: bool) -> bool:
    """Turn the audit on or off; returns whether it changed. Both are entries themselves:
    turning it off is the last entry it records, turning it on the first."""
    with backend.immediate_transaction():
        if is_enabled(backend) == enabled:
            return False
        if enabled:
            backend.set_meta(SETTING, "on")
            record(backend, "audit-on", {})
        else:
            record(backend, "audit-off", {})
            backend.set_meta(SETTING, "off")
    return True


def entries(backend: Backend, *, since: str | None = None) -> list[dict[str, Any]]:
    """The entries at or after ``since`` (ISO-8601 date or time, UTC), oldest first."""
    start = parse_since(since) if since else ""
    with backend.read_transaction():
        rows = backend.audit_rows(start)
    return [{"id": r[0], "at": r[1], "user": r[2], "action": r[3],
             "detail": codec.loads_object(r[4])} for r in rows]


def retention_cutoff(days: float) -> str:
    """The UTC timestamp ``days`` ago, as stored timestamps are written: rows before it go
    (``""`` when it is further back than datetime reaches: nothing is that old)."""
    if isinstance(days, bool) or not isinstance(days, (int, float)) or not math.isfinite(days) \
            or days < 0:
        raise InvalidInput(f"days must be a non-negative number, got {days!r}")
    try:
        return (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(
            timespec="microseconds")
    except OverflowError:
        return ""


def purge(backend: Backend, days: float) -> int:
    """Retention: delete entries older than ``days``; the purge is itself an entry."""
    cutoff = retention_cutoff(days)
    with backend.immediate_transaction():
        deleted = backend.delete_audit_before(cutoff)
        record(backend, "purge-audit", {"older_than_days": days, "deleted": deleted})
    return deleted


def parse_since(text: str) -> str:
    """``--since`` as the stored form (UTC ISO-8601), or a one-line error naming it."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since {text!r} is not an ISO-8601 date or time "
                           "(2026-12-01 or 2026-12-01T09:30:00+00:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def hashed_ids(ids: tuple[str, ...]) -> list[str]:
    """What a forget records of the ids it erased: their sha256, so the entry proves an
    erasure of a given id without keeping it."""
    return [hashlib.sha256(i.encode("utf-8")).hexdigest() for i in ids]
