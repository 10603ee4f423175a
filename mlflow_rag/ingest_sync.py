"""``ingest --sync``: which stored documents came from the sources being ingested and are
gone from them (pure decisions, no store), and what a ``--dry-run`` reports.

A stored document came from a source when its source path is that file (or URL), lies under
that folder, or matches that glob. It is gone when this ingest loaded no document with its
id. Documents of a file that failed to load this time are kept (a read error is not a
deletion), and documents from other sources are never candidates.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from mlflow_rag.ingest_sources import source_identity

_GLOB = set("*?[")


@dataclass(frozen=True)
class IngestPreview:
    """What an ingest would change (``--dry-run``): nothing is written."""

    new: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    unchanged: int = 0
    failed: tuple[str, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        out = [f"dry run: nothing written; {len(self.new)} new, {len(self.updated)} updated, "
               f"{len(self.deleted)} deleted, {self.unchanged} unchanged, "
               f"{len(self.failed)} failed"]
        for what, ids in (("new", self.new), ("updated", self.updated),
                          ("deleted", self.deleted), ("failed", self.failed)):
            out.extend(f"  {what}: {doc_id}" for doc_id in ids)
        return out


def covers(source: str, source_path: str) -> bool:
    """Whether ``source_path`` (as stored: absolute, or a URL) came from ``source`` as given
    on the command line (a file, a folder, a glob or a URL)."""
    if any(ch in _GLOB for ch in source):
        return fnmatch.fnmatchcase(source_path, source_identity(os.path.expanduser(source)))
    identity = source_identity(os.path.expanduser(source))
    if source_path == identity:
        return True
    if os.path.isdir(identity):
        return source_path.startswith(identity.rstrip(os.sep) + os.sep)
    return False


def gone_documents(
    stored: Iterable[tuple[str, str]], sources: Sequence[str], *, loaded_ids: Collection[str],
    failed_paths: Collection[str],
) -> list[str]:
    """Ids of stored (id, source path) documents that came from ``sources`` and were not
    loaded this time, except those of a source path that failed to load."""
    failed = {source_identity(path) for path in failed_paths}
    return sorted(
        doc_id for doc_id, path in stored
        if doc_id not in loaded_ids and path not in failed
        and any(covers(source, path) for source in sources)
    )
