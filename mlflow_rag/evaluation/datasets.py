"""Evaluation datasets: BEIR folders, the user's own questions files, and BEIR downloads.

An :class:`EvalDataset` holds queries and graded relevance judgements (qrels) that judge
*documents* by id, plus the corpus file when there is one. Its ``digest`` identifies exactly
what was evaluated, so two runs can be compared only when their digests agree.

BEIR folder (``load_beir_folder``)
    ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl`` (``{"_id", "text"}``)
    and ``qrels/<split>.tsv`` (tab-separated, header ``query-id corpus-id score``).

Questions file (``load_questions_file``, format in :mod:`mlflow_rag.evaluation.questions`),
for a user's own corpus: ``.csv`` or ``.jsonl`` rows of a question and the ids of the documents
that answer it, with optional integer grades.

``resolve_dataset`` accepts a BEIR folder, a questions file or ``beir:<name>``: the official
BEIR zip, downloaded once and cached under ``<cache>/beir/<name>/``, where ``<cache>`` is the
``cache_dir`` argument, else ``$MLFLOW_RAG_CACHE_DIR``, else ``~/.cache/mlflow-rag``. The
download location is ``$MLFLOW_RAG_BEIR_URL`` (or ``base_url``) + ``/<name>.zip``.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.beir_download import (
    BEIR_BASE_URL,
    BEIR_PUBLIC_DATASETS,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    cached_beir_folder,
)
from mlflow_rag.evaluation.beir_download import DEFAULT_MAX_EXTRACTED_BYTES as DEFAULT_MAX_EXTRACTED_BYTES
from mlflow_rag.evaluation.beir_download import DEFAULT_MAX_MEMBERS as DEFAULT_MAX_MEMBERS
from mlflow_rag.evaluation.beir_download import ENV_BEIR_URL as ENV_BEIR_URL
from mlflow_rag.evaluation.beir_download import ENV_CACHE_DIR as ENV_CACHE_DIR
from mlflow_rag.evaluation.beir_download import cache_root as cache_root
from mlflow_rag.evaluation.beir_folder import load_beir_folder as load_beir_folder
from mlflow_rag.evaluation.eval_dataset import EvalDataset as EvalDataset
from mlflow_rag.evaluation.questions import load_questions_file as load_questions_file

_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
        folder = cached_beir_folder(
            name,
            url,
            cache_root=cache_root(cache_dir),
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
