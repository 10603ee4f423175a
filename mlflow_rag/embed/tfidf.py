"""TF-IDF + truncated SVD (latent semantic analysis): a small embedder fitted on the corpus.

Fitted at ingest with :meth:`TfidfEmbedder.fit`, saved with the store by
:meth:`TfidfEmbedder.save`, reopened by :meth:`TfidfEmbedder.load`. The saved state is plain
data, never a pickle (a bundle is shared, and unpickling runs code): the vocabulary and the
settings as JSON, ``idf`` and the SVD ``components`` in an ``.npz`` read with
``allow_pickle=False``. The transform is re-implemented here on that state (scikit-learn only
tokenises), and the fitted embedder uses the very same code and arrays, so a loaded embedder
gives the fitted one's vectors exactly.

Saved files in ``directory``: ``tfidf.npz`` (written first) and ``tfidf.json`` (written last,
atomically, holding the npz's SHA-256): a directory with ``tfidf.json`` holds a complete model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.embed.checks import MIN_NORM, check_query, check_texts, finalize_vectors
from mlflow_rag.errors import BundleCorrupt, EmbedderError, InvalidInput
from mlflow_rag.types import EmbedResult

STATE_JSON = "tfidf.json"
STATE_NPZ = "tfidf.npz"
FORMAT = "mlflow-rag/tfidf-lsa"
FORMAT_VERSION = 1

# Words of one or more letters/digits, so short identifiers ("C", "5", "x2") still count;
# scikit-learn's default drops single characters.
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w+\b"


class NotFitted(EmbedderError):
    """A tfidf embedder used before :meth:`TfidfEmbedder.fit` or :meth:`TfidfEmbedder.load`."""


@dataclass(frozen=True)
class _Fitted:
    terms: tuple[str, ...]  # terms[i] is the term of feature i
    index: dict[str, int]
    idf: np.ndarray  # float64 (n_features,)
    components: np.ndarray  # float32 (dimension - 1, n_features), C-contiguous
    n_documents: int
    digest: str  # sha256 of the fitted state; part of ``version`` (a refit is a new space)

    @property
    def dimension(self) -> int:
        return int(self.components.shape[0]) + 1  # LSA components + the "unknown" axis


def _digest(terms: Sequence[str], idf: np.ndarray, components: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(terms), ensure_ascii=False).encode("utf-8"))
    h.update(np.ascontiguousarray(idf, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(components, dtype="<f4").tobytes())
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """temp file -> fsync -> os.replace: a crash leaves the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fit_progress(total: int) -> Any:
    """A progress bar for the fit, shown as the CLI shows its own (a terminal on stderr, or
    MLFLOW_RAG_PROGRESS set): a large corpus takes minutes to fit."""
    import sys

    from tqdm import tqdm

    shown = sys.stderr.isatty() or bool(os.environ.get("MLFLOW_RAG_PROGRESS"))
    return tqdm(total=total, desc="tfidf fit", unit="text", disable=not shown, leave=False)


def _counted(items: Sequence[str], bar: Any) -> Iterator[str]:
    for item in items:
        yield item
        bar.update(1)


