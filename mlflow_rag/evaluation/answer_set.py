"""A question/answer set: questions with a reference answer and the ids of the documents that
answer them (``evaluations/speakers_qa.jsonl``). JSON lines, one question a line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.eval_dataset import EvalDataset, dataset_digest

FIELDS = ("id", "question", "reference_answer", "relevant_ids")


@dataclass(frozen=True)
class QAItem:
    id: str
    question: str
    reference_answer: str
    relevant_ids: tuple[str, ...]


def load_qa_set(path: str | Path) -> tuple[QAItem, ...]:
    """Every line of a ``.jsonl`` file as a :class:`QAItem`; a bad line is one error naming
    the file, the line and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"no question/answer set at {path} (a .jsonl file with fields "
                           f"{list(FIELDS)})")
    items: list[QAItem] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"{where}: expected an object with fields {list(FIELDS)}")
        missing = [f for f in FIELDS if f not in row]
        extra = sorted(set(row) - set(FIELDS))
        if missing or extra:
            raise InvalidInput(f"{where}: missing fields {missing}, unknown fields {extra}; "
                               f"a line has exactly {list(FIELDS)}")
        ids = row["relevant_ids"]
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
            raise InvalidInput(f"{where}: relevant_ids must be a non-empty list of document "
                               f"ids, got {ids!r}")
        if not all(isinstance(row[f], str) and row[f].strip()
                   for f in ("id", "question", "reference_answer")):
            raise InvalidInput(f"{where}: id, question and reference_answer must be text")
        if row["id"] in seen:
            raise InvalidInput(f"{where}: question id {row['id']!r} appears twice")
        seen.add(row["id"])
        items.append(QAItem(id=row["id"], question=row["question"],
                            reference_answer=row["reference_answer"],
                            relevant_ids=tuple(ids)))
    if not items:
        raise InvalidInput(f"{path}: no questions")
    return tuple(items)


def as_eval_dataset(items: Sequence[QAItem], *, name: str, source: str) -> EvalDataset:
    """The set as the retrieval harness's dataset (questions and binary qrels, no corpus), so
    ``evaluate-answers --variants`` builds and finds its stores as ``evaluate`` does."""
    queries = {item.id: item.question for item in items}
    qrels = {item.id: dict.fromkeys(item.relevant_ids, 1) for item in items}
    return EvalDataset(name=name, corpus_path=None, queries=queries, qrels=qrels,
                       digest=dataset_digest(queries, qrels, None), source=source)
