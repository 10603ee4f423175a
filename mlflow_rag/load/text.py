"""Plain-text and Markdown files: one file, a folder (recursive) or a glob pattern.

Each file is one SourceDocument whose id is its path relative to the folder / glob root, in
posix form, so the same tree ingested from another machine or OS gets the same ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from mlflow_rag.load._common import (
    DEFAULT_ENCODINGS,
    base_metadata,
    check_encoding_name,
    check_positive,
    decode_bytes,
)
from mlflow_rag.load._paths import FoundFile, iter_source_files
from mlflow_rag.types import LoadFailure, SourceDocument

TEXT_EXTENSIONS = (".txt", ".text")
MARKDOWN_EXTENSIONS = (".md", ".markdown")
# Without a BOM: UTF-8, else cp1252. latin-1 is left out on purpose: it decodes any bytes, so
# a binary file named .txt would "succeed" as mojibake instead of being reported.
TEXT_ENCODINGS = DEFAULT_ENCODINGS[:2]

# C0 control characters other than tab, newline, vertical tab, form feed, carriage return and
# escape. Real text has almost none; binary data decoded as cp1252 has plenty.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_BINARY_CONTROL_SHARE = 0.01
_SNIFF_CHARS = 65_536
_ATX_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


class TextLoader:
    """Loads ``.txt`` / ``.md`` / ``.markdown`` files (source_type ``text`` or ``markdown``).

    Options:
        encoding: decode with this codec; by default a BOM decides, else UTF-8, else cp1252.
        max_bytes: larger files are reported, not read (the whole text becomes one document).
    """

    name: str = "text"
    version: str = "1"
    extensions: tuple[str, ...] = TEXT_EXTENSIONS + MARKDOWN_EXTENSIONS

    def __init__(
        self,
        *,
        encoding: str | None = None,
        max_bytes: int = 50_000_000,
    ) -> None:
        check_positive("max_bytes", max_bytes)
        self.encoding = check_encoding_name(encoding)
        self.max_bytes = max_bytes

    def load(self, source: str) -> Iterator[SourceDocument | LoadFailure]:
        for item in iter_source_files(source, extensions=self.extensions):
            yield item if isinstance(item, LoadFailure) else self.load_file(item)

    def load_file(self, found: FoundFile) -> SourceDocument | LoadFailure:
        """Read one checked file (also used by DirectoryLoader)."""
        path = found.real_path
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                return LoadFailure(
                    found.source_path,
                    f"file is {size} bytes; the limit is max_bytes={self.max_bytes}",
                )
            with path.open("rb") as f:
                # Read at most one byte past the limit: the file may have grown since stat().
                data = f.read(self.max_bytes + 1)
        except OSError as exc:
            return LoadFailure(found.source_path, f"cannot read: {exc.strerror or exc}")
        if len(data) > self.max_bytes:
            return LoadFailure(found.source_path, f"file is over the limit max_bytes={self.max_bytes}")
        text, encoding = _decode_text(data, encoding=self.encoding, candidates=TEXT_ENCODINGS)
        if text is None:
            return LoadFailure(found.source_path, f"not a text file: {encoding}")
        # The name the user sees decides (a symlink's target may be named anything).
        is_markdown = found.source_path.lower().endswith(MARKDOWN_EXTENSIONS)
        metadata = base_metadata(
            loader=self.name, version=self.version, file_size=len(data), encoding=encoding
        )
        metadata["path"] = found.doc_id
        if is_markdown:
            title = markdown_title(text)
            if title is not None:
                metadata["title"] = title
        return SourceDocument(
            id=found.doc_id,
            source_path=found.source_path,
            source_type="markdown" if is_markdown else "text",
            text=text,
            metadata=metadata,
        )


def _decode_text(
    data: bytes, *, encoding: str | None, candidates: Sequence[str]
) -> tuple[str, str] | tuple[None, str]:
    """Decode, refusing data that is binary: NUL bytes (outside UTF-16/32) or many controls."""
    text, used = decode_bytes(data, encoding=encoding, candidates=candidates)
    if text is None:
        return None, used
    if "\x00" in text:
        return None, f"contains NUL bytes (binary data?) when decoded as {used}"
    sample = text[:_SNIFF_CHARS]
    controls = len(_CONTROL.findall(sample))
    if sample and controls / len(sample) > _BINARY_CONTROL_SHARE:
        return None, f"{controls} control characters in the first {len(sample)} (binary data?)"
    return text, used


def markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading (``# Title``), if any."""
    match = _ATX_H1.search(text)
    return match.group(1).strip() if match else None
