"""The legacy chatboti store: ``embeddings-<model>.json``, speakers with inline vectors.

Each file is a JSON list of speaker objects (snake_case keys of the speaker CSV) with two float
lists, ``abstract_embedding`` and ``bio_embedding``, computed by one embedding model. Importing
keeps those vectors, so the old system's search can be reproduced without re-embedding.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlflow_rag.errors import InvalidInput, LoaderError
from mlflow_rag.load._common import (
    add_user_fields,
    base_metadata,
    check_positive,
    regular_file_problem,
)
from mlflow_rag.types import LoadFailure, Section, SourceDocument

TEXT_SEPARATOR = "\n\n"
# section name -> (text key, vector key)
SECTION_FIELDS: dict[str, tuple[str, str]] = {
    "abstract": ("final_abstract_max_150_words", "abstract_embedding"),
    "bio": ("bio_max_120_words", "bio_embedding"),
}
PII_FIELDS = ("mail_adress", "social_media_handles")
ID_FIELD = "name"
LOADER_NAME = "legacy"
LOADER_VERSION = "1"
_FILE_NAME = re.compile(r"^embeddings-(?P<model>.+)\.json$")


@dataclass(frozen=True)
class LegacyDocument:
    """A speaker as a SourceDocument plus its stored vectors, keyed by section name."""

    document: SourceDocument
    vectors: dict[str, np.ndarray]


@dataclass(frozen=True)
class LegacyImport:
    """The readable records of one legacy file, their model and dimension, and the rest."""

    source_path: str
    model_name: str
    dimension: int
    documents: list[LegacyDocument]
    failures: list[LoadFailure] = field(default_factory=list)


def model_name_from_path(path: str | Path) -> str | None:
    """``embeddings-text-embedding-3-small.json`` -> ``text-embedding-3-small``."""
    match = _FILE_NAME.match(Path(path).name)
    return match.group("model") if match else None


def read_legacy(
    path: str | Path, *, model_name: str | None = None, max_bytes: int = 500_000_000
) -> LegacyImport:
    """Read a legacy embeddings file.

    Whole-file problems (missing, not JSON, not a list, no usable record, no model name)
    raise LoaderError / InvalidInput. Per-record problems (no name, duplicate name,
    non-numeric, NaN/inf or all-zero vectors, a dimension other than the file's, text without
    its vector) become ``failures`` naming the record, and the other records import.

    The file's dimension is the most common vector length in it, so one odd record cannot
    make every other record "wrong". Vectors are float32, as stored (not re-normalised).
    The whole file is parsed in memory (JSON has no streaming form here), so its size is
    bounded by ``max_bytes``.
    """
    check_positive("max_bytes", max_bytes)
    source = str(path)
    if model_name is None:
        model_name = model_name_from_path(path)
        if model_name is None:
            raise InvalidInput(
                f"Cannot derive the model name from the file name {Path(path).name!r} "
                "(expected 'embeddings-<model>.json'); pass model_name=..."
            )
    problem = regular_file_problem(Path(path))
    if problem is not None:
        raise LoaderError(f"{source}: {problem}")
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise LoaderError(f"{source}: file is {size} bytes; the limit is max_bytes={max_bytes}")
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f, parse_int=_parse_int)
    except UnicodeDecodeError as exc:
        raise LoaderError(f"{source}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise LoaderError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise LoaderError(f"{source}: JSON nested too deeply to parse; not a legacy file") from None
    if not isinstance(records, list):
        raise LoaderError(f"{source}: expected a JSON list of speaker objects, got {type(records).__name__}")

    failures: list[LoadFailure] = []
    parsed: list[tuple[str, dict[str, Any], dict[str, np.ndarray]]] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        result = _parse_record(index, record)
        if isinstance(result, str):
            failures.append(LoadFailure(source, result))
            continue
        name, vectors = result
        if name in seen:
            failures.append(
                LoadFailure(
                    source,
                    f"record {index} ({name!r}): duplicate name (first at record {seen[name]}); not loaded",
                )
            )
            continue
        seen[name] = index
        parsed.append((name, record, vectors))

    lengths = Counter(len(v) for _, _, vectors in parsed for v in vectors.values())
    if not lengths:
        first = f"; first problem: {failures[0].reason}" if failures else ""
        raise LoaderError(f"{source}: no usable record with vectors in {len(records)}{first}")
    dimension = lengths.most_common(1)[0][0]

    metadata_base = base_metadata(
        loader=LOADER_NAME, version=LOADER_VERSION, file_size=size, encoding="utf-8"
    )
    metadata_base["pii_fields"] = list(PII_FIELDS)
    metadata_base["embedding_model"] = model_name
    documents: list[LegacyDocument] = []
    for name, record, vectors in parsed:
        wrong = {s: len(v) for s, v in vectors.items() if len(v) != dimension}
        if wrong:
            failures.append(
                LoadFailure(
                    source,
                    f"record {seen[name]} ({name!r}): vector dimension "
                    + ", ".join(f"{SECTION_FIELDS[s][1]}={n}" for s, n in wrong.items())
                    + f"; the file's dimension is {dimension}",
                )
            )
            continue
        documents.append(LegacyDocument(_document(source, name, record, metadata_base), vectors))
    return LegacyImport(source, model_name, dimension, documents, failures)


def _parse_record(index: int, record: Any) -> tuple[str, dict[str, np.ndarray]] | str:
    """(name, vectors by section) or the reason the record is refused."""
    if not isinstance(record, dict):
        return f"record {index}: expected an object, got {type(record).__name__}"
    name = record.get(ID_FIELD)
    if not isinstance(name, str) or not name.strip():
        return f"record {index}: no {ID_FIELD!r} (the id)"
    label = f"record {index} ({name.strip()!r})"
    vectors: dict[str, np.ndarray] = {}
    for section, (text_key, vector_key) in SECTION_FIELDS.items():
        text = record.get(text_key)
        raw = record.get(vector_key)
        if text is not None and not isinstance(text, str):
            return f"{label}: {text_key} must be a string, got {type(text).__name__}"
        has_text = bool(text and text.strip())
        if raw is None and not has_text:
            continue
        if raw is None:
            return f"{label}: has {text_key} text but no {vector_key}"
        if not has_text:
            return f"{label}: has {vector_key} but no {text_key} text"
        vector = _vector(raw)
        if isinstance(vector, str):
            return f"{label}: {vector_key} {vector}"
        vectors[section] = vector
    if not vectors:
        return f"{label}: no abstract or bio text"
    return name.strip(), vectors


class _LongInteger(float):
    """An integer literal too long for int() (Python refuses over 4,300 digits): kept as an
    infinite float that remembers its length, so the record it is in fails, not the file."""

    digits: int

    def __new__(cls, text: str) -> _LongInteger:
        value = super().__new__(cls, "-inf" if text.startswith("-") else "inf")
        value.digits = len(text.lstrip("-"))
        return value

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> int | float:
    if len(text) > sys.get_int_max_str_digits() > 0:
        return _LongInteger(text)
    return int(text)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _vector(raw: Any) -> np.ndarray | str:
    """A float32 vector, or what is wrong with ``raw``."""
    if not isinstance(raw, list) or not raw:
        return f"must be a non-empty list of numbers, got {type(raw).__name__}"
    for i, x in enumerate(raw):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return f"value {i} is not a number ({x!r})"
        if isinstance(x, _LongInteger):
            return f"value {i} is an integer of {x.digits} digits, too large for float32"
        if isinstance(x, int):
            if abs(x) > _FLOAT32_MAX:  # float(x) itself overflows past ~309 digits
                return f"value {i} is an integer too large for float32"
        elif not math.isfinite(x):
            return f"value {i} is {x!r} (NaN or infinite)"
    vector = np.asarray(raw, dtype=np.float64)
    if float(np.abs(vector).max()) > _FLOAT32_MAX:
        return "has values too large for float32"
    if not np.any(vector):
        return "is all zeros"
    single = vector.astype(np.float32)
    if not np.any(single):  # e.g. 1e-310: not zero in float64, but below float32's range
        return "is all zeros in float32 (its values are below float32's smallest)"
    return single


def _document(
    source: str, name: str, record: dict[str, Any], metadata_base: dict[str, Any]
) -> SourceDocument:
    parts: list[str] = []
    sections: list[Section] = []
    offset = 0
    for section, (text_key, _) in SECTION_FIELDS.items():
        text = record.get(text_key)
        if not (isinstance(text, str) and text.strip()):
            continue
        if parts:
            parts.append(TEXT_SEPARATOR)
            offset += len(TEXT_SEPARATOR)
        sections.append(Section(section, offset, offset + len(text)))
        parts.append(text)
        offset += len(text)
    used = {key for pair in SECTION_FIELDS.values() for key in pair} | set(PII_FIELDS)
    metadata = dict(metadata_base)
    metadata["id_source"] = "field"
    # Other vector lists (none in the known files) are not metadata: they would bloat every
    # search result. Everything else is kept under its own name.
    add_user_fields(
        metadata,
        ((k, v) for k, v in record.items() if k not in used and not k.endswith("_embedding")),
    )
    return SourceDocument(
        id=name,
        source_path=source,
        source_type="legacy",
        text="".join(parts),
        sections=tuple(sections),
        metadata=metadata,
        pii={k: record[k] for k in PII_FIELDS if k in record},
    )


class LegacyLoader:
    """The Loader-protocol view of ``read_legacy``: documents only (vectors dropped).

    Use ``read_legacy`` to import the vectors too.
    """

    name: str = LOADER_NAME
    version: str = LOADER_VERSION

    def __init__(self, *, model_name: str | None = None) -> None:
        self.model_name = model_name

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        try:
            imported = read_legacy(source, model_name=self.model_name)
        except (LoaderError, InvalidInput) as exc:
            yield LoadFailure(source, str(exc))
            return
        for item in imported.documents:
            yield item.document
        yield from imported.failures
