"""Named exceptions. Messages name the bad value and, where there is a choice, the valid ones.

Messages never include query text (it may be private); they name parameters instead.
"""

from __future__ import annotations

from collections.abc import Iterable


class RagError(Exception):
    """Base class of every error this package raises on purpose."""


def choices_message(kind: str, value: object, choices: Iterable[str]) -> str:
    """``Unknown chunker 'fix'; choose from ['fields', 'fixed']`` (one wording everywhere)."""
    return f"Unknown {kind} {value!r}; choose from {sorted(choices)}"


class UnknownChoice(RagError, ValueError):
    """A name (chunker, embedder, mode, index type, operator...) that is not one of the choices."""

    def __init__(self, kind: str, value: object, choices: Iterable[str]) -> None:
        self.kind = kind
        self.value = value
        self.choices = sorted(choices)
        super().__init__(choices_message(kind, value, self.choices))


class StoreNotFound(RagError, FileNotFoundError):
    """No store at the given path (and creation was not asked for)."""


class ForeignStore(RagError, ValueError):
    """The directory exists but is not a mlflow-rag store (or was made by a newer version)."""


class SchemaTooNew(ForeignStore):
    """The store was written by a newer schema than this package knows."""


class DocumentNotFound(RagError, KeyError):
    """No document (or chunk) with that id."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class ChunkNotFound(DocumentNotFound):
    """No chunk with that id."""


class ModelNotFound(RagError, KeyError):
    """The store holds no vectors for that embedding model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DimensionMismatch(RagError, ValueError):
    """A vector whose dimension does not match the model's."""


class InvalidVector(RagError, ValueError):
    """NaN, inf, zero-norm, wrong dtype/shape or otherwise unusable vectors."""


class FilterError(RagError, ValueError):
    """A filter that is not valid in the filter language (bad key, operator, value or shape)."""


class UnsafePath(RagError, ValueError):
    """A path taken from stored data (database, manifest, bundle) that would leave the store."""


class IndexCorrupt(RagError):
    """An index file that does not match the store (hash, magic or counts). Usually rebuilt."""


class BundleCorrupt(RagError, ValueError):
    """A bundle whose files do not match their recorded hashes."""


class InvalidInput(RagError, ValueError):
    """Bad user input that is not one of the more specific cases (empty text, bad k, ...)."""


class IdCollision(InvalidInput):
    """Documents whose ids are already in the store from another file or URL (replacing them
    would silently lose the stored ones); an id prefix keeps both, ``overwrite`` replaces."""


class LoaderError(RagError):
    """A source item that could not be loaded (corrupt PDF, unreadable file, refused URL...)."""


class EmbedderError(RagError):
    """The embedder failed (API error after retries, missing model files...)."""


class EmbedderUnavailable(EmbedderError):
    """The embedder cannot run here (optional dependency missing, no API key...)."""


class DatabaseUnavailable(RagError):
    """The store's database server cannot be reached, or refused the connection."""


class StoreBusy(RagError):
    """Another process is writing to the store and this call was asked not to wait."""


class ChunkingChangeRefused(RagError, ValueError):
    """Re-chunking documents would drop vectors of other models (pass rechunk to go ahead)."""


class GeneratorError(RagError):
    """The answer generator failed (an API error after retries, a refused request)."""


class PromptError(RagError, ValueError):
    """A prompt that cannot be used: a bad URI, a missing version or alias, a template whose
    variables are not the ones answering supplies, a context that cannot fit."""
