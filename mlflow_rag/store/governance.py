"""``store.governance``: a document's kept versions, the lineage of any stored id, and the
audit log's entries for what changed nothing (issue 15; the SQL is the backend's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow_rag import codec
from mlflow_rag.errors import DocumentNotFound
from mlflow_rag.store import audit, lineage, opening
from mlflow_rag.store.access import Principal, visible
from mlflow_rag.store.core import StoreCore
from mlflow_rag.types import DocumentVersion


class StoreGovernance:
    """Versions, lineage and audit of one open store (``store.governance``)."""

    def __init__(self, core: StoreCore) -> None:
        self._core = core

    def document_history(
        self, document_id: str, *, principal: Principal | None = None,
    ) -> list[DocumentVersion]:
        """Every kept version of a document, oldest first (the current one last, open). For
        a principal, only a document it may see now (a deleted one is "not found")."""
        backend = self._core.backend
        with self._core.lock, backend.read_transaction():
            row = backend.document_row(document_id)
            versions = lineage.history(backend, document_id)
            hidden = principal is not None and (
                row is None or not visible(codec.loads_object(row[6]), principal))
        if hidden or (row is None and not versions):
            raise DocumentNotFound(
                f"no document with id {document_id!r} in {self._core.location}")
        return versions

    def lineage(self, item_id: str) -> dict[str, Any]:
        """The chain of a document, chunk, logged query or answer id
        (:mod:`mlflow_rag.store.lineage`): for whoever holds the store, never filtered by
        principal."""
        with self._core.lock, self._core.backend.read_transaction():
            return lineage.lineage(self._core.backend, item_id, location=self._core.location)

    def audit(self, action: str, detail: Mapping[str, Any]) -> None:
        """An audit entry for something that changed nothing (an export, a search), in a
        transaction of its own; nothing when the audit is off. A store opened read-only is
        opened again, writable, for the entry."""
        if self._core.immutable or not audit.is_enabled(self._core.backend):
            return  # a bundle is a sealed copy: never written, audited where it is served
        if not self._core.read_only:
            with self._core.lock, self._core.backend.immediate_transaction():
                audit.record(self._core.backend, action, detail)
            return
        writable = opening.open_writable_backend(self._core.opened_as)
        try:
            with writable.immediate_transaction():
                audit.record(writable, action, detail)
        finally:
            writable.close()
