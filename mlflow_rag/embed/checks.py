"""Checks shared by every embedder: what goes in (texts) and what comes out (vectors).

Every backend's output passes through :func:`finalize_vectors`, so the Embedder contract
(float32, C-contiguous, (n, d), L2-normalised, finite, non-zero) holds in one place and a
misbehaving backend is refused here instead of reaching FAISS (which accepts NaN silently).
Messages name positions, never text: the text may be a private query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlflow_rag.errors import DimensionMismatch, InvalidInput, InvalidVector

# Norms below this are "zero": normalising them would amplify rounding noise into a direction.
MIN_NORM = 1e-12
_MAX_LISTED = 10


class InvalidTextAt(InvalidInput):
    """A text that cannot be embedded (empty, whitespace-only, not a str); ``position`` names it."""

    def __init__(self, position: int, message: str) -> None:
        self.position = position
        super().__init__(message)


class InvalidVectorAt(InvalidVector):
    """Vectors that a backend produced NaN, inf or zero for; ``positions`` index the input texts.

    A remote backend misbehaving is the usual case (tfidf never produces one: a text without
    known terms gets its "unknown" axis instead). A caller may drop those texts and retry.
    """

    def __init__(self, positions: Sequence[int], message: str) -> None:
        self.positions = tuple(int(p) for p in positions)
        super().__init__(message)


def _listed(positions: Sequence[int]) -> str:
    shown = ", ".join(str(p) for p in positions[:_MAX_LISTED])
    more = f", ... ({len(positions)} in all)" if len(positions) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list; refuses a bare str, non-str items and empty or blank texts."""
    if isinstance(texts, (str, bytes)):
        # A bare str is a sequence of characters: embedding it would silently embed each letter.
        raise InvalidInput("texts must be a sequence of str, not a single str; wrap it in a list")
    items = list(texts)
    for position, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidTextAt(
                position, f"texts[{position}] is {type(text).__name__}, not str"
            )
        if not text.strip():
            raise InvalidTextAt(
                position, f"texts[{position}] is empty or whitespace-only; nothing to embed"
            )
    return items


def check_query(text: str) -> str:
    """A single query text; same rules as :func:`check_texts`, message says ``query``."""
    if not isinstance(text, str):
        raise InvalidInput(f"query is {type(text).__name__}, not str")
    if not text.strip():
        raise InvalidInput("query is empty or whitespace-only; nothing to embed")
    return text


def finalize_vectors(
    raw: object, *, expected_dimension: int | None, model: str, offset: int = 0
) -> np.ndarray:
    """Backend output -> float32, C-contiguous, (n, d), unit-norm rows; or a named error.

    ``offset`` is added to reported positions when ``raw`` is one batch of a larger input.
    """
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidVector(f"{model} returned vectors that are not numeric: {exc}") from None
    if array.ndim != 2:
        raise InvalidVector(
            f"{model} returned an array of shape {array.shape}; expected (n_texts, dimension)"
        )
    if expected_dimension is not None and array.shape[1] != expected_dimension:
        raise DimensionMismatch(
            f"{model} returned vectors of dimension {array.shape[1]}; "
            f"expected {expected_dimension}"
        )
    # Norms in float64: float32 squares overflow to inf for components above ~1e19.
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(array, axis=1)
    bad = ~np.isfinite(array).all(axis=1) | ~np.isfinite(norms) | (norms < MIN_NORM)
    if bad.any():
        positions = [int(p) + offset for p in np.flatnonzero(bad)]
        raise InvalidVectorAt(
            positions,
            f"{model} produced unusable vectors (NaN, inf or zero norm) for texts at "
            f"positions {_listed(positions)}",
        )
    unit = (array / norms[:, None]).astype(np.float32)
    return np.ascontiguousarray(unit)