class TfidfEmbedder:
    """TF-IDF (sublinear tf, smooth idf, l2) projected on LSA components, plus an "unknown" axis.

    A vector has ``dimension - 1`` LSA coordinates and one last coordinate that is 0 for every
    text with a term in the fitted vocabulary. A text with none (a bare "---", a heading made
    only of new names; common when re-ingesting into a store fitted earlier) has no LSA
    direction: it gets the unit vector on the last axis instead of an error, so one odd chunk
    cannot sink an ingest, and that vector has cosine exactly 0 with every known text (neutral:
    BM25 still finds the chunk, dense search gives it no similarity). ``metadata`` of
    :meth:`embed` counts such texts as ``unknown_texts``.

    ``dimension`` is the requested total; after :meth:`fit` the effective one is
    ``min(dimension, n_features, n_documents)`` (SVD gives at most ``min(n_features,
    n_documents) - 1`` components), and that is what :attr:`dimension` reports from then on
    (before, it is the requested upper bound).
    """

    name = "tfidf"

    def __init__(
        self,
        *,
        dimension: int = 256,
        ngram_range: tuple[int, int] = (1, 1),
        max_features: int | None = 50_000,
        min_df: int = 1,
        token_pattern: str = DEFAULT_TOKEN_PATTERN,
        lowercase: bool = True,
        strip_accents: str | None = "unicode",
        random_state: int = 0,
    ) -> None:
        if dimension < 2:
            raise InvalidInput(f"dimension must be >= 2 (LSA components + 1), got {dimension}")
        low, high = ngram_range
        if not 1 <= low <= high:
            raise InvalidInput(
                f"ngram_range must be (low, high) with 1 <= low <= high, got {ngram_range}"
            )
        if max_features is not None and max_features < 2:
            raise InvalidInput(f"max_features must be >= 2 or None, got {max_features}")
        if min_df < 1:
            raise InvalidInput(f"min_df must be >= 1 (a document count), got {min_df}")
        if strip_accents not in (None, "unicode", "ascii"):
            raise InvalidInput(
                f"strip_accents must be one of [None, 'ascii', 'unicode'], got {strip_accents!r}"
            )
        self.requested_dimension = dimension
        self.ngram_range = (int(low), int(high))
        self.max_features = max_features
        self.min_df = min_df
        self.token_pattern = token_pattern
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.random_state = random_state
        # Plain attributes (the Embedder protocol's): until fit/load, ``dimension`` is only the
        # requested upper bound and ``version`` says unfitted; embed() refuses to run then.
        self.dimension: int = dimension
        self.version: str = "tfidf-lsa:unfitted"
        self._fitted: _Fitted | None = None
        self._analyzer: Callable[[str], list[str]] | None = None

    # ----------------------------------------------------------------------- settings

    def params(self) -> dict[str, Any]:
        """The settings (JSON-serialisable; saved with the model and compared on load)."""
        return {
            "dimension": self.requested_dimension,
            "ngram_range": list(self.ngram_range),
            "max_features": self.max_features,
            "min_df": self.min_df,
            "token_pattern": self.token_pattern,
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "random_state": self.random_state,
        }

    def config(self) -> dict[str, object]:
        """Settings and fitted facts, for logging as params."""
        out: dict[str, object] = {"embedder": self.name, **self.params()}
        if self._fitted is not None:
            out.update(
                effective_dimension=self._fitted.dimension,
                n_features=len(self._fitted.terms),
                n_documents=self._fitted.n_documents,
                model_version=self.version,
            )
        return out

    def _vectorizer_kwargs(self) -> dict[str, Any]:
        return {
            "lowercase": self.lowercase,
            "strip_accents": self.strip_accents,
            "token_pattern": self.token_pattern,
            "ngram_range": self.ngram_range,
        }

    @property
    def analyzer(self) -> Callable[[str], list[str]]:
        """scikit-learn's word analyzer for these settings (preprocess, tokenise, n-grams)."""
        if self._analyzer is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._analyzer = TfidfVectorizer(**self._vectorizer_kwargs()).build_analyzer()
        return self._analyzer

    # ----------------------------------------------------------------------- fitted state

    @property
    def fitted(self) -> bool:
        return self._fitted is not None

    def _state(self) -> _Fitted:
        if self._fitted is None:
            raise NotFitted(
                "the tfidf embedder is not fitted: call fit(texts) on the corpus at ingest, "
                "or TfidfEmbedder.load(directory) for a saved one"
            )
        return self._fitted

    @property
    def n_features(self) -> int:
        return len(self._state().terms)

    @property
    def n_documents(self) -> int:
        """How many texts the fit saw."""
        return self._state().n_documents

    def unknown_terms(self, texts: Sequence[str]) -> tuple[int, int]:
        """(distinct terms of ``texts`` the vocabulary lacks, distinct terms of ``texts``):
        how far a corpus has grown past this fit (the ingest's refit rule reads it)."""
        state = self._state()
        seen: set[str] = set()
        analyzer = self.analyzer
        for text in texts:
            seen.update(analyzer(text))
        return sum(1 for term in seen if term not in state.index), len(seen)

    def knows_any_term(self, text: str) -> bool:
        """Whether ``text`` has a term of the fitted vocabulary. A query without one has no
        direction in this space (it embeds to the "unknown" axis): search returns no dense
        hits for it instead of k arbitrary ones scored 0."""
        state = self._state()
        return any(term in state.index for term in self.analyzer(text))

    # ----------------------------------------------------------------------- fit

    def fit(self, texts: Sequence[str]) -> None:
        """Learn vocabulary, idf and the LSA projection from the corpus (replaces any fit)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        items = check_texts(texts)
        vectorizer = TfidfVectorizer(
            **self._vectorizer_kwargs(),
            sublinear_tf=True,
            smooth_idf=True,
            norm="l2",
            min_df=self.min_df,
            max_features=self.max_features,
            dtype=np.float64,
        )
        bar = _fit_progress(len(items))
        try:
            # scikit-learn reads the texts once, in order: the bar counts them as they are read
            matrix = vectorizer.fit_transform(_counted(items, bar))
        except ValueError as exc:  # empty vocabulary, min_df above the document count, ...
            bar.close()
            raise InvalidInput(f"tfidf cannot fit on these {len(items)} texts: {exc}") from None
        n_documents, n_features = matrix.shape
        components_wanted = min(self.requested_dimension - 1, n_features - 1, n_documents - 1)
        if components_wanted < 1:
            bar.close()
            raise InvalidInput(
                f"tfidf needs at least 2 texts and 2 distinct terms to fit; got {n_documents} "
                f"texts and {n_features} terms"
            )
        svd = TruncatedSVD(
            n_components=components_wanted, algorithm="randomized",
            random_state=self.random_state,
        )
        bar.set_postfix_str(f"LSA {components_wanted} components", refresh=True)
        try:
            svd.fit(matrix)
        finally:
            bar.close()
        terms = [""] * n_features
        for term, column in vectorizer.vocabulary_.items():
            terms[column] = term
        idf = np.ascontiguousarray(vectorizer.idf_, dtype=np.float64)
        # float32 halves the saved size; fitted and loaded embedders both use these same values.
        components = np.ascontiguousarray(svd.components_, dtype=np.float32)
        self._set_state(terms, idf, components, n_documents)

    def _set_state(
        self, terms: Sequence[str], idf: np.ndarray, components: np.ndarray, n_documents: int
    ) -> None:
        self._fitted = _Fitted(
            terms=tuple(terms),
            index={term: i for i, term in enumerate(terms)},
            idf=idf,
            components=components,
            n_documents=n_documents,
            digest=_digest(terms, idf, components),
        )
        self.dimension = self._fitted.dimension
        # A digest of the fitted state: vectors of two different fits are not comparable.
        self.version = f"tfidf-lsa:{self._fitted.digest[:12]}"

    # ----------------------------------------------------------------------- transform

    def _tfidf(self, texts: Sequence[str]) -> tuple[Any, int]:
        """(tf-idf matrix, number of analyzer terms in ``texts`` including unknown ones).

        scikit-learn's transform re-implemented on the saved state: counts of in-vocabulary
        terms, ``1 + log(count)``, times idf, rows scaled to unit length (rows without known
        terms stay zero); a sparse CSR (n, n_features) matrix.
        """
        from scipy.sparse import csr_matrix

        state = self._state()
        analyzer = self.analyzer
        indptr = [0]
        indices: list[int] = []
        n_terms = 0
        for text in texts:
            terms = analyzer(text)
            n_terms += len(terms)
            indices.extend(i for i in map(state.index.get, terms) if i is not None)
            indptr.append(len(indices))
        counts = csr_matrix(
            (np.ones(len(indices), dtype=np.float64), np.asarray(indices, dtype=np.int64), indptr),
            shape=(len(indptr) - 1, len(state.terms)),
        )
        counts.sum_duplicates()  # also sorts the column indices of each row
        counts.data = (np.log(counts.data) + 1.0) * state.idf[counts.indices]
        norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1), dtype=np.float64).ravel())
        norms[norms == 0.0] = 1.0  # rows without known terms stay zero (the unknown axis)
        counts.data /= np.repeat(norms, np.diff(counts.indptr))
        return counts, n_terms

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Unit LSA vectors for ``texts`` in input order; float32 (len(texts), dimension)."""
        items = check_texts(texts)
        state = self._state()
        started = time.perf_counter()
        matrix, n_terms = self._tfidf(items)
        n_components = state.components.shape[0]
        out = np.zeros((len(items), n_components + 1), dtype=np.float64)
        # float64 product: float32 components, but accumulation in double keeps fitted and
        # scikit-learn's transform within rounding of each other.
        out[:, :n_components] = matrix @ state.components.T.astype(np.float64)
        # No known term, or (rarely) a tf-idf row orthogonal to every component: the unknown
        # axis (see the class docstring) instead of a zero vector.
        unknown = np.linalg.norm(out[:, :n_components], axis=1) < MIN_NORM
        out[unknown, n_components] = 1.0
        vectors = finalize_vectors(out, expected_dimension=state.dimension, model=self.name)
        return EmbedResult(
            vectors=vectors,
            tokens=n_terms,  # analyzer terms (words, n-grams), known to the vocabulary or not
            seconds=time.perf_counter() - started,
            metadata={
                "n_features": len(state.terms),
                "distinct_terms_matched": int(matrix.nnz),
                "unknown_texts": int(unknown.sum()),
            },
        )

    def embed_query(self, text: str) -> np.ndarray:
        """float32 (dimension,), unit norm."""
        vector: np.ndarray = self.embed([check_query(text)]).vectors[0]
        return vector

    # ----------------------------------------------------------------------- save / load

    def save(self, directory: Path) -> None:
        """Write ``tfidf.npz`` then ``tfidf.json`` into ``directory`` (created if missing)."""
        state = self._state()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{STATE_NPZ}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            with tmp.open("wb") as f:
                np.savez_compressed(f, idf=state.idf, components=state.components)
            npz_bytes = tmp.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
        _atomic_write(directory / STATE_NPZ, npz_bytes)
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "params": self.params(),
            "dimension": state.dimension,
            "n_documents": state.n_documents,
            "n_features": len(state.terms),
            "version": self.version,
            "npz_sha256": hashlib.sha256(npz_bytes).hexdigest(),
            "vocabulary": list(state.terms),
        }
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        _atomic_write(directory / STATE_JSON, text.encode("utf-8"))

    @staticmethod
    def is_saved(directory: Path | None) -> bool:
        """Whether ``directory`` holds a saved model (its ``tfidf.json`` is written last)."""
        return directory is not None and (Path(directory) / STATE_JSON).is_file()

    @classmethod
    def load(cls, directory: Path) -> TfidfEmbedder:
        """Reopen a saved model; refuses missing, foreign, altered or inconsistent files."""
        directory = Path(directory)
        json_path, npz_path = directory / STATE_JSON, directory / STATE_NPZ
        if not json_path.is_file():
            raise NotFitted(f"no saved tfidf model in {directory} (no {STATE_JSON})")
        try:
            document = json.loads(json_path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleCorrupt(f"{json_path} is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise BundleCorrupt(f"{json_path} is not a {FORMAT} file")
        if document.get("format_version") != FORMAT_VERSION:
            raise BundleCorrupt(
                f"{json_path} has format_version {document.get('format_version')!r}; "
                f"this mlflow-rag reads {FORMAT_VERSION}"
            )
        try:
            npz_bytes = npz_path.read_bytes()
        except FileNotFoundError:
            raise BundleCorrupt(f"{npz_path} is missing (its {STATE_JSON} is present)") from None
        if hashlib.sha256(npz_bytes).hexdigest() != document.get("npz_sha256"):
            raise BundleCorrupt(f"{npz_path} does not match the SHA-256 recorded in {STATE_JSON}")
        try:
            params = document["params"]
            embedder = cls(
                dimension=int(params["dimension"]),
                ngram_range=(int(params["ngram_range"][0]), int(params["ngram_range"][1])),
                max_features=params["max_features"],
                min_df=int(params["min_df"]),
                token_pattern=str(params["token_pattern"]),
                lowercase=bool(params["lowercase"]),
                strip_accents=params["strip_accents"],
                random_state=int(params["random_state"]),
            )
            terms = document["vocabulary"]
            n_documents = int(document["n_documents"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise BundleCorrupt(f"{json_path} lacks a valid field: {exc!r}") from None
        try:
            # allow_pickle=False: an object array in a tampered file fails instead of running code.
            with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as arrays:
                idf = np.ascontiguousarray(arrays["idf"], dtype=np.float64)
                components = np.ascontiguousarray(arrays["components"], dtype=np.float32)
        except (KeyError, ValueError, OSError) as exc:
            raise BundleCorrupt(f"{npz_path} is not a valid tfidf state: {exc}") from None
        n_features = len(terms) if isinstance(terms, list) else -1
        if (
            n_features < 2
            or not all(isinstance(t, str) for t in terms)
            or len(set(terms)) != n_features
            or idf.shape != (n_features,)
            or components.ndim != 2
            or components.shape[1] != n_features
            or components.shape[0] + 1 != document.get("dimension")
            or not (np.isfinite(idf).all() and np.isfinite(components).all())
        ):
            raise BundleCorrupt(
                f"the tfidf state in {directory} is inconsistent (vocabulary {n_features} terms, "
                f"idf {idf.shape}, components {components.shape}, "
                f"dimension {document.get('dimension')!r})"
            )
        embedder._set_state(terms, idf, components, n_documents)
        if embedder.version != document.get("version"):
            raise BundleCorrupt(
                f"the tfidf state in {directory} does not match its recorded version"
            )
        return embedder

