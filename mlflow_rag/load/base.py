"""The Loader protocol: a source (path, glob or URL) -> SourceDocuments, failures reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from mlflow_rag.types import LoadFailure, SourceDocument


class Loader(Protocol):
    name: str
    version: str

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        """Yield documents; a bad item is yielded as a LoadFailure and the rest go on."""
        ...
