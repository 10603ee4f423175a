"""Questions files: a user's own questions and the ids of the documents that answer them, for
their own corpus. UTF-8, chosen by suffix.

``.csv`` with a header row, in one of two forms (extra columns are ignored):

- one row per question: ``query,relevant_ids[,grades][,query_id]``. ``relevant_ids`` holds
  document ids separated by ``|`` or ``;``; ``grades`` (optional) holds one integer per id in
  the same order and with the same separators, default 1 for every id::

      query,relevant_ids,grades
      What is the refund policy?,doc-12|doc-40,2|1

- one row per judgement: ``query,doc_id[,grade][,query_id]`` (``grade`` defaults to 1); use this
  form when ids contain ``|`` or ``;``::

      query,doc_id,grade
      What is the refund policy?,doc-12,2
      What is the refund policy?,doc-40,1

``.jsonl``: one object per line (blank lines skipped), ids as strings (integers are accepted and
turned into strings)::

    {"query": "What is the refund policy?", "relevant_ids": ["doc-12", "doc-40"], "grades": [2, 1]}

In every form ``grades`` are integers, and a grade <= 0 means "judged not relevant". Rows of
the same question (same ``query_id``, else same query text) are merged; one document given
two different grades for one question is an error. Without a ``query_id`` a question's id is
``q_`` + the first 12 hex digits of the SHA-256 of its text: stable when rows are reordered or
other questions are added, so per-query results of two runs line up. Errors name the file, the
line and the bad value, never the query text (it may be private)."""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.evaluation.eval_dataset import (
    EvalDataset,
    check_max_queries,
    dataset_digest,
    iter_jsonl,
    parse_grade,
)

QUESTIONS_FORMATS = (".csv", ".jsonl")
_ID_SEPARATORS = re.compile(r"[|;]")
_CSV_COLUMNS = ("query", "query_id", "relevant_ids", "grades", "doc_id", "grade")


def load_questions_file(
    path: str | os.PathLike[str],
    *,
    max_queries: int | None = None,
    name: str | None = None,
) -> EvalDataset:
    """Load the user's own questions and relevant document ids (format: this module's docstring).

    ``max_queries`` keeps the first N questions in file order; ``name`` defaults to the file
    stem. ``corpus_path`` is None: the corpus is whatever the store under test holds.

    Raises:
        UnknownChoice: a suffix other than ``.csv`` / ``.jsonl``.
        InvalidInput: a bad header, line or value (the message names the line and the value).
    """
    file = Path(path).expanduser()
    check_max_queries(max_queries)
    suffix = file.suffix.lower()
    if suffix not in QUESTIONS_FORMATS:
        raise UnknownChoice("questions file format", suffix or file.name, QUESTIONS_FORMATS)
    if not file.is_file():
        raise InvalidInput(f"questions file {str(file)!r} does not exist")
    rows = _questions_csv_rows(file) if suffix == ".csv" else _questions_jsonl_rows(file)

    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for where, query_id, query, doc_ids, grades in rows:
        qid = query_id or "q_" + hashlib.sha256(query.encode("utf-8")).hexdigest()[:12]
        if queries.setdefault(qid, query) != query:
            raise InvalidInput(f"{where}: query_id {qid!r} was given before with another query")
        judged = qrels.setdefault(qid, {})
        for doc_id, grade in zip(doc_ids, grades, strict=True):
            if judged.setdefault(doc_id, grade) != grade:
                raise InvalidInput(
                    f"{where}: document {doc_id!r} was given grade {judged[doc_id]} for this "
                    f"query before, now {grade}"
                )
    if not qrels:
        raise InvalidInput(f"questions file {str(file)!r} holds no questions")
    if max_queries is not None:
        keep = list(qrels)[:max_queries]
        queries = {q: queries[q] for q in keep}
        qrels = {q: qrels[q] for q in keep}
    return EvalDataset(
        name=name or file.stem,
        corpus_path=None,
        queries=queries,
        qrels=qrels,
        digest=dataset_digest(queries, qrels, None),
        source=str(file),
        split=None,
    )


# (where, query_id or None, query text, doc ids, grades) for one row of a questions file
_QuestionRow = tuple[str, str | None, str, list[str], list[int]]


