"""A folder or glob of mixed files: each file goes to the loader for its extension."""

from __future__ import annotations

from collections.abc import Iterator

from mlflow_rag.load._paths import iter_source_files
from mlflow_rag.load.pdf import PdfLoader
from mlflow_rag.load.text import TextLoader
from mlflow_rag.types import LoadFailure, SourceDocument


class DirectoryLoader:
    """Loads ``.txt``/``.md``/``.markdown``/``.html``/``.htm`` (TextLoader) and ``.pdf``
    (PdfLoader) files.

    ``source`` is a folder (recursive) or a glob pattern; ids are paths relative to its root,
    so a document keeps its id whichever loader read it. Files with other extensions are not
    documents of this source: they are counted in ``skipped`` (extension -> files, for the
    last ``load``) and the ingest report says so; hidden files are left out unnoticed. The
    per-file loaders' safety checks (paths escaping the root, symlinks, size limits) apply.
    """

    name: str = "directory"
    version: str = "1"

    def __init__(self, *, text: TextLoader | None = None, pdf: PdfLoader | None = None) -> None:
        self.text = text if text is not None else TextLoader()
        self.pdf = pdf if pdf is not None else PdfLoader()
        self.skipped: dict[str, int] = {}

    @property
    def extensions(self) -> tuple[str, ...]:
        return self.text.extensions + self.pdf.extensions

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        self.skipped = {}
        for item in iter_source_files(source, extensions=self.extensions, skipped=self.skipped):
            if isinstance(item, LoadFailure):
                yield item
            elif item.source_path.lower().endswith(self.pdf.extensions):
                yield self.pdf.load_file(item)
            else:
                yield self.text.load_file(item)
