"""Checks and normal forms shared by the store and the layers above it: vectors, ``k``, query
text for FTS5, content hashes, model slugs and the PII metadata key. Pure functions; nothing
here touches a file or the database."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mlflow_rag.errors import DimensionMismatch, InvalidInput, InvalidVector

PII_KEY = "_pii"  # document metadata key holding PII-marked fields; hidden unless asked for
MAX_K = 10_000
# What model_slug produces; a slug read back from the database must still look like this
# before it becomes part of a file name (`UPDATE models SET slug = '../../x'` wrote outside).
SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")

def model_slug(name: str) -> str:
    """File-system-safe name of a model: ``openai:text-embedding-3-small`` ->
    ``openai-text-embedding-3-small``."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    return slug or "model"


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def public_metadata(metadata: Mapping[str, Any], *, include_pii: bool) -> dict[str, Any]:
    if include_pii or PII_KEY not in metadata:
        return dict(metadata)
    return {k: v for k, v in metadata.items() if k != PII_KEY}


def clean_vectors(vectors: Any, dimension: int, *, what: str = "vector") -> np.ndarray:
    """Validate and L2-normalise to C-contiguous float32 (n, d). FAISS accepts NaN, inf, wrong
    dtypes and non-contiguous arrays silently; we refuse or fix them here, before anything is
    stored.

    Each row is divided by its largest magnitude before its length is taken, so finite vectors
    of any scale normalise correctly (squaring float32 components above ~1e19 overflows to
    inf, and dividing by an infinite length would store a zero vector).
    """
    try:
        array = np.asarray(vectors)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidVector(f"{what}s must be a rectangular array of numbers: {exc}") from None
    if array.dtype.kind not in "fiu" or array.dtype.kind == "c":
        raise InvalidVector(f"{what}s must be real numbers, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise InvalidVector(f"{what}s must be a 2-d array (n, dimension), got shape {array.shape}")
    if array.shape[1] != dimension:
        raise DimensionMismatch(
            f"{what} dimension {array.shape[1]} does not match the model's dimension {dimension}"
        )
    if dimension < 1:
        raise InvalidVector(f"{what}s need at least one component, got shape {array.shape}")
    if array.dtype.kind != "f" or array.dtype.itemsize < 4:
        array = array.astype(np.float64)  # integers and float16: exact in float64
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidVector(f"{what} {bad} contains NaN or infinity")
    if array.shape[0] == 0:
        return np.zeros((0, dimension), dtype=np.float32)
    peak = np.abs(array).max(axis=1)
    if (peak == 0).any():
        bad = int(np.flatnonzero(peak == 0)[0])
        raise InvalidVector(f"{what} {bad} has zero length and cannot be normalised")
    scaled = array / peak[:, None]  # largest component +-1: the length is in [1, sqrt(d)]
    unit = scaled / np.linalg.norm(scaled, axis=1)[:, None]
    return np.ascontiguousarray(unit, dtype=np.float32)


# Below this squared length a query takes clean_vectors' path, which scales before squaring
# (float32 squares of components under ~1e-19 lose precision or vanish).
_MIN_SQUARED_LENGTH = 1e-30


def clean_query(vector: Any, dimension: int) -> np.ndarray:
    """One query vector (shape (d,) or (1, d)), validated and normalised like stored ones.

    A float32 array of the right shape (what embedders return) is checked by one dot
    product in float64 (which no float32 square overflows): its squared length is finite
    only if every component is, and above zero only if one is not zero. Anything else, or a
    length out of that range, takes :func:`clean_vectors`' seven numpy passes, which name
    what is wrong or rescale first (issue 19: 38 -> 3 us a query on a busy machine)."""
    if (isinstance(vector, np.ndarray) and vector.dtype == np.float32
            and vector.shape in ((dimension,), (1, dimension))):
        flat = vector if vector.ndim == 1 else vector.reshape(-1)  # (a numpy call: 2-4 us)
        wide = flat.astype(np.float64)
        squared = float(np.dot(wide, wide))
        if _MIN_SQUARED_LENGTH < squared < math.inf:
            return np.multiply(flat, 1.0 / math.sqrt(squared), dtype=np.float32)
    try:
        shape = np.shape(vector)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InvalidVector(f"a query vector must be a flat list of numbers: {exc}") from None
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != 1):
        raise InvalidVector(
            f"a query is one vector of shape ({dimension},) or (1, {dimension}), got shape {shape}"
        )
    return clean_vectors(vector, dimension, what="query vector")[0]


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return int(k)
