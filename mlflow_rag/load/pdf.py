"""PDF files through pypdf: one section per page, so chunks can cite page numbers.

Hostile or broken PDFs are reported per file and the batch goes on: corrupt or truncated
bytes, encryption without the password, too many pages, too much text, decompression
bombs (pypdf's per-stream output limits are set to ``max_stream_bytes`` while reading), and
files that cost too much work (``max_seconds`` per file: a few KB can make pypdf parse the same
megabytes of content for every page).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow_rag.errors import InvalidInput
from mlflow_rag.load._common import base_metadata, check_positive
from mlflow_rag.load._paths import FoundFile, iter_source_files
from mlflow_rag.types import LoadFailure, Section, SourceDocument

PDF_EXTENSIONS = (".pdf",)
PAGE_SEPARATOR = "\n\n"
# Work allowed per file. pypdf reads well-formed text at tens of pages a second, so a file at
# max_pages (5,000) fits; a hostile one (pages sharing one huge content stream) is cut here.
DEFAULT_PDF_SECONDS = 300.0
PDF_SECONDS_ENV = "MLFLOW_RAG_PDF_MAX_SECONDS"

# pypdf's Configuration fields that bound how much one stream may decompress to.
_STREAM_LIMIT_FIELDS = (
    "zlib_maximum_output_length",
    "lzw_maximum_output_length",
    "run_length_maximum_output_length",
    "array_based_stream_maximum_output_length",
    "brotli_maximum_output_length",
    "maximum_declared_stream_length",
)


class PdfLoader:
    """Loads ``.pdf`` files (a file, a folder or a glob) with pypdf's text extraction.

    The document text is the pages' text (each stripped) joined with a blank line; every page
    with text is a Section named ``"page"`` with ``metadata={"page": n}`` (1-based). Pages with
    no extractable text get no section and are listed in ``metadata["empty_pages"]``.

    Options:
        password: used for encrypted files (an empty user password is always tried).
        max_bytes: larger files are reported, not parsed.
        max_pages: files with more pages are reported.
        max_text_chars: extraction stops and the file is reported past this much text.
        max_stream_bytes: the most one PDF stream may decompress to (decompression bombs).
        max_seconds: time allowed to read one file (``$MLFLOW_RAG_PDF_MAX_SECONDS``, else
            300 s); a file over it is reported. Enforced inside a page on the main thread (a
            SIGALRM timer), between pages on other threads.
    """

    name: str = "pdf"
    version: str = "1"
    extensions: tuple[str, ...] = PDF_EXTENSIONS

    def __init__(
        self,
        *,
        password: str | None = None,
        max_bytes: int = 200_000_000,
        max_pages: int = 5_000,
        max_text_chars: int = 50_000_000,
        max_stream_bytes: int = 50_000_000,
        max_seconds: float | None = None,
    ) -> None:
        if max_seconds is None:
            max_seconds = _seconds_from_env()
        for option, value in [
            ("max_bytes", max_bytes),
            ("max_pages", max_pages),
            ("max_text_chars", max_text_chars),
            ("max_stream_bytes", max_stream_bytes),
            ("max_seconds", max_seconds),
        ]:
            check_positive(option, value)
        if not math.isfinite(max_seconds):
            raise InvalidInput(f"max_seconds must be a finite number of seconds, got {max_seconds!r}")
        self.password = password
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self.max_text_chars = max_text_chars
        self.max_stream_bytes = max_stream_bytes
        self.max_seconds = max_seconds

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        for item in iter_source_files(source, extensions=self.extensions):
            yield item if isinstance(item, LoadFailure) else self.load_file(item)

    def load_file(self, found: FoundFile) -> SourceDocument | LoadFailure:
        """Read one checked file (also used by DirectoryLoader)."""
        try:
            size = found.real_path.stat().st_size
        except OSError as exc:
            return LoadFailure(found.source_path, f"cannot read: {exc.strerror or exc}")
        if size > self.max_bytes:
            return LoadFailure(
                found.source_path, f"file is {size} bytes; the limit is max_bytes={self.max_bytes}"
            )
        progress = _Progress(time.monotonic() + self.max_seconds)
        try:
            with self._stream_limits(), _alarm(self.max_seconds):
                result = self._extract(found.real_path, progress)
        except _OutOfTime:
            result = self._too_slow(progress)
        except Exception as exc:
            # pypdf signals malformed input with many exception types (PdfReadError,
            # LimitReachedError, but also KeyError, ValueError, RecursionError...). Any of
            # them means "this file cannot be read"; the batch must go on.
            if type(exc).__name__ == "LimitReachedError":
                return LoadFailure(
                    found.source_path,
                    "refused: a pypdf resource limit was reached (decompression bomb? "
                    f"max_stream_bytes={self.max_stream_bytes}): {_describe(exc)}",
                )
            return LoadFailure(found.source_path, f"unreadable PDF: {_describe(exc)}")
        if isinstance(result, str):
            return LoadFailure(found.source_path, result)
        pages, info = result
        return self._document(found, size, pages, info)

    def _stream_limits(self) -> contextlib.AbstractContextManager[Any]:
        """pypdf >= 6 takes its decompression limits from a context variable; older ones
        have fixed module constants, which we leave alone (they already bound streams)."""
        import pypdf

        apply = getattr(pypdf, "apply_configuration", None)
        if apply is None:
            return contextlib.nullcontext()
        known = {f for f in _STREAM_LIMIT_FIELDS if hasattr(pypdf.get_configuration(), f)}
        return apply(**{f: self.max_stream_bytes for f in known})

    def _too_slow(self, progress: _Progress) -> str:
        where = (f"by page {progress.page} of {progress.pages}" if progress.pages
                 else "before its pages were counted")
        return (f"refused: reading it took over max_seconds={self.max_seconds:g} ({where}); "
                f"a hostile or very heavy PDF (raise the limit with ${PDF_SECONDS_ENV})")

    def _extract(self, path: Path, progress: _Progress) -> tuple[list[str], dict[str, Any]] | str:
        """Page texts and document info, or the reason the file is refused."""
        from pypdf import PdfReader

        reader = PdfReader(path)
        if reader.is_encrypted:
            opened = reader.decrypt(self.password or "")
            if not opened:
                if self.password is None:
                    return "encrypted PDF and no password given (option password=...)"
                return "encrypted PDF; the password given does not open it"
        n_pages = len(reader.pages)
        if n_pages > self.max_pages:
            return f"{n_pages} pages; the limit is max_pages={self.max_pages}"
        pages: list[str] = []
        total = 0
        progress.pages = n_pages
        for page in reader.pages:
            progress.page = len(pages) + 1
            if time.monotonic() > progress.deadline:  # the only check off the main thread
                return self._too_slow(progress)
            text = (page.extract_text() or "").strip()
            total += len(text)
            if total > self.max_text_chars:
                return (
                    f"more than max_text_chars={self.max_text_chars} characters of text "
                    f"by page {len(pages) + 1} of {n_pages}"
                )
            pages.append(text)
        return pages, _document_info(reader)

    def _document(
        self, found: FoundFile, size: int, pages: list[str], info: dict[str, Any]
    ) -> SourceDocument | LoadFailure:
        empty = [n for n, text in enumerate(pages, start=1) if not text]
        if len(empty) == len(pages):
            return LoadFailure(
                found.source_path,
                f"no extractable text on any of its {len(pages)} pages "
                "(scanned images? OCR is not supported)",
            )
        parts: list[str] = []
        sections: list[Section] = []
        offset = 0
        for n, text in enumerate(pages, start=1):
            if not text:
                continue
            if parts:
                parts.append(PAGE_SEPARATOR)
                offset += len(PAGE_SEPARATOR)
            sections.append(Section("page", offset, offset + len(text), {"page": n}))
            parts.append(text)
            offset += len(text)
        metadata = base_metadata(loader=self.name, version=self.version, file_size=size, encoding=None)
        metadata["path"] = found.doc_id
        metadata["pages"] = len(pages)
        metadata["empty_pages"] = empty
        metadata.update(info)
        return SourceDocument(
            id=found.doc_id,
            source_path=found.source_path,
            source_type="pdf",
            text="".join(parts),
            sections=tuple(sections),
            metadata=metadata,
        )


class _OutOfTime(BaseException):
    """Raised by the timer inside pypdf. A BaseException, so that pypdf's many
    ``except Exception`` handlers cannot swallow it."""


class _Progress:
    """Where the reading of one file is, for the message when it runs out of time."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.page = 0
        self.pages = 0


def _seconds_from_env() -> float:
    raw = os.environ.get(PDF_SECONDS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_PDF_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidInput(f"{PDF_SECONDS_ENV} must be a positive number of seconds, got {raw!r}")
    return value


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Raise _OutOfTime in this thread after ``seconds``, if a timer can be used here.

    Signals reach the main thread only, and an ITIMER_REAL already running belongs to the
    caller; in both cases nothing is armed and the page loop's check is the bound.
    """
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


def _document_info(reader: Any) -> dict[str, Any]:
    """Title and author from the PDF's info dictionary, when present and readable."""
    try:
        info = reader.metadata
    except Exception:  # a broken info dictionary must not cost the document its text
        return {}
    if not info:
        return {}
    out: dict[str, Any] = {}
    for key, attr in (("title", "title"), ("author", "author")):
        try:
            value = getattr(info, attr)
        except Exception:
            continue
        if isinstance(value, str) and value.strip():
            out[key] = value.strip()
    return out


def _describe(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
