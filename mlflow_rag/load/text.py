"""Plain-text, Markdown and HTML files: one file, a folder (recursive) or a glob pattern.

Each file is one SourceDocument whose id is its path relative to the folder / glob root, in
posix form, so the same tree ingested from another machine or OS gets the same ids. Markdown
YAML front matter becomes metadata; HTML is turned into text as web pages are.
"""

from __future__ import annotations

import codecs
import datetime as dt
import functools
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

from mlflow_rag.load._common import (
    DEFAULT_ENCODINGS,
    RESERVED_METADATA_KEYS,
    base_metadata,
    check_encoding_name,
    check_positive,
    decode_bytes,
)
from mlflow_rag.load._paths import FoundFile, iter_source_files
from mlflow_rag.load.html_text import html_meta_charset, html_to_text
from mlflow_rag.types import LoadFailure, SourceDocument

TEXT_EXTENSIONS = (".txt", ".text")
MARKDOWN_EXTENSIONS = (".md", ".markdown")
HTML_EXTENSIONS = (".html", ".htm")
# Without a BOM: UTF-8, else cp1252. latin-1 is left out on purpose: it decodes any bytes, so
# a binary file named .txt would "succeed" as mojibake instead of being reported.
TEXT_ENCODINGS = DEFAULT_ENCODINGS[:2]

# C0 control characters other than tab, newline, vertical tab, form feed, carriage return and
# escape. Real text has almost none; binary data decoded as cp1252 has plenty.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_BINARY_CONTROL_SHARE = 0.01
_SNIFF_CHARS = 65_536
_ATX_H1 = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# YAML front matter: a "---" first line, then YAML, then a "---" (or "...") line.
_FRONT_OPEN = re.compile(r"---[ \t]*\r?\n")
_FRONT_CLOSE = re.compile(r"^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.MULTILINE)
_KEY_LINE = re.compile(r"[A-Za-z_][\w.-]*:(?:[ \t]|$)", re.MULTILINE)
MAX_FRONT_MATTER_CHARS = 65_536
MAX_FRONT_MATTER_DEPTH = 16  # nesting of the metadata a filter can reach; deeper is refused
# Front matter keys that would hide or fake what the loader records are kept as "field:<key>".
_FRONT_MATTER_RESERVED = RESERVED_METADATA_KEYS | {"path", "front_matter"}


class TextLoader:
    """Loads ``.txt`` / ``.md`` / ``.markdown`` / ``.html`` / ``.htm`` files (source_type
    ``text``, ``markdown`` or ``html``).

    Markdown: YAML front matter (a ``---`` block at the very start) is taken out of the text
    and its keys become metadata (``title`` wins over the first ``# heading``; dates become ISO
    strings; ``metadata["front_matter"]`` lists the keys); front matter that is not valid
    YAML, or uses aliases, is a LoadFailure (see :func:`split_front_matter`). HTML: converted
    to text as the web loader does (scripts, styles and navigation dropped, headings as ``#``
    lines, ``<title>`` as title).

    Options:
        encoding: decode with this codec; by default a BOM decides (for HTML then a
            ``<meta charset>``), else UTF-8, else cp1252.
        max_bytes: larger files are reported, not read (the whole text becomes one document).
    """

    name: str = "text"
    version: str = "1"
    extensions: tuple[str, ...] = TEXT_EXTENSIONS + MARKDOWN_EXTENSIONS + HTML_EXTENSIONS

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
        # The name the user sees decides (a symlink's target may be named anything).
        name = found.source_path.lower()
        kind = "markdown" if name.endswith(MARKDOWN_EXTENSIONS) else "html" if name.endswith(
            HTML_EXTENSIONS) else "text"
        declared = self.encoding
        if declared is None and kind == "html":
            declared = _known_codec(html_meta_charset(data[:4096]))
        text, encoding = _decode_text(data, encoding=declared, candidates=TEXT_ENCODINGS)
        if text is None:
            return LoadFailure(found.source_path, f"not a text file: {encoding}")
        metadata = base_metadata(
            loader=self.name, version=self.version, file_size=len(data), encoding=encoding
        )
        metadata["path"] = found.doc_id
        title: str | None = None
        if kind == "html":
            text, title = html_to_text(text)
        elif kind == "markdown":
            front = split_front_matter(text)
            if isinstance(front, str):
                return LoadFailure(found.source_path, front)
            fields, text = front
            if fields:
                for key, value in fields.items():
                    metadata[f"field:{key}" if key in _FRONT_MATTER_RESERVED else key] = value
                metadata["front_matter"] = list(fields)
                if isinstance(fields.get("title"), str) and fields["title"].strip():
                    title = fields["title"].strip()
            title = title or markdown_title(text)
        if title is not None:
            metadata["title"] = title
        return SourceDocument(
            id=found.doc_id,
            source_path=found.source_path,
            source_type=kind,
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


def _known_codec(name: str | None) -> str | None:
    """A codec name Python knows, else None (a page's meta tag may name anything)."""
    if not name:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def split_front_matter(text: str) -> tuple[dict[str, Any], str] | str:
    """(fields, text after the front matter), or the reason the front matter is refused.

    Front matter is a YAML mapping between a ``---`` first line and the next ``---`` (or
    ``...``) line, at most 64 KiB. Anything else there (no closing line, a paragraph or a list
    between two thematic breaks) is Markdown and gives ``({}, text)``. A block that starts like
    ``key:`` but is not valid YAML is refused, naming the line. Values are made JSON-safe
    (dates as ISO strings). Aliases are refused: expanded, a few lines of them can describe
    gigabytes of metadata.
    """
    opening = _FRONT_OPEN.match(text)
    if opening is None:
        return {}, text
    closing = _FRONT_CLOSE.search(text, opening.end())
    if closing is None:
        return {}, text  # an unclosed "---" is a thematic break, not front matter
    if closing.start() - opening.end() > MAX_FRONT_MATTER_CHARS:
        return {}, text  # two thematic breaks far apart
    block = text[opening.end() : closing.start()]
    body = text[closing.end() :]
    if not block.strip():
        return {}, body
    import yaml

    try:
        data = yaml.load(block, Loader=_no_alias_loader())  # a SafeLoader that refuses aliases
    except yaml.YAMLError as exc:
        if not _KEY_LINE.match(block.lstrip("\r\n")):
            return {}, text  # Markdown between two thematic breaks, not front matter
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 2})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return f"front matter is not valid YAML: {problem}{where}"
    except RecursionError:
        return "front matter is nested too deeply"
    if not isinstance(data, dict):
        # A paragraph or a list between two thematic breaks: Markdown, kept as text.
        return ({}, body) if data is None else ({}, text)
    try:
        return {str(k): _json_safe(v, MAX_FRONT_MATTER_DEPTH) for k, v in data.items()}, body
    except _TooDeep:
        return f"front matter is nested deeper than {MAX_FRONT_MATTER_DEPTH} levels"


class _TooDeep(Exception):
    pass


def _json_safe(value: Any, depth: int) -> Any:
    if isinstance(value, (dict, list, tuple, set)) and depth <= 0:
        raise _TooDeep
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v, depth - 1) for v in value]
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # .nan / .inf: JSON has no such numbers
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # bytes (!!binary) and the like


@functools.cache
def _no_alias_loader() -> type:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in front matter", event.start_mark
                )
            return super().compose_node(parent, index)

    return NoAliasLoader
