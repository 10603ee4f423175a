"""HTML turned into Markdown-ish plain text (``#`` heading lines, blank lines between blocks;
scripts, styles and navigation dropped), and the charset a page's ``<meta>`` tag declares.
Used by the web loader and by the text loader for ``.html`` files."""

from __future__ import annotations

import re
from html.parser import HTMLParser

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)


def html_meta_charset(head: bytes) -> str | None:
    """The charset a ``<meta>`` tag in the first bytes of an HTML page declares, if any."""
    match = _META_CHARSET.search(head)
    return match.group(1).decode("ascii") if match else None


# Elements whose content is not page text.
_DROP = frozenset({"script", "style", "nav", "noscript", "template", "svg", "iframe", "object", "canvas"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "body",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "fieldset",
        "figcaption",
        "figure",
        "footer",
        "form",
        "header",
        "hr",
        "main",
        "ol",
        "p",
        "section",
        "summary",
        "table",
        "tbody",
        "thead",
        "tfoot",
        "tr",
        "ul",
    }
)
_SPACE = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _HtmlToText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title_parts: list[str] = []
        self._drop = 0
        self._pre = 0
        self._in_head = False
        self._in_title = False

    # Output helpers: blocks are separated by a blank line, inline text has its whitespace
    # collapsed (except inside <pre>), and no line starts with the collapsed space.
    def _at_line_start(self) -> bool:
        return not self.out or self.out[-1].endswith("\n")

    def _block(self) -> None:
        if self.out and not self.out[-1].endswith("\n\n"):
            self.out.append("\n\n" if not self.out[-1].endswith("\n") else "\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROP:
            self._drop += 1
        elif tag == "head":
            self._in_head = True
        elif tag == "title":
            self._in_title = True
        elif tag == "body":
            self._in_head = False
        if self._drop or self._in_head:
            return
        if tag in _HEADINGS:
            self._block()
            self.out.append("#" * _HEADINGS[tag] + " ")
        elif tag == "pre":
            self._block()
            self._pre += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag == "li":
            if not self._at_line_start():
                self.out.append("\n")
            self.out.append("- ")
        elif tag in ("td", "th"):
            if not self._at_line_start():
                self.out.append(" | ")
        elif tag in _BLOCKS:
            self._block()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" and not (self._drop or self._in_head):
            self.out.append("\n")
        elif tag == "hr" and not (self._drop or self._in_head):
            self._block()

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROP:
            self._drop = max(0, self._drop - 1)
            return
        if tag == "head":
            self._in_head = False
        elif tag == "title":
            self._in_title = False
        if self._drop or self._in_head:
            return
        if tag in _HEADINGS or tag in _BLOCKS:
            self._block()
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
            self._block()
        elif tag == "li":
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self._drop:
            return
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._in_head:
            return
        if self._pre:
            self.out.append(data)
            return
        text = _SPACE.sub(" ", data)
        if self._at_line_start() or (self.out and self.out[-1].endswith(" ")):
            text = text.lstrip(" ")
        if text:
            self.out.append(text)


def html_to_text(html: str) -> tuple[str, str | None]:
    """(text, title): page text with ``#`` heading lines and blank lines between blocks."""
    parser = _HtmlToText()
    parser.feed(html)
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.out).split("\n")]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    title = _SPACE.sub(" ", "".join(parser.title_parts)).strip() or None
    return text, title
