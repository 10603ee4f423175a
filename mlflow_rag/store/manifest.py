"""``STORE/manifest.json``: schema and package versions, per-model index state, file hashes.

The manifest describes the index files; SQLite stays the source of truth. A missing or
unreadable manifest only means the indexes are rebuilt from SQLite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_rag import __version__, codec
from mlflow_rag.store.files import atomic_write_bytes

MANIFEST = "manifest.json"
FORMAT = "mlflow-rag-store"
FORMAT_VERSION = 1


@dataclass
class ModelEntry:
    """The state of one model's index file."""

    slug: str
    dimension: int
    embedder: str | None
    model_version: str | None
    index_type: str
    index_params: dict[str, Any]
    generation: int
    vector_count: int
    max_vector_id: int
    index_file: str
    sha256: str
    bytes: int
    # sha256 per block of ``block_bytes`` (verified on all cores when the file is opened);
    # manifests written before these fields existed have neither, and the whole-file sha256
    # is checked instead.
    block_sha256: list[str] = field(default_factory=list)
    block_bytes: int = 0
    # A compressed index's float16 side file (store/side_files.py): its name, size, block
    # hashes (of ``block_bytes``), rows, runs of its run table and the generation it was
    # read at; empty for other kinds and for manifests written before it existed.
    vectors_file: str = ""
    vectors_bytes: int = 0
    vectors_block_sha256: list[str] = field(default_factory=list)
    vectors_rows: int = 0
    vectors_runs: int = 0
    vectors_generation: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEntry:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


@dataclass
class Manifest:
    store_id: str
    schema_version: int
    generation: int = 0
    models: dict[str, ModelEntry] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # bundles: path -> sha256/bytes
    package_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "store_id": self.store_id,
            "schema_version": self.schema_version,
            "package_version": self.package_version,
            "generation": self.generation,
            "models": {name: vars(entry) for name, entry in sorted(self.models.items())},
            "files": self.files,
        }


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest, or None if missing or unreadable (indexes are then rebuilt)."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        return Manifest(
            store_id=data["store_id"],
            schema_version=int(data["schema_version"]),
            generation=int(data.get("generation", 0)),
            models={k: ModelEntry.from_dict(v) for k, v in data.get("models", {}).items()},
            files=dict(data.get("files", {})),
            package_version=str(data.get("package_version", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    atomic_write_bytes(directory / MANIFEST, codec.dumps_pretty(manifest.to_dict()).encode())
