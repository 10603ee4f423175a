"""BEIR folders: ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/<split>.tsv`` (tab-separated, header
``query-id corpus-id score``), read into an :class:`EvalDataset`."""

from __future__ import annotations

import os
from collections.abc import Container
from pathlib import Path

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.evaluation.eval_dataset import (
    EvalDataset,
    check_max_queries,
    dataset_digest,
    iter_jsonl,
    parse_grade,
)

_BEIR_QRELS_HEADER = ["query-id", "corpus-id", "score"]


def load_beir_folder(
    path: str | os.PathLike[str],
    *,
    split: str = "test",
    max_queries: int | None = None,
    name: str | None = None,
) -> EvalDataset:
    """Load a BEIR-layout folder, keeping only the queries judged in ``qrels/<split>.tsv``.

    ``max_queries`` keeps the first N queries in the order they first appear in the qrels file
    (deterministic, and the order BEIR files list them in). ``name`` defaults to the folder
    name.

    Raises:
        InvalidInput: not a BEIR folder, a malformed line, or a judged query missing from
            ``queries.jsonl``.
        UnknownChoice: ``split`` has no qrels file (the message names the splits that exist).
    """
    folder = Path(path).expanduser()
    check_max_queries(max_queries)
    missing = [f for f in ("corpus.jsonl", "queries.jsonl", "qrels") if not (folder / f).exists()]
    if missing:
        raise InvalidInput(
            f"{str(folder)!r} is not a BEIR folder: missing {missing} (expected corpus.jsonl, "
            "queries.jsonl and qrels/<split>.tsv)"
        )
    qrels_file = folder / "qrels" / f"{split}.tsv"
    if not qrels_file.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise UnknownChoice("split", split, splits)

    qrels = _read_beir_qrels(qrels_file)
    if max_queries is not None:
        qrels = dict(list(qrels.items())[:max_queries])
    queries = _read_beir_queries(folder / "queries.jsonl", wanted=qrels.keys())
    absent = [qid for qid in qrels if qid not in queries]
    if absent:
        raise InvalidInput(
            f"{len(absent)} queries judged in {qrels_file} are missing from queries.jsonl, e.g. {absent[:5]}"
        )
    queries = {qid: queries[qid] for qid in qrels}  # qrels order, so max_queries is visible
    corpus = folder / "corpus.jsonl"
    return EvalDataset(
        name=name or folder.resolve().name,
        corpus_path=corpus,
        queries=queries,
        qrels=qrels,
        digest=dataset_digest(queries, qrels, corpus),
        source=str(folder),
        split=split,
    )


def _read_beir_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if line_no == 1 and fields == _BEIR_QRELS_HEADER:
                continue
            if len(fields) != 3:
                raise InvalidInput(
                    f"{path} line {line_no}: expected 3 tab-separated fields "
                    f"(query-id, corpus-id, score), got {len(fields)}: {line[:80]!r}"
                )
            qid, doc_id, score = (x.strip() for x in fields)
            grade = parse_grade(score, where=f"{path} line {line_no}")
            # A repeated pair keeps its last grade, as trec_eval does.
            qrels.setdefault(qid, {})[doc_id] = grade
    if not qrels:
        raise InvalidInput(f"{path} holds no judgements")
    return qrels


def _read_beir_queries(path: Path, *, wanted: Container[str]) -> dict[str, str]:
    queries: dict[str, str] = {}
    for line_no, obj in iter_jsonl(path):
        qid, text = obj.get("_id"), obj.get("text")
        if not isinstance(qid, str | int) or isinstance(qid, bool) or not isinstance(text, str):
            raise InvalidInput(f"{path} line {line_no}: expected an object with string '_id' and 'text'")
        if str(qid) in wanted:  # big query files (msmarco) hold far more than one split
            queries[str(qid)] = text
    return queries