def _questions_csv_rows(path: Path) -> Iterator[_QuestionRow]:
    # utf-8-sig: spreadsheets save CSV with a byte-order mark that would rename the 1st column.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header_row = next(reader, None)
        if header_row is None:
            raise InvalidInput(f"{path}: empty file; expected a header row")
        header = [h.strip().lower() for h in header_row]
        col = {h: i for i, h in enumerate(header) if h}
        wide, long = "relevant_ids" in col, "doc_id" in col
        if "query" not in col or wide == long:
            # Only known column names are echoed: a file without a header row would otherwise
            # put its first question's text into the message.
            known = [h for h in header if h in _CSV_COLUMNS]
            raise InvalidInput(
                f"{path} line 1: the header (known columns {known}) needs a 'query' column and "
                "exactly one of 'relevant_ids' (one row per question) or 'doc_id' (one row per "
                "judgement)"
            )
        if (wide and "grade" in col) or (long and "grades" in col):
            raise InvalidInput(f"{path} line 1: use 'grades' with 'relevant_ids' and 'grade' with 'doc_id'")
        line_no = reader.line_num + 1  # the physical line a record starts on
        for record in reader:
            where, line_no = f"{path} line {line_no}", reader.line_num + 1
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(header):
                raise InvalidInput(f"{where}: {len(record)} fields, the header has {len(header)}")

            # Absent optional columns read as empty cells.
            cell = dict.fromkeys(_CSV_COLUMNS, "") | {n: record[i].strip() for n, i in col.items()}
            query = cell["query"]
            if not query:
                raise InvalidInput(f"{where}: empty 'query'")
            if wide:
                doc_ids = [d.strip() for d in _ID_SEPARATORS.split(cell["relevant_ids"])]
                if not all(doc_ids):
                    raise InvalidInput(f"{where}: 'relevant_ids' {cell['relevant_ids']!r} has an empty id")
                raw_grades = cell["grades"]
                grade_texts = [g.strip() for g in _ID_SEPARATORS.split(raw_grades)] if raw_grades else []
            else:
                doc_ids = [cell["doc_id"]]
                if not doc_ids[0]:
                    raise InvalidInput(f"{where}: empty 'doc_id'")
                grade_texts = [cell["grade"]] if cell["grade"] else []
            if grade_texts and len(grade_texts) != len(doc_ids):
                raise InvalidInput(
                    f"{where}: {len(doc_ids)} relevant ids but {len(grade_texts)} grades ({cell['grades']!r})"
                )
            grades = [parse_grade(g, where=where) for g in grade_texts] or [1] * len(doc_ids)
            yield where, cell["query_id"] or None, query, doc_ids, grades


def _questions_jsonl_rows(path: Path) -> Iterator[_QuestionRow]:
    for line_no, obj in iter_jsonl(path):
        where = f"{path} line {line_no}"
        query, ids, grades, query_id = (
            obj.get("query"),
            obj.get("relevant_ids"),
            obj.get("grades"),
            obj.get("query_id"),
        )
        if not isinstance(query, str) or not query.strip():
            raise InvalidInput(f"{where}: 'query' must be a non-empty string")
        if query_id is not None and not isinstance(query_id, str | int):
            raise InvalidInput(f"{where}: 'query_id' must be a string, got {query_id!r}")
        if not isinstance(ids, list) or not ids:
            raise InvalidInput(f"{where}: 'relevant_ids' must be a non-empty list, got {ids!r}")
        doc_ids = []
        for doc_id in ids:
            if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
                raise InvalidInput(f"{where}: relevant id {doc_id!r} is not a non-empty string")
            doc_ids.append(str(doc_id))
        if grades is None:
            grade_values = [1] * len(doc_ids)
        elif not isinstance(grades, list) or len(grades) != len(doc_ids):
            raise InvalidInput(
                f"{where}: 'grades' must be a list with one integer per relevant id "
                f"({len(doc_ids)}), got {grades!r}"
            )
        else:
            grade_values = [parse_grade(g, where=where) for g in grades]
        qid = str(query_id) if query_id is not None and query_id != "" else None
        yield where, qid, query.strip(), doc_ids, grade_values
