"""The evaluated dataset (:class:`EvalDataset`: queries, graded qrels, the corpus file, a
digest) and what its readers share: the digest, JSONL lines, grades, the ``max_queries`` check."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_rag.errors import InvalidInput


@dataclass(frozen=True)
class EvalDataset:
    """Queries and graded qrels (``{query_id: {doc_id: grade}}``), plus the corpus if any.

    ``digest`` is the SHA-256 over the canonical JSON of ``queries`` and ``qrels`` followed by
    the bytes of the corpus file; ``source`` says where the data came from (a path, or
    ``beir:<name>`` and its URL); ``split`` is the BEIR split, None for questions files.
    """

    name: str
    corpus_path: Path | None
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    digest: str
    source: str
    split: str | None = None

def dataset_digest(
    queries: dict[str, str], qrels: dict[str, dict[str, int]], corpus_path: Path | None
) -> str:
    """SHA-256 over canonical JSON of queries and qrels, then the corpus file's bytes.

    Canonical: keys sorted, no whitespace, UTF-8, so the digest depends on content only, not on
    file order or formatting of the queries and qrels.
    """
    h = hashlib.sha256(b"mlflow-rag eval dataset v1\n")
    payload = {"queries": queries, "qrels": qrels}
    h.update(json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
    h.update(b"\ncorpus\n")
    if corpus_path is not None:
        _update_with_file(h, corpus_path)
    return h.hexdigest()


def corpus_digest(corpus_path: Path) -> str:
    """SHA-256 of the corpus file's bytes: what a store built from it depends on (the queries
    and judgements do not change a single chunk or vector)."""
    h = hashlib.sha256()
    _update_with_file(h, corpus_path)
    return h.hexdigest()


def _update_with_file(h: Any, path: Path) -> None:
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not an object is an error."""
    with path.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"{path} line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InvalidInput(f"{path} line {line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def parse_grade(value: object, *, where: str) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{where}: grade {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise InvalidInput(f"{where}: grade {value!r} is not an integer")


def check_max_queries(max_queries: int | None) -> None:
    if max_queries is not None and (
        isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1
    ):
        raise InvalidInput(f"max_queries must be an integer >= 1 or None, got {max_queries!r}")
