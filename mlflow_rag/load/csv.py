"""CSV files: one SourceDocument per row, each free-text column a named Section.

The file is streamed record by record (memory is bounded by the largest allowed record, not
by the file), quoted fields may span lines, and a byte-order mark or a Windows code page is
detected and recorded. A bad row becomes a LoadFailure naming its line; the other rows load.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mlflow_rag.errors import InvalidInput
from mlflow_rag.load._common import (
    ACCESS_FIELD,
    add_user_fields,
    base_metadata,
    check_encoding_name,
    check_positive,
    detect_file_encoding,
    first_decode_error,
    regular_file_problem,
    stable_hash,
)
from mlflow_rag.load.csv_columns import (
    ColumnStats,
    choose_text_columns,
    duplicate_names,
    guess_id_column,
    guess_pii_columns,
    name_blank_columns,
    some_names,
)
from mlflow_rag.types import LoadFailure, Section, SourceDocument

TEXT_SEPARATOR = "\n\n"
SAMPLE_ROWS = 200
# The widest sheet Excel writes (column XFD). Every step below is linear in the column count;
# the limit bounds the metadata a row can add (every non-text column becomes a field).
MAX_COLUMNS = 16_384


class RecordTooLarge(Exception):
    """Raised by _BoundedLines through csv.reader when a record outgrows its bound.

    ``end_line`` is the last physical line of the skipped record.
    """

    def __init__(self, end_line: int) -> None:
        super().__init__(f"record too large (skipped through line {end_line})")
        self.end_line = end_line


class _BoundedLines:
    """The physical lines csv.reader parses, with two jobs csv.reader cannot do itself.

    1. Bound memory: a record (one or more physical lines) may not exceed ``max_chars``;
       ``readline`` is given a size so an endless line is never read whole.
    2. Resynchronise after a bad record: it counts the quote characters of the current
       record, so after an error it can skip to the line where the quotes balance again
       instead of parsing the rest of a broken multi-line field as new rows.
    """

    def __init__(self, f: TextIO, *, max_chars: int, quotechar: str) -> None:
        self._f = f
        self._max = max_chars
        self._quote = quotechar
        self.lines = 0  # physical lines handed out (or skipped) so far
        self._chars = 0
        self._quotes = 0

    def __iter__(self) -> _BoundedLines:
        return self

    def __next__(self) -> str:
        remaining = self._max - self._chars
        line = self._f.readline(remaining + 1)
        if not line:
            raise StopIteration
        self._chars += len(line)
        self._quotes += line.count(self._quote)
        if self._chars > self._max:
            self._finish_line(line)
            self.skip_rest_of_record()
            raise RecordTooLarge(self.lines)
        self.lines += 1
        return line

    def start_record(self) -> None:
        self._chars = 0
        self._quotes = 0

    def skip_rest_of_record(self) -> None:
        """Skip lines until the quote count is even: the end of the broken record."""
        while self._quotes % 2:
            line = self._f.readline(1 << 16)
            if not line:
                break
            self._quotes += line.count(self._quote)
            self._finish_line(line)
        self.start_record()

    def _finish_line(self, piece: str) -> None:
        """Consume the rest of the physical line ``piece`` began, in bounded reads."""
        while piece and not piece.endswith(("\n", "\r")):
            piece = self._f.readline(1 << 16)
            self._quotes += piece.count(self._quote)
        self.lines += 1


class CsvLoader:
    """Loads a CSV file: one document per row.

    Options (keyword-only):
        id_column: column holding the stable document id. Rows where it is empty (or all rows,
            if it is None) get ``"row-<sha256 of the non-PII values>"`` and
            ``metadata["id_source"] == "row_hash"``.
        text_columns: the free-text columns, each a Section named by the column; the text is
            their non-empty values joined with a blank line. Default: auto-detected (see
            ``choose_text_columns``).
        pii_columns: values go to ``SourceDocument.pii`` only (never text, metadata or the
            row-hash id); the names go to ``metadata["pii_fields"]``.
        encoding: a Python codec name; default: BOM, else UTF-8, else cp1252, else latin-1.
        delimiter: the field separator (``","``; ``"\\t"`` for TSV).
        max_field_chars: a row with a longer field is reported (10 MB by default); a record
            longer than twice this is skipped while reading, so memory stays bounded.
        max_columns: a header with more columns fails the file (``MAX_COLUMNS`` = 16,384 by
            default, the widest sheet Excel writes).

    Every other column goes into ``metadata`` under its own name (names that clash with the
    loader's keys are stored as ``"field:<name>"``).
    """

    name: str = "csv"
    version: str = "1"

    def __init__(
        self,
        *,
        id_column: str | None = None,
        text_columns: Sequence[str] | None = None,
        pii_columns: Sequence[str] | None = None,
        encoding: str | None = None,
        delimiter: str = ",",
        max_field_chars: int = 10_000_000,
        max_columns: int = MAX_COLUMNS,
    ) -> None:
        for option, value in [("text_columns", text_columns), ("pii_columns", pii_columns)]:
            if isinstance(value, str):
                raise InvalidInput(f"{option} must be a list of column names, got {value!r}")
        if text_columns is not None and not text_columns:
            raise InvalidInput("text_columns must name at least one column (or be None)")
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
            raise InvalidInput(f"delimiter must be one character (not a quote or newline), got {delimiter!r}")
        check_positive("max_field_chars", max_field_chars)
        check_positive("max_columns", max_columns)
        self.id_column = id_column
        self.text_columns = list(text_columns) if text_columns is not None else None
        self.pii_columns = list(pii_columns) if pii_columns is not None else None
        self.encoding = check_encoding_name(encoding)
        self.delimiter = delimiter
        self.max_field_chars = max_field_chars
        self.max_record_chars = 2 * max_field_chars
        self.max_columns = max_columns
        overlap = sorted(set(self.pii_columns or ()) & set(self.text_columns or ()))
        if overlap:
            raise InvalidInput(f"columns {overlap} are in both text_columns and pii_columns")
        if id_column is not None and id_column in (self.pii_columns or ()):
            raise InvalidInput(
                f"id_column {id_column!r} is also a PII column; ids are shown "
                "in search results, so choose another id column"
            )

    # ------------------------------------------------------------------ reading

    def _reader(self, lines: _BoundedLines) -> Any:
        # strict=True: a stray quote is an error for that row rather than silently merged text.
        return csv.reader(lines, delimiter=self.delimiter, quotechar='"', strict=True)

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        """Yield one document per data row of the CSV file ``source``.

        Raises InvalidInput when an option names a column the file does not have.
        """
        path = Path(source)
        problem = regular_file_problem(path)
        if problem is not None:
            yield LoadFailure(source, problem)
            return
        size = path.stat().st_size
        encoding, reason = self._encoding_of(path)
        if encoding is None:
            yield LoadFailure(source, f"cannot decode: {reason}")
            return
        # csv's own per-field limit is process-wide; it is only ever raised here (to our
        # bound), and every field is checked against this loader's own limit below.
        csv.field_size_limit(max(csv.field_size_limit(), self.max_field_chars))
        with path.open(encoding=encoding, newline="") as f:
            lines = _BoundedLines(f, max_chars=self.max_record_chars, quotechar='"')
            reader = self._reader(lines)
            try:
                header = next(reader)
            except StopIteration:
                yield LoadFailure(source, "empty file; expected a header row")
                return
            except (csv.Error, RecordTooLarge) as exc:
                yield LoadFailure(source, f"unreadable header row: {exc}")
                return
            if len(header) > self.max_columns:
                yield LoadFailure(
                    source, f"the header has {len(header)} columns; the limit is "
                    f"max_columns={self.max_columns}",
                )
                return
            header = name_blank_columns(header)
            duplicates = duplicate_names(header)
            if duplicates:
                yield LoadFailure(
                    source, f"duplicate column names {some_names(duplicates)} in the header"
                )
                return
            self._check_columns(source, header)
            pii_columns = self.pii_columns
            if pii_columns is None:
                chosen_text = set(self.text_columns or ())
                pii_columns = [c for c in guess_pii_columns(header) if c not in chosen_text]
            id_column = self.id_column
            if id_column is None:
                pii = set(pii_columns)
                id_column = guess_id_column([c for c in header if c not in pii])
            text_columns = self.text_columns
            if text_columns is None:
                text_columns = self._detect_text_columns(path, encoding, header, pii_columns, id_column)
            plan = _RowPlan(
                header=header,
                id_column=id_column,
                text_columns=text_columns,
                pii_columns=pii_columns,
            )
            base = base_metadata(loader=self.name, version=self.version, file_size=size, encoding=encoding)
            yield from self._rows(source, reader, lines, plan, base)

    def _encoding_of(self, path: Path) -> tuple[str | None, str | None]:
        if self.encoding is None:
            return detect_file_encoding(path)
        # Check the whole file first so a decode error cannot cut the batch in half.
        error = first_decode_error(path, self.encoding)
        return (self.encoding, None) if error is None else (None, error)

    def _check_columns(self, source: str, header: list[str]) -> None:
        named: list[tuple[str, str]] = [("pii_columns", c) for c in self.pii_columns or ()]
        named += [("text_columns", c) for c in self.text_columns or ()]
        if self.id_column is not None:
            named.append(("id_column", self.id_column))
        columns = set(header)
        for option, column in named:
            if column not in columns:
                raise InvalidInput(
                    f"Unknown column {column!r} in {option}; "
                    f"the columns of {os.path.basename(source)} are {some_names(header)}"
                )

    def _detect_text_columns(
        self, path: Path, encoding: str, header: list[str], pii_columns: Sequence[str],
        id_column: str | None,
    ) -> list[str]:
        """Sample the first rows (a separate bounded pass) and pick the free-text columns."""
        # an access-label column (store/access.py) is never text, however long its labels
        skip = set(pii_columns) | {id_column, ACCESS_FIELD}
        # column names are unique here (duplicates failed the file), so positions are exact
        index = {c: i for i, c in enumerate(header) if c not in skip}
        candidates = list(index)
        totals = {c: [0, 0, 0] for c in candidates}
        with path.open(encoding=encoding, newline="") as f:
            lines = _BoundedLines(f, max_chars=self.max_record_chars, quotechar='"')
            reader = self._reader(lines)
            rows = 0
            while rows <= SAMPLE_ROWS:
                lines.start_record()
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except (csv.Error, RecordTooLarge):
                    lines.skip_rest_of_record()
                    continue
                rows += 1
                if rows == 1:
                    continue  # the header
                for c, i in index.items():
                    value = row[i].strip() if i < len(row) else ""
                    if value:
                        t = totals[c]
                        t[0] += 1
                        t[1] += len(value)
                        t[2] += len(value.split())
        stats = {c: ColumnStats(*t) for c, t in totals.items()}
        return choose_text_columns(stats)

    def _rows(
        self,
        source: str,
        reader: Any,
        lines: _BoundedLines,
        plan: _RowPlan,
        base: dict[str, Any],
    ) -> Iterator[SourceDocument | LoadFailure]:
        seen: dict[str, int] = {}  # id -> line of its first row
        while True:
            lines.start_record()
            start = lines.lines + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except RecordTooLarge as exc:
                yield LoadFailure(
                    source,
                    f"lines {start}-{exc.end_line}: row is over {self.max_record_chars} "
                    f"characters (2 x max_field_chars={self.max_field_chars}); skipped unread",
                )
                continue
            except (UnicodeDecodeError, OSError) as exc:
                # Only if the file changed after the encoding check; nothing after this is safe.
                yield LoadFailure(source, f"line {start}: read error, stopped reading: {exc}")
                return
            except csv.Error as exc:
                lines.skip_rest_of_record()
                if "field larger than field limit" in str(exc):
                    reason = f"a field is over max_field_chars={self.max_field_chars} characters"
                else:
                    reason = f"malformed CSV row ({exc})"
                yield LoadFailure(source, f"line {start}: {reason}")
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            result = plan.document(
                row, source=source, line=start, base=base, max_field_chars=self.max_field_chars
            )
            if isinstance(result, LoadFailure):
                yield result
                continue
            first = seen.get(result.id)
            if first is not None:
                yield LoadFailure(
                    source,
                    f"line {start}: duplicate id {result.id!r} (first seen on line {first}); "
                    "the later row is not loaded",
                )
                continue
            seen[result.id] = start
            yield result



@dataclass(frozen=True)
class _RowPlan:
    """Which column goes where, fixed once per file from the header and the options."""

    header: list[str]
    id_column: str | None
    text_columns: list[str]
    pii_columns: list[str]

    def document(
        self,
        row: list[str],
        *,
        source: str,
        line: int,
        base: dict[str, Any],
        max_field_chars: int,
    ) -> SourceDocument | LoadFailure:
        width = len(self.header)
        if len(row) > width and not any(v.strip() for v in row[width:]):
            row = row[:width]  # trailing empty cells, as spreadsheet exports write them
        if len(row) != width:
            return LoadFailure(source, f"line {line}: row has {len(row)} fields; the header has {width}")
        for column, value in zip(self.header, row, strict=True):
            if len(value) > max_field_chars:
                return LoadFailure(
                    source,
                    f"line {line}: field {column!r} has {len(value)} characters; "
                    f"the limit is max_field_chars={max_field_chars}",
                )
        values = dict(zip(self.header, row, strict=True))
        metadata = dict(base)
        metadata["pii_fields"] = list(self.pii_columns)
        doc_id = values[self.id_column].strip() if self.id_column is not None else ""
        if doc_id:
            metadata["id_source"] = "column"
        else:
            # PII is left out of the hash: a hash of an e-mail address can be reversed by
            # guessing, and ids are shown in search results.
            pii = set(self.pii_columns)
            public = [values[c] for c in self.header if c not in pii]
            doc_id = "row-" + stable_hash(public)[:16]
            metadata["id_source"] = "row_hash"
        parts: list[str] = []
        sections: list[Section] = []
        offset = 0
        for column in self.text_columns:
            value = values[column]
            if not value.strip():
                continue
            if parts:
                parts.append(TEXT_SEPARATOR)
                offset += len(TEXT_SEPARATOR)
            sections.append(Section(column, offset, offset + len(value)))
            parts.append(value)
            offset += len(value)
        if not sections:
            return LoadFailure(
                source, f"line {line}: id {doc_id!r} has no text in columns {self.text_columns}"
            )
        skip = set(self.text_columns) | set(self.pii_columns)
        add_user_fields(metadata, ((c, values[c]) for c in self.header if c not in skip))
        return SourceDocument(
            id=doc_id,
            source_path=source,
            source_type="csv",
            text="".join(parts),
            sections=tuple(sections),
            metadata=metadata,
            pii={c: values[c] for c in self.pii_columns},
        )
