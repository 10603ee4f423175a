"""Helpers shared by the loaders: standard metadata, encoding detection, stable ids, limits.

Nothing here reads a whole file into memory unless the caller bounded its size first.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mlflow_rag.errors import InvalidInput

# Keys every loader writes into SourceDocument.metadata. User fields (CSV columns, JSON keys)
# that collide with one of these are stored as "field:<name>" instead, so a column called
# "encoding" can neither hide nor fake the loader's own record.
RESERVED_METADATA_KEYS = frozenset(
    {"file_size", "encoding", "loader", "loader_version", "pii_fields", "id_source"}
)

# A record's access labels (mlflow_rag.store.access.ACCESS_KEY): kept as metadata, never text.
ACCESS_FIELD = "_access"

# Encodings tried in order when none is given. UTF-8 is strict enough that text which decodes
# as UTF-8 almost certainly is UTF-8; cp1252 is what spreadsheet exports on Windows produce;
# latin-1 decodes any byte sequence, so it is the last resort (and is recorded as such).
DEFAULT_ENCODINGS: tuple[str, ...] = ("utf-8", "cp1252", "latin-1")

_BLOCK = 1 << 20  # 1 MiB: the read size for streamed checks


def base_metadata(
    *, loader: str, version: str, file_size: int | None, encoding: str | None
) -> dict[str, Any]:
    """The four keys every SourceDocument carries (``encoding`` is None for binary formats)."""
    return {
        "loader": loader,
        "loader_version": version,
        "file_size": file_size,
        "encoding": encoding,
    }


def add_user_fields(metadata: dict[str, Any], fields: Iterable[tuple[str, Any]]) -> None:
    """Copy source fields into ``metadata`` under their own names, renaming reserved clashes."""
    for key, value in fields:
        metadata[f"field:{key}" if key in RESERVED_METADATA_KEYS else key] = value


def stable_hash(parts: Sequence[Any]) -> str:
    """Hex sha256 of a JSON rendering of ``parts``: the same values give the same id forever."""
    blob = json.dumps(list(parts), ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_encoding_name(encoding: str | None) -> str | None:
    """Normalise an encoding option, raising InvalidInput for names Python does not know."""
    if encoding is None:
        return None
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise InvalidInput(
            f"Unknown encoding {encoding!r}; use a Python codec name such as "
            f"{list(DEFAULT_ENCODINGS)} or 'utf-16'"
        ) from None


def check_positive(name: str, value: int | float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInput(f"{name} must be a positive number, got {value!r}")


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark announces (UTF-32 is checked before its UTF-16 prefix)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def first_decode_error(path: Path, encoding: str) -> str | None:
    """Stream ``path`` through an incremental decoder; the error message, or None if it decodes.

    Streaming keeps memory at one block however large the file is.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        with path.open("rb") as f:
            while block := f.read(_BLOCK):
                decoder.decode(block, final=False)
                offset += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return f"byte {offset + exc.start} is not valid {encoding} ({exc.reason})"
    return None


def detect_file_encoding(
    path: Path, *, candidates: Sequence[str] = DEFAULT_ENCODINGS
) -> tuple[str | None, str | None]:
    """(encoding, None) for the BOM's encoding or the first candidate that decodes the file.

    The whole file is checked (streamed) either way, so reading it later cannot fail halfway.

    (None, reason) when no candidate decodes it (only possible without latin-1 in the list).
    """
    with path.open("rb") as f:
        head = f.read(4)
    bom = bom_encoding(head)
    if bom is not None:
        error = first_decode_error(path, bom)
        return (bom, None) if error is None else (None, error)
    reasons = []
    for encoding in candidates:
        error = first_decode_error(path, encoding)
        if error is None:
            return encoding, None
        reasons.append(error)
    return None, "; ".join(reasons)


def decode_bytes(
    data: bytes, *, encoding: str | None, candidates: Sequence[str]
) -> tuple[str, str] | tuple[None, str]:
    """Decode in-memory bytes: the given encoding, else BOM, else the first candidate that works.

    Returns (text, encoding) or (None, reason).
    """
    if encoding is not None:
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError as exc:
            return None, f"byte {exc.start} is not valid {encoding} ({exc.reason})"
    bom = bom_encoding(data[:4])
    if bom is not None:
        try:
            return data.decode(bom), bom
        except UnicodeDecodeError as exc:
            return None, f"byte {exc.start} is not valid {bom} after its byte-order mark"
    reasons = []
    for candidate in candidates:
        try:
            return data.decode(candidate), candidate
        except UnicodeDecodeError as exc:
            reasons.append(f"not {candidate} (byte {exc.start})")
    return None, "undecodable: " + ", ".join(reasons)


def regular_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a plain file, or None.

    FIFOs and devices are refused because opening one can block forever or never end.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (device, FIFO or socket)"
    return None

