"""Choosing a loader for a source: by URL scheme, folder layout, glob or file extension."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.load._paths import has_glob_magic
from mlflow_rag.load.base import Loader
from mlflow_rag.load.beir import BeirLoader, is_beir_folder
from mlflow_rag.load.csv import CsvLoader
from mlflow_rag.load.directory import DirectoryLoader
from mlflow_rag.load.jsonl import JsonlLoader
from mlflow_rag.load.legacy import LegacyLoader, model_name_from_path
from mlflow_rag.load.pdf import PdfLoader
from mlflow_rag.load.text import TextLoader
from mlflow_rag.load.web import ALLOWED_SCHEMES, WebLoader

LOADERS: dict[str, type[Any]] = {
    "beir": BeirLoader,
    "csv": CsvLoader,
    "directory": DirectoryLoader,
    "jsonl": JsonlLoader,
    "legacy": LegacyLoader,
    "pdf": PdfLoader,
    "text": TextLoader,
    "web": WebLoader,
}

EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".pdf": "pdf",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".markdown": "text",
    ".html": "text",
    ".htm": "text",
}

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")


def choose_loader(source: str) -> str:
    """The LOADERS name for ``source``.

    - ``http://`` / ``https://`` URL -> ``web`` (other schemes raise UnknownChoice);
    - a glob pattern -> ``directory`` (each match dispatched by its extension);
    - a folder with ``corpus.jsonl`` -> ``beir``; any other folder -> ``directory``;
    - ``embeddings-<model>.json`` -> ``legacy``;
    - otherwise the extension (``EXTENSIONS``); an unknown one raises
      ``UnknownChoice("source type", ext, [...])``; a missing path without an extension
      raises InvalidInput.
    """
    match = _SCHEME.match(source)
    if match:
        scheme = match.group("scheme").lower()
        if scheme in ALLOWED_SCHEMES:
            return "web"
        raise UnknownChoice("URL scheme", scheme, ALLOWED_SCHEMES)
    if has_glob_magic(source):
        return "directory"
    path = Path(source)
    if path.is_dir():
        return "beir" if is_beir_folder(path) else "directory"
    if path.suffix.lower() == ".json" and model_name_from_path(path) is not None:
        return "legacy"
    ext = path.suffix.lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if not ext and not path.exists():
        # Most likely a mistyped folder: saying "unknown source type" would mislead.
        raise InvalidInput(f"No such file or folder: {source!r}")
    raise UnknownChoice(
        "source type",
        ext or path.name,
        [*EXTENSIONS, "embeddings-<model>.json", "<folder>", "<glob>", "http(s)://"],
    )


def option_names(name: str) -> list[str]:
    """The keyword options the loader ``name`` takes."""
    if name == "directory":
        return sorted(set(option_names("text")) | set(option_names("pdf")))
    return sorted(
        p.name
        for p in inspect.signature(LOADERS[name]).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def make_loader(name: str, *, options: Mapping[str, Any] | None = None) -> Loader:
    """An instance of the loader ``name`` with ``options`` (unknown ones raise UnknownChoice).

    For ``directory`` each option goes to the per-file loaders (text, pdf) that take it.
    """
    if name not in LOADERS:
        raise UnknownChoice("loader", name, LOADERS)
    options = dict(options or {})
    valid = option_names(name)
    for key in options:
        if key not in valid:
            raise UnknownChoice(f"option for the {name} loader", key, valid)
    if name == "directory":
        text = {k: v for k, v in options.items() if k in option_names("text")}
        pdf = {k: v for k, v in options.items() if k in option_names("pdf")}
        return DirectoryLoader(text=TextLoader(**text), pdf=PdfLoader(**pdf))
    loader: Loader = LOADERS[name](**options)
    return loader


def loader_for(source: str, *, options: Mapping[str, Any] | None = None) -> Loader:
    """The loader ``choose_loader(source)`` names, built with ``options``."""
    return make_loader(choose_loader(source), options=options)
