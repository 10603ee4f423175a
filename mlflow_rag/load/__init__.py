"""Loaders: sources (files, folders, globs, URLs) -> SourceDocuments, bad items reported.

``loader_for(source, options=...)`` picks the loader; every loader follows the ``Loader``
protocol of ``mlflow_rag.load.base``. pypdf and httpx are imported only when a PDF or URL is
actually loaded.
"""

from mlflow_rag.load.base import Loader
from mlflow_rag.load.beir import BeirLoader
from mlflow_rag.load.csv import CsvLoader
from mlflow_rag.load.directory import DirectoryLoader
from mlflow_rag.load.jsonl import JsonlLoader
from mlflow_rag.load.legacy import LegacyDocument, LegacyImport, LegacyLoader, read_legacy
from mlflow_rag.load.pdf import PdfLoader
from mlflow_rag.load.registry import LOADERS, choose_loader, loader_for, make_loader
from mlflow_rag.load.text import TextLoader
from mlflow_rag.load.web import WebLoader

__all__ = [
    "LOADERS",
    "BeirLoader",
    "CsvLoader",
    "DirectoryLoader",
    "JsonlLoader",
    "LegacyDocument",
    "LegacyImport",
    "LegacyLoader",
    "Loader",
    "PdfLoader",
    "TextLoader",
    "WebLoader",
    "choose_loader",
    "loader_for",
    "make_loader",
    "read_legacy",
]
