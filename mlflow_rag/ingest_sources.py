"""Loading sources and the documents' ids: which loader reads what, what a document must be to
be stored, and the checks that keep two files from sharing one id."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlflow_rag.errors import IdCollision, InvalidInput
from mlflow_rag.ingest_report import printable
from mlflow_rag.store.checks import content_hash
from mlflow_rag.store.store import Store
from mlflow_rag.types import LoadFailure, SourceDocument

# Generic ingest options -> each loader's own option names. Options a loader has no use for
# are not passed to it; an option no source could use is an error (see load_sources).
_LOADER_OPTION_NAMES: dict[str, dict[str, str]] = {
    "csv": {"id_column": "id_column", "text_columns": "text_columns", "pii_columns": "pii_columns"},
    "jsonl": {"id_column": "id_field", "text_columns": "text_fields", "pii_columns": "pii_fields"},
    "web": {"allow_private": "allow_private"},
}


def loader_options_for(loader: str, options: Mapping[str, Any]) -> dict[str, Any]:
    names = _LOADER_OPTION_NAMES.get(loader, {})
    return {names[k]: v for k, v in options.items() if k in names}


# A lone UTF-16 surrogate (a JSON "\ud800" escape, a broken PDF font map, a file name that is
# not UTF-8) is a str Python holds but cannot encode; an integer beyond 64 bits or a NaN cannot
# be stored either. Any of them would fail the whole write batch, so each is found first.
_SURROGATE = re.compile("[\ud800-\udfff]")
_INT64 = (-(2**63), 2**63 - 1)


def _unstorable(value: Any, *, depth: int = 0) -> tuple[str, int | None] | None:
    """(what cannot be stored, its character offset in a str) of the first such thing in a
    str or nested JSON value, or None."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        return (f"a lone surrogate U+{ord(found.group()):04X}", found.start()) if found else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return None
        return f"an integer of {value.bit_length()} bits (at most 64 can be stored)", None
    if isinstance(value, float):
        return None if math.isfinite(value) else (f"the number {value!r}", None)
    if depth > 500:  # also keeps this walk far from Python's recursion limit
        return "values nested more than 500 deep", None
    if isinstance(value, Mapping):
        items: Iterable[Any] = (part for pair in value.items() for part in pair)
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return None
    for item in items:
        hit = _unstorable(item, depth=depth + 1)
        if hit is not None:
            return hit
    return None


def document_problem(document: SourceDocument) -> str | None:
    """Why a loaded document cannot be stored as it is, or None.

    Ids with NUL cannot be typed, shown or deleted from a shell; lone surrogates are not
    valid Unicode and, like integers beyond 64 bits, cannot be written. Each costs this
    document alone, never its batch.
    """
    if "\0" in document.id:
        return (f"document id {document.id!r} contains a NUL character; such an id could "
                "not be shown or deleted from the command line")
    parts: list[tuple[str, Any]] = [
        ("id", document.id), ("source path", document.source_path), ("text", document.text),
        ("section names", [s.name for s in document.sections]),
        ("section metadata", [s.metadata for s in document.sections]),
        ("metadata", document.metadata), ("PII fields", document.pii),
    ]
    for where, value in parts:
        hit = _unstorable(value)
        if hit is not None:
            what, offset = hit
            at = f" at character {offset}" if offset is not None and where in ("text", "id") else ""
            why = ("which is not valid Unicode (a bad \\u escape, font map or non-UTF-8 file "
                   "name?)" if what.startswith("a lone") else "which cannot be stored")
            return f"document {document.id!r} has {what} in its {where}{at}, {why}; not loaded"
    return None


# --------------------------------------------------------------------------- document ids
#
# A document's id is what its loader chose: a file's path relative to the folder (or glob
# root) named, its name when the file itself is named, a CSV/JSONL id column, BEIR's _id, a
# page's URL. Relative ids stay the same on every machine and in every working directory, so
# stores, filters and qrels that name them keep working. What tells two files with the same
# id apart is where they come from: source_path is stored absolute, and an ingest that would
# replace a stored document by one from another file is refused (see check_id_collisions).

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def source_identity(source_path: str) -> str:
    """A URL as given; a file path made absolute (not following symlinks, so it reads as typed)."""
    return source_path if _URL.match(source_path) else os.path.abspath(source_path)


def same_source(stored: str, new: str) -> bool:
    """Whether two source paths name the same file (or both name web pages).

    A web page's id is its final URL, so two pages with one id are one page. A relative path
    (stores written before paths were stored absolute) is read from the current folder.
    """
    if stored == new:
        return True
    if _URL.match(stored) or _URL.match(new):
        return bool(_URL.match(stored) and _URL.match(new))
    return os.path.realpath(stored) == os.path.realpath(new)


def check_id_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or (prefix and not prefix.strip()) or _CONTROL.search(prefix):
        raise InvalidInput(
            f"id prefix {prefix!r} must be printable text that is not only spaces, e.g. 'corpus2/'"
        )
    return prefix


