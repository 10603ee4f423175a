"""The columns of a table (CSV, JSONL): which hold free text (by the length and word count of
a sample of values), which personal data (by name), which the document id; the header's
blank and repeated names, and a bounded list of names for messages."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Auto-detection of free-text columns: mean length and mean word count of the non-empty
# values in the first rows. Titles, names, countries and URL lists fall below; abstracts,
# bios and descriptions are far above.
MIN_MEAN_CHARS = 80.0
MIN_MEAN_WORDS = 10.0
_NAMES_SHOWN = 20  # column names quoted in an error message


@dataclass(frozen=True)
class ColumnStats:
    """Non-empty values seen in a column sample, with their total characters and words."""

    values: int = 0
    chars: int = 0
    words: int = 0

    @property
    def mean_chars(self) -> float:
        return self.chars / self.values if self.values else 0.0

    @property
    def mean_words(self) -> float:
        return self.words / self.values if self.values else 0.0


def choose_text_columns(
    stats: Mapping[str, ColumnStats],
    *,
    min_mean_chars: float = MIN_MEAN_CHARS,
    min_mean_words: float = MIN_MEAN_WORDS,
) -> list[str]:
    """The long free-text columns, in column order.

    A column qualifies when its non-empty values average at least ``min_mean_chars``
    characters and ``min_mean_words`` words. If none does, the column with the longest values
    is chosen so every file yields some text (an empty mapping gives an empty list).
    """
    chosen = [
        name
        for name, s in stats.items()
        if s.values and s.mean_chars >= min_mean_chars and s.mean_words >= min_mean_words
    ]
    if chosen or not stats:
        return chosen
    longest = max(stats, key=lambda name: stats[name].mean_chars)
    return [longest] if stats[longest].values else []

# Column names that usually hold personal data. Used only when the caller names no PII
# columns: a loader that publishes e-mail addresses by default is the wrong default.
_PII_NAME = re.compile(r"e-?mail|\bmail|phone|mobile|telephone|social|handle|linkedin|twitter|"
                       r"passport|birth|ssn|\baddress|adress", re.IGNORECASE)
_ID_NAMES = ("id", "_id", "doc_id", "document_id", "key", "name", "title")


def guess_pii_columns(header: Sequence[str]) -> list[str]:
    """Columns whose names suggest personal data (e-mail, phone, social handles...)."""
    return [c for c in header if _PII_NAME.search(c)]


def guess_id_column(header: Sequence[str]) -> str | None:
    """The first of id / _id / doc_id / key / name / title present (case-insensitive)."""
    lowered = {c.strip().lower(): c for c in header}
    return next((lowered[n] for n in _ID_NAMES if n in lowered), None)


def duplicate_names(header: Sequence[str]) -> list[str]:
    """Names that occur more than once, sorted (one pass: a header can be wide)."""
    seen: set[str] = set()
    repeated: set[str] = set()
    for name in header:
        (repeated if name in seen else seen).add(name)
    return sorted(repeated)


def some_names(names: Sequence[str]) -> str:
    """At most _NAMES_SHOWN names for a message, saying how many more there are."""
    if len(names) <= _NAMES_SHOWN:
        return str(list(names))
    return f"{list(names[:_NAMES_SHOWN])} and {len(names) - _NAMES_SHOWN} more"


def name_blank_columns(header: list[str]) -> list[str]:
    """Give unnamed columns (a trailing comma in the header) a usable name."""
    return [name if name.strip() else f"column {i + 1}" for i, name in enumerate(header)]
