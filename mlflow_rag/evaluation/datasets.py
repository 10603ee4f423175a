"""Evaluation datasets: BEIR folders, the user's own questions files, and BEIR downloads.

An :class:`EvalDataset` holds queries and graded relevance judgements (qrels) that judge
*documents* by id, plus the corpus file when there is one. Its ``digest`` identifies exactly
what was evaluated, so two runs can be compared only when their digests agree.

BEIR folder (``load_beir_folder``)
    ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl`` (``{"_id", "text"}``)
    and ``qrels/<split>.tsv`` (tab-separated, header ``query-id corpus-id score``).

Questions file (``load_questions_file``), for a user's own corpus. UTF-8, chosen by suffix.

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
line and the bad value, never the query text (it may be private).

``resolve_dataset`` accepts a BEIR folder, a questions file or ``beir:<name>``: the official
BEIR zip, downloaded once and cached under ``<cache>/beir/<name>/``, where ``<cache>`` is the
``cache_dir`` argument, else ``$MLFLOW_RAG_CACHE_DIR``, else ``~/.cache/mlflow-rag``. The
download location is ``$MLFLOW_RAG_BEIR_URL`` (or ``base_url``) + ``/<name>.zip``.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Container, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from mlflow_rag.errors import InvalidInput, LoaderError, UnknownChoice

BEIR_BASE_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
#: The datasets the BEIR server hosts publicly (named in the error when a download is a 404).
BEIR_PUBLIC_DATASETS = (
    "arguana",
    "climate-fever",
    "cqadupstack",
    "dbpedia-entity",
    "fever",
    "fiqa",
    "hotpotqa",
    "msmarco",
    "nfcorpus",
    "nq",
    "quora",
    "scidocs",
    "scifact",
    "trec-covid",
    "webis-touche2020",
)
ENV_CACHE_DIR = "MLFLOW_RAG_CACHE_DIR"
ENV_BEIR_URL = "MLFLOW_RAG_BEIR_URL"
#: The largest BEIR zips (msmarco, climate-fever) are 1-2 GB; more than this is not BEIR.
DEFAULT_MAX_DOWNLOAD_BYTES = 4 * 1024**3
#: A zip's declared uncompressed size is checked before extraction (zip bombs). Text inflates
#: a few times, so the largest BEIR zips stay well inside this.
DEFAULT_MAX_EXTRACTED_BYTES = 8 * 1024**3
#: Text compresses well under 100x; a zip that claims more is a bomb. Archives inflating to
#: less than _RATIO_FLOOR are small enough not to matter.
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR = 64 * 1024**2
#: BEIR zips hold a handful of files (cqadupstack, the largest layout, under a hundred).
DEFAULT_MAX_MEMBERS = 1_000
QUESTIONS_FORMATS = (".csv", ".jsonl")

_MARKER = ".mlflow-rag-download.json"  # written last: its presence means the cache is complete
_BEIR_QRELS_HEADER = ["query-id", "corpus-id", "score"]
_ID_SEPARATORS = re.compile(r"[|;]")
_CSV_COLUMNS = ("query", "query_id", "relevant_ids", "grades", "doc_id", "grade")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


# --------------------------------------------------------------------------- BEIR folders


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
    _check_max_queries(max_queries)
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
            grade = _parse_grade(score, where=f"{path} line {line_no}")
            # A repeated pair keeps its last grade, as trec_eval does.
            qrels.setdefault(qid, {})[doc_id] = grade
    if not qrels:
        raise InvalidInput(f"{path} holds no judgements")
    return qrels


def _read_beir_queries(path: Path, *, wanted: Container[str]) -> dict[str, str]:
    queries: dict[str, str] = {}
    for line_no, obj in _iter_jsonl(path):
        qid, text = obj.get("_id"), obj.get("text")
        if not isinstance(qid, str | int) or isinstance(qid, bool) or not isinstance(text, str):
            raise InvalidInput(f"{path} line {line_no}: expected an object with string '_id' and 'text'")
        if str(qid) in wanted:  # big query files (msmarco) hold far more than one split
            queries[str(qid)] = text
    return queries


# --------------------------------------------------------------------------- questions files


def load_questions_file(
    path: str | os.PathLike[str],
    *,
    max_queries: int | None = None,
    name: str | None = None,
) -> EvalDataset:
    """Load the user's own questions and relevant document ids (format: module docstring).

    ``max_queries`` keeps the first N questions in file order; ``name`` defaults to the file
    stem. ``corpus_path`` is None: the corpus is whatever the store under test holds.

    Raises:
        UnknownChoice: a suffix other than ``.csv`` / ``.jsonl``.
        InvalidInput: a bad header, line or value (the message names the line and the value).
    """
    file = Path(path).expanduser()
    _check_max_queries(max_queries)
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
            grades = [_parse_grade(g, where=where) for g in grade_texts] or [1] * len(doc_ids)
            yield where, cell["query_id"] or None, query, doc_ids, grades


def _questions_jsonl_rows(path: Path) -> Iterator[_QuestionRow]:
    for line_no, obj in _iter_jsonl(path):
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
            grade_values = [_parse_grade(g, where=where) for g in grades]
        qid = str(query_id) if query_id is not None and query_id != "" else None
        yield where, qid, query.strip(), doc_ids, grade_values


# --------------------------------------------------------------------------- resolving specs


def resolve_dataset(
    spec: str | os.PathLike[str],
    *,
    split: str = "test",
    max_queries: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
    max_extracted_bytes: int = DEFAULT_MAX_EXTRACTED_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    progress: bool = True,
) -> EvalDataset:
    """Load ``spec``: a BEIR folder, a ``.csv``/``.jsonl`` questions file, or ``beir:<name>``.

    ``beir:<name>`` downloads ``<base_url>/<name>.zip`` once (streamed, at most
    ``max_download_bytes``, ``timeout`` seconds for connecting and for each read, a tqdm bar
    when ``progress`` and stderr is a terminal), checks it is a zip with the BEIR layout, at
    most ``max_members`` entries, inflating to at most ``max_extracted_bytes`` and at most
    100 times its size (zip bombs), extracts it refusing any member with an absolute path or
    ``..`` (a full disk is a LoaderError and leaves nothing behind), and caches the folder
    under ``<cache>/beir/<name>/`` (see the module docstring). Later calls read the cache and
    make no request. ``split`` is ignored for questions files.

    Raises:
        InvalidInput: a path that does not exist, or a bad dataset name.
        LoaderError: the download failed (HTTP error such as 404, too large, timeout) or the
            archive is not a safe BEIR zip.
    """
    text = os.fspath(spec)
    if text.startswith("beir:"):
        name = text[len("beir:") :]
        if not _DATASET_NAME.match(name) or ".." in name:
            raise InvalidInput(
                f"bad BEIR dataset name {name!r}; expected e.g. 'beir:scifact' "
                f"(public: {list(BEIR_PUBLIC_DATASETS)})"
            )
        url_base = (base_url or os.environ.get(ENV_BEIR_URL) or BEIR_BASE_URL).rstrip("/")
        url = f"{url_base}/{name}.zip"
        folder = _cached_beir_folder(
            name,
            url,
            cache_root=_cache_root(cache_dir),
            timeout=timeout,
            max_download_bytes=max_download_bytes,
            max_extracted_bytes=max_extracted_bytes,
            max_members=max_members,
            progress=progress,
        )
        dataset = load_beir_folder(folder, split=split, max_queries=max_queries, name=name)
        return replace(dataset, source=f"beir:{name} ({url})")
    path = Path(text).expanduser()
    if path.is_dir():
        return load_beir_folder(path, split=split, max_queries=max_queries)
    if path.is_file():
        return load_questions_file(path, max_queries=max_queries)
    raise InvalidInput(
        f"dataset {text!r} is neither an existing path (a BEIR folder or a .csv/.jsonl "
        "questions file) nor 'beir:<name>'"
    )


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$MLFLOW_RAG_CACHE_DIR``, else ``~/.cache/mlflow-rag``."""
    return _cache_root(cache_dir)


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlflow-rag"


