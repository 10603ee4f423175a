"""BEIR corpora: a folder with ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line).

The documents keep BEIR's ``_id`` as their id, so the benchmark's qrels match them directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from mlflow_rag.load.jsonl import JsonlLoader
from mlflow_rag.types import LoadFailure, SourceDocument

CORPUS_FILE = "corpus.jsonl"


def is_beir_folder(path: str | Path) -> bool:
    return (Path(path) / CORPUS_FILE).is_file()


class BeirLoader(JsonlLoader):
    """Loads a BEIR corpus: sections ``"title"`` (when not blank) and ``"text"``.

    ``source`` is the dataset folder or its ``corpus.jsonl``. Lines without an ``_id`` are
    LoadFailures (qrels refer to documents by it, so a made-up id would be useless).
    ``metadata["dataset"]`` is the folder's name; other fields (BEIR's ``metadata`` object)
    are kept under their names.
    """

    name: str = "beir"
    version: str = "1"
    source_type: str = "beir"
    require_id: bool = True

    def __init__(self, *, max_line_bytes: int = 50_000_000) -> None:
        super().__init__(id_field="_id", text_fields=("title", "text"), max_line_bytes=max_line_bytes)

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        path = Path(source)
        corpus = path / CORPUS_FILE if path.is_dir() else path
        if path.is_dir() and not corpus.is_file():
            yield LoadFailure(source, f"not a BEIR folder: no {CORPUS_FILE} in it")
            return
        dataset = corpus.resolve().parent.name
        for item in super().load(str(corpus)):
            if isinstance(item, SourceDocument):
                metadata = dict(item.metadata)
                metadata.setdefault("dataset", dataset)
                item = dataclasses.replace(item, metadata=metadata)
            yield item