def _suggested_prefix(document: SourceDocument) -> str:
    """The folder the document was named from (``corpus2/`` for ``.../corpus2/notes.txt``)."""
    path = document.source_path
    root = path[: -len(document.id)] if path.endswith(os.sep + document.id) else os.path.dirname(path)
    name = os.path.basename(root.rstrip(os.sep)) or "source2"
    return f"{name}/"


def check_id_collisions(documents: Sequence[SourceDocument], store: Store) -> None:
    """Refuse, before anything is written, documents that would replace a stored document of
    the same id from another file. The same text from another place (a folder that moved) is
    no loss and passes."""
    stored = store.catalog.document_sources([d.id for d in documents])
    clashes = [
        (d, stored[d.id][0]) for d in documents
        if d.id in stored and not same_source(stored[d.id][0], d.source_path)
        and stored[d.id][1] != content_hash(d.text)
    ]
    if not clashes:
        return
    shown = "; ".join(f"{d.id!r} (stored from {old}, now {d.source_path})" for d, old in clashes[:3])
    more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
    raise IdCollision(
        f"{len(clashes)} document id(s) already belong to documents from other files: {shown}{more}; "
        f"nothing was written. Keep both with an id prefix (--id-prefix {_suggested_prefix(clashes[0][0])}), "
        "or, if these are the same documents moved, replace them with --overwrite"
    )


# Loaders that make one document of a whole file: such a file stored under another id (its
# folder was named differently) would be a duplicate.
_ONE_DOCUMENT_PER_FILE = frozenset({"text", "markdown", "html", "pdf"})


def stored_under_other_ids(
    documents: Sequence[SourceDocument], store: Store
) -> tuple[list[SourceDocument], list[LoadFailure]]:
    """Split off files that are already stored under another id (``sub/a.txt`` when the folder
    was named, ``a.txt`` when the subfolder is): loading them again would duplicate them."""
    files = [d.source_path for d in documents if d.source_type in _ONE_DOCUMENT_PER_FILE]
    stored = store.catalog.document_ids_by_source(files) if files else {}
    keep: list[SourceDocument] = []
    failures: list[LoadFailure] = []
    for document in documents:
        others = [i for i in stored.get(document.source_path, ()) if i != document.id]
        if others and document.source_type in _ONE_DOCUMENT_PER_FILE:
            failures.append(LoadFailure(
                document.source_path,
                f"this file is already stored as document {others[0]!r}, not loaded again as "
                f"{document.id!r}: ids are paths relative to the folder named, so name the same "
                f"folder as before, or remove the old one first (mlflow-rag delete {others[0]!r})"))
        else:
            keep.append(document)
    return keep, failures



def load_sources(
    sources: Sequence[str], *, loader_options: Mapping[str, Any] | None = None,
    progress: bool = True, id_prefix: str = "", skipped: dict[str, int] | None = None,
) -> tuple[list[SourceDocument], list[LoadFailure], list[str]]:
    """Load every source; bad items are reported, the rest land. Returns loader names too.

    Every document's id gets ``id_prefix`` in front and its source_path is made absolute. A
    document named twice (a folder and a file in it) is loaded once; two files with one id
    are a failure for the second. Files of folders and globs that no loader reads are counted
    by extension into ``skipped`` when it is given.
    """
    from tqdm import tqdm

    from mlflow_rag.load.registry import choose_loader, make_loader

    check_id_prefix(id_prefix)
    documents: list[SourceDocument] = []
    failures: list[LoadFailure] = []
    loaders: list[str] = []
    seen: dict[str, str] = {}
    generic = dict(loader_options or {})
    kinds = [choose_loader(source) for source in sources]
    used = {k for kind in kinds for k in generic if k in _LOADER_OPTION_NAMES.get(kind, {})}
    if set(generic) - used:
        unused = sorted(set(generic) - used)
        raise InvalidInput(f"option(s) {unused} do not apply to these sources ({sorted(set(kinds))})")
    for source, kind in zip(sources, kinds, strict=True):
        loader = make_loader(kind, options=loader_options_for(kind, generic))
        loaders.append(loader.name)
        for item in tqdm(loader.load(source), desc=f"load {Path(source).name or source}",
                         unit="doc", disable=not progress, leave=False):
            if isinstance(item, LoadFailure):
                failures.append(item)
                continue
            item = replace(item, id=id_prefix + item.id, source_path=source_identity(item.source_path))
            if (problem := document_problem(item)) is not None:
                failures.append(LoadFailure(printable(item.source_path), problem))
            elif item.id in seen:
                if not same_source(seen[item.id], item.source_path):
                    failures.append(LoadFailure(
                        item.source_path,
                        f"document id {item.id!r} also comes from {seen[item.id]}; ingest these "
                        "sources one at a time with --id-prefix to keep both"))
            elif not item.text.strip():
                failures.append(LoadFailure(item.source_path, f"document {item.id!r} has no text"))
            else:
                seen[item.id] = item.source_path
                documents.append(item)
        if skipped is not None:
            for extension, count in getattr(loader, "skipped", {}).items():
                skipped[extension] = skipped.get(extension, 0) + count
    return documents, failures, loaders


