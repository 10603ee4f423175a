"""JSON Lines files: one JSON object per line, one SourceDocument per object.

Lines are read in binary with a size bound, so an endless line never sits in memory whole;
each line is decoded and parsed on its own, so one bad line is one LoadFailure.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from mlflow_rag.errors import InvalidInput
from mlflow_rag.load._common import (
    add_user_fields,
    base_metadata,
    check_positive,
    regular_file_problem,
    stable_hash,
)
from mlflow_rag.load.csv_columns import guess_pii_columns
from mlflow_rag.types import LoadFailure, Section, SourceDocument

TEXT_SEPARATOR = "\n\n"
DEFAULT_ID_FIELDS = ("_id", "id")
DEFAULT_TEXT_FIELDS = ("title", "text")


class JsonlLoader:
    """Loads a ``.jsonl`` file: one document per JSON object line.

    Options (keyword-only):
        id_field: the field holding the stable id (a string or an integer); default: ``_id``,
            else ``id``. Objects without one get ``"line-<sha256 of the object>"`` and
            ``metadata["id_source"] == "line_hash"``.
        text_fields: fields whose string values become Sections (named by the field) joined
            with a blank line; default ``("title", "text")``. Missing, null or blank values are
            skipped; an object with no text at all is a LoadFailure.
        pii_fields: values go to ``SourceDocument.pii`` only; names to ``metadata["pii_fields"]``.
            Default (None): guessed per object from the field names, as the CSV loader does
            (e-mail, phone, social handles...; not the id or text fields); ``[]`` for none.
        max_line_bytes: longer lines are reported and skipped unread.

    Other fields go into ``metadata`` under their own names (nested values kept as they are).
    """

    name: str = "jsonl"
    version: str = "1"
    source_type: str = "jsonl"
    require_id: bool = False

    def __init__(
        self,
        *,
        id_field: str | None = None,
        text_fields: Sequence[str] = DEFAULT_TEXT_FIELDS,
        pii_fields: Sequence[str] | None = None,
        max_line_bytes: int = 50_000_000,
    ) -> None:
        for option, value in [("text_fields", text_fields), ("pii_fields", pii_fields)]:
            if isinstance(value, str):
                raise InvalidInput(f"{option} must be a list of field names, got {value!r}")
        if not text_fields:
            raise InvalidInput("text_fields must name at least one field")
        overlap = sorted(set(text_fields) & set(pii_fields or ()))
        if overlap:
            raise InvalidInput(f"fields {overlap} are in both text_fields and pii_fields")
        if id_field is not None and id_field in (pii_fields or ()):
            raise InvalidInput(f"id_field {id_field!r} is also a PII field; choose another")
        check_positive("max_line_bytes", max_line_bytes)
        self.id_fields = (id_field,) if id_field is not None else DEFAULT_ID_FIELDS
        self.text_fields = list(text_fields)
        self.pii_fields = list(pii_fields) if pii_fields is not None else None
        self.max_line_bytes = max_line_bytes

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        path = Path(source)
        problem = regular_file_problem(path)
        if problem is not None:
            yield LoadFailure(source, problem)
            return
        size = path.stat().st_size
        seen: dict[str, int] = {}
        with path.open("rb") as f:
            head = f.read(3)
            encoding = "utf-8-sig" if head == codecs.BOM_UTF8 else "utf-8"
            if encoding == "utf-8":
                f.seek(0)
            base = base_metadata(loader=self.name, version=self.version, file_size=size, encoding=encoding)
            for number, raw in _bounded_lines(f, self.max_line_bytes):
                if raw is None:
                    yield LoadFailure(
                        source,
                        f"line {number}: longer than max_line_bytes={self.max_line_bytes}; skipped unread",
                    )
                    continue
                if not raw.strip():
                    continue
                result = self._document(raw, source=source, line=number, base=base)
                if isinstance(result, LoadFailure):
                    yield result
                    continue
                first = seen.get(result.id)
                if first is not None:
                    yield LoadFailure(
                        source,
                        f"line {number}: duplicate id {result.id!r} (first seen on line "
                        f"{first}); the later line is not loaded",
                    )
                    continue
                seen[result.id] = number
                yield result

    def _document(
        self, raw: bytes, *, source: str, line: int, base: dict[str, Any]
    ) -> SourceDocument | LoadFailure:
        def fail(reason: str) -> LoadFailure:
            return LoadFailure(source, f"line {line}: {reason}")

        obj = _json_object(raw)
        if isinstance(obj, str):
            return fail(obj)

        metadata = dict(base)
        id_key = next((k for k in self.id_fields if obj.get(k) is not None), None)
        pii_fields = self.pii_fields
        if pii_fields is None:
            pii_fields = [k for k in guess_pii_columns([str(k) for k in obj])
                          if k not in self.text_fields and k not in self.id_fields]
        metadata["pii_fields"] = list(pii_fields)
        doc_id = ""
        if id_key is not None:
            value = obj[id_key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                return fail(f"id field {id_key!r} must be a string or integer, got {type(value).__name__}")
            doc_id = str(value).strip()
        if doc_id:
            metadata["id_source"] = "field"
        elif self.require_id:
            return fail(f"no id (field {' or '.join(map(repr, self.id_fields))})")
        else:
            public = {k: v for k, v in obj.items() if k not in pii_fields}
            doc_id = "line-" + stable_hash([public])[:16]
            metadata["id_source"] = "line_hash"

        joined = self._joined_text(obj)
        if isinstance(joined, str):
            return fail(joined)
        parts, sections = joined
        if not sections:
            return fail(f"id {doc_id!r} has no text in fields {self.text_fields}")

        skip = {*self.text_fields, *pii_fields}
        if id_key is not None:
            skip.add(id_key)
        add_user_fields(metadata, ((k, v) for k, v in obj.items() if k not in skip))
        return SourceDocument(
            id=doc_id,
            source_path=source,
            source_type=self.source_type,
            text="".join(parts),
            sections=tuple(sections),
            metadata=metadata,
            pii={k: obj[k] for k in pii_fields if k in obj},
        )

    def _joined_text(self, obj: dict[str, Any]) -> tuple[list[str], list[Section]] | str:
        """(parts to join, one section per non-blank text field), or why a text field is bad."""
        parts: list[str] = []
        sections: list[Section] = []
        offset = 0
        for field in self.text_fields:
            value = obj.get(field)
            if value is None:
                continue
            if not isinstance(value, str):
                return f"text field {field!r} must be a string, got {type(value).__name__}"
            if not value.strip():
                continue
            if parts:
                parts.append(TEXT_SEPARATOR)
                offset += len(TEXT_SEPARATOR)
            sections.append(Section(field, offset, offset + len(value)))
            parts.append(value)
            offset += len(value)
        return parts, sections


def _json_object(raw: bytes) -> dict[str, Any] | str:
    """One line decoded to a JSON object, or why it is not one."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start}: {exc.reason})"
    except json.JSONDecodeError as exc:
        return f"invalid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return "invalid JSON (nested too deeply)"
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    return obj


def _bounded_lines(f: BinaryIO, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line; bytes is None for a line over ``max_bytes``.

    An over-long line is consumed in bounded pieces, never held whole.
    """
    number = 0
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):
                line = f.readline(1 << 16)
            yield number, None
            continue
        yield number, line