def _cached_beir_folder(
    name: str,
    url: str,
    *,
    cache_root: Path,
    timeout: float,
    max_download_bytes: int,
    max_extracted_bytes: int,
    max_members: int,
    progress: bool,
) -> Path:
    beir_root = cache_root / "beir"
    final = beir_root / name
    if (final / _MARKER).is_file():
        return final
    beir_root.mkdir(parents=True, exist_ok=True)
    # Download and extract inside the cache directory, then rename: the rename is atomic on
    # one filesystem, so an interrupted download never leaves a folder that looks complete.
    with tempfile.TemporaryDirectory(dir=beir_root, prefix=f".{name}-") as tmp:
        zip_path = Path(tmp) / f"{name}.zip"
        sha256, size = _download(
            url, zip_path, timeout=timeout, max_bytes=max_download_bytes, progress=progress
        )
        staging = Path(tmp) / name
        _extract_beir_zip(zip_path, staging, max_extracted_bytes=max_extracted_bytes,
                          max_members=max_members, url=url)
        zip_path.unlink()
        marker = {
            "url": url,
            "sha256": sha256,
            "bytes": size,
            "downloaded_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
        (staging / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # a leftover without a marker: an earlier run died mid-way
            shutil.rmtree(final)
        try:
            staging.rename(final)
        except OSError:
            # Another process finished the same download first; its copy is as good as ours.
            if not (final / _MARKER).is_file():
                raise
    return final


def _download(url: str, dest: Path, *, timeout: float, max_bytes: int, progress: bool) -> tuple[str, int]:
    """Stream ``url`` into ``dest``; return (sha256, size). Raise LoaderError on any failure."""
    import httpx  # heavy-ish import, needed only when a download actually happens
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    size = 0
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code == 404:
                raise LoaderError(
                    f"BEIR dataset not found: GET {url} returned HTTP 404 (the public BEIR "
                    f"datasets are {list(BEIR_PUBLIC_DATASETS)})"
                )
            if response.status_code != 200:
                raise LoaderError(f"download failed: GET {url} returned HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            total = int(declared) if declared and declared.isdigit() else None
            if total is not None and total > max_bytes:
                raise LoaderError(
                    f"refusing {url}: {total} bytes is over the limit of {max_bytes} bytes "
                    "(raise max_download_bytes if this is expected)"
                )
            with (
                dest.open("wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=None if progress else True,  # None: only on a terminal
                ) as bar,
            ):
                for chunk in response.iter_bytes(chunk_size=1 << 20):
                    size += len(chunk)
                    if size > max_bytes:  # the server may not send (or may lie about) a length
                        raise LoaderError(f"refusing {url}: more than the limit of {max_bytes} bytes")
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except httpx.HTTPError as exc:
        raise LoaderError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:  # writing the zip: disk full, quota; the caller removes the part
        raise LoaderError(
            f"cannot save the download of {url}: {exc.strerror or exc} (disk full?); nothing was cached"
        ) from exc
    return digest.hexdigest(), size


def _extract_beir_zip(
    zip_path: Path, dest: Path, *, max_extracted_bytes: int, max_members: int, url: str
) -> None:
    """Extract the BEIR folder inside ``zip_path`` to ``dest`` (its top-level dir stripped)."""
    if not zipfile.is_zipfile(zip_path):
        raise LoaderError(f"{url} is not a zip archive")
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            if len(members) > max_members:
                raise LoaderError(
                    f"refusing {url}: it has {len(members)} entries; the limit is "
                    f"max_members={max_members} (a BEIR zip has a handful)"
                )
            for info in members:
                _check_member_is_safe(info, url=url)
            declared = sum(info.file_size for info in members)
            if declared > max_extracted_bytes:
                raise LoaderError(
                    f"refusing {url}: it would extract to {declared} bytes, over the limit of "
                    f"{max_extracted_bytes}"
                )
            size = zip_path.stat().st_size
            if declared > max(_RATIO_FLOOR, MAX_COMPRESSION_RATIO * size):
                raise LoaderError(
                    f"refusing {url}: it would extract to {declared} bytes, {declared // size} "
                    f"times its size of {size} bytes (over {MAX_COMPRESSION_RATIO}x: a zip bomb?)"
                )
            prefix = _beir_prefix([info.filename for info in members], url=url)
            dest.mkdir(parents=True)
            for info in members:
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                target = dest / info.filename[len(prefix) :]
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    # ZipExtFile never yields more than the declared size and checks the CRC
                    # at the end, so a corrupt member raises BadZipFile here.
                    with archive.open(info) as src, target.open("wb") as out:
                        shutil.copyfileobj(src, out, length=1 << 20)
                except OSError as exc:  # disk full, quota, permissions: the caller cleans up
                    raise LoaderError(
                        f"cannot extract {url}: writing {target.name}: "
                        f"{exc.strerror or exc} (disk full?); nothing was cached"
                    ) from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
        # BadZipFile: bad CRC or structure; zlib.error: corrupt deflate data; EOFError: truncated.
        raise LoaderError(f"{url} is a corrupt zip archive: {exc}") from exc


def _check_member_is_safe(info: zipfile.ZipInfo, *, url: str) -> None:
    name = info.filename.replace("\\", "/")  # zips made on Windows may use backslashes
    parts = PurePosixPath(name).parts
    is_absolute = name.startswith("/") or re.match(r"^[A-Za-z]:", name) is not None
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    if is_absolute or ".." in parts or is_link:
        raise LoaderError(
            f"refusing {url}: unsafe archive member {info.filename!r} (absolute path, '..' or symlink)"
        )


def _beir_prefix(names: list[str], *, url: str) -> str:
    """The folder ('' or '<dir>/') inside the zip that holds the BEIR layout."""
    present = set(names)
    candidates = {""} | {n.split("/", 1)[0] + "/" for n in names if "/" in n}
    for prefix in sorted(candidates):
        has_qrels = any(n.startswith(prefix + "qrels/") and n.endswith(".tsv") for n in names)
        if prefix + "corpus.jsonl" in present and prefix + "queries.jsonl" in present and has_qrels:
            return prefix
    raise LoaderError(
        f"{url} does not have the BEIR layout: expected [<dir>/]corpus.jsonl, queries.jsonl and "
        "qrels/<split>.tsv"
    )


# --------------------------------------------------------------------------- shared helpers


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
        with corpus_path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
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


def _parse_grade(value: object, *, where: str) -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{where}: grade {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise InvalidInput(f"{where}: grade {value!r} is not an integer")


def _check_max_queries(max_queries: int | None) -> None:
    if max_queries is not None and (
        isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1
    ):
        raise InvalidInput(f"max_queries must be an integer >= 1 or None, got {max_queries!r}")
