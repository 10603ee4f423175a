"""The model registry: the embedding models a store holds (name, slug, dimension, embedder,
index settings), read from the database once per generation; and, for a store in a
database, the fitted state of its embedders shared between hosts (:class:`ModelFiles`)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow_rag import codec
from mlflow_rag.errors import DimensionMismatch, ModelNotFound, UnsafePath
from mlflow_rag.index.choose import choose_index
from mlflow_rag.store import layout
from mlflow_rag.store.backend import Backend
from mlflow_rag.store.checks import SLUG_PATTERN, model_slug
from mlflow_rag.store.files import atomic_write_bytes, confined
from mlflow_rag.types import ModelInfo


class ModelRegistry:
    """The models of one store as of ``generation``. Callers hold the store's lock and, to
    read, a transaction of the backend."""

    def __init__(self, root: Path, backend: Backend) -> None:
        self.root = root
        self.backend = backend
        self.by_name: dict[str, ModelInfo] = {}
        self.generation = -1

    def invalidate(self) -> None:
        """The next refresh reads the models again (after this process changed them)."""
        self.generation = -1

    def refresh(self, generation: int) -> None:
        """Read the models again if the store moved past ``generation`` since the last read."""
        if generation == self.generation:
            return
        self.by_name = {}
        for name, slug, dim, embedder, version, index_type, params in self.backend.model_rows():
            if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug):
                raise UnsafePath(
                    f"model {name!r} in {self.root / layout.DB_FILE} has the slug {slug!r}, which is "
                    "not a plain file name ([a-z0-9._-]); refused (it names the model's files)"
                )
            self.by_name[name] = ModelInfo(
                name=name, slug=slug, dimension=dim, embedder=embedder, model_version=version,
                index_type=index_type, index_params=codec.loads_object(params),
                vector_count=-1, generation=generation,
            )
        self.generation = generation

    def get(self, name: str | None) -> ModelInfo:
        """The named model, or the only one. Errors list the models the store has."""
        if name is None:
            if len(self.by_name) == 1:
                return next(iter(self.by_name.values()))
            if not self.by_name:
                raise ModelNotFound(f"{self.root} holds no vectors yet; ingest documents first")
            raise ModelNotFound(
                f"{self.root} holds several embedding models; choose one with --embedder from "
                f"{sorted(self.by_name)}"
            )
        if name not in self.by_name:
            have = sorted(self.by_name)
            add = f"`mlflow-rag ingest SOURCES --store {self.root} --embedder {name}`"
            raise ModelNotFound(
                f"no embedding model {name!r} in {self.root}; it has {have}: search with "
                f"--embedder {' or '.join(have)}, or add {name} vectors with {add}"
                if have else f"no embedding model {name!r} in {self.root}; it holds no vectors "
                f"yet: add them with {add}"
            )
        return self.by_name[name]

    def slug_for(self, name: str) -> str:
        """The slug of a registered model, or the one :meth:`register` would give it now (a
        name that slugs like a registered one's gets a hash of the name behind it)."""
        existing = self.by_name.get(name)
        if existing is not None:
            return existing.slug
        slug = model_slug(name)
        if any(m.slug == slug for m in self.by_name.values()):
            slug = f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        return slug

    def counted(self, generation: int) -> list[ModelInfo]:
        """The models with their vector counts and the index type each gets at that count."""
        out = []
        for info in self.by_name.values():
            count = self.backend.vector_count(info.name)
            spec = choose_index(info.index_type, count, info.dimension, info.index_params)
            out.append(
                ModelInfo(
                    name=info.name, slug=info.slug, dimension=info.dimension,
                    embedder=info.embedder, model_version=info.model_version,
                    index_type=spec.kind, index_params=dict(spec.params),
                    vector_count=count, generation=generation,
                )
            )
        return out

    def register(
        self, name: str, dimension: int, *, generation: int, embedder: str | None,
        model_version: str | None, index_type: str | None,
        index_params: Mapping[str, Any] | None,
    ) -> None:
        """Add a model, or check an existing one's dimension and record new index settings.
        Call inside the write transaction that moves the store to ``generation``."""
        self.refresh(generation - 1)
        existing = self.by_name.get(name)
        if existing is not None:
            if existing.dimension != dimension:
                raise DimensionMismatch(
                    f"model {name!r} in {self.root} has dimension {existing.dimension}, "
                    f"not {dimension}"
                )
            if index_type is not None and (
                index_type != existing.index_type
                or dict(index_params or {}) != dict(existing.index_params)
            ):
                self.backend.update_model_index(
                    name, index_type=index_type,
                    index_params=dict(index_params or {}),
                )
        else:
            slug = self.slug_for(name)
            self.backend.insert_model(
                name=name, slug=slug, dimension=dimension, embedder=embedder,
                model_version=model_version, index_type=index_type or "auto",
                index_params=dict(index_params or {}),
            )


class ModelFiles:
    """Fitted embedder state of a store in a database, kept in step with the local cache
    folder: pushed by the writer that fitted it, pulled by a process whose folder holds
    another version (a marker file names the version a folder holds)."""

    MARKER = ".version"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._pulled: dict[str, str] = {}  # model -> version this process has in its folder

    def push(self, name: str, version: str, folder: Path) -> None:
        files = {p.name: p.read_bytes() for p in sorted(folder.glob("*"))
                 if p.is_file() and p.name != self.MARKER}
        self.backend.save_model_files(name, version, files)
        atomic_write_bytes(folder / self.MARKER, version.encode())
        self._pulled[name] = version

    def pull(self, name: str, version: str, folder: Path) -> None:
        if self._pulled.get(name) == version:
            return
        marker = folder / self.MARKER
        if marker.is_file() and marker.read_text(encoding="utf-8") == version:
            self._pulled[name] = version
            return
        files = self.backend.model_files(name, version)
        if not files:
            return  # nothing published for it (an embedder without fitted state)
        folder.mkdir(parents=True, exist_ok=True)
        # A loader reads the JSON first and it names the rest: write it last, as a save does.
        for file_name in sorted(files, key=lambda n: n.endswith(".json")):
            atomic_write_bytes(confined(folder, file_name, what="model state file"), files[file_name])
        atomic_write_bytes(marker, version.encode())
        self._pulled[name] = version
