"""The ``mlflow-rag`` command line: argument parsing only; the work happens in the layers below.

Heavy modules (mlflow, torch) are imported inside the commands that need them, so that
``search --mode bm25``, ``stats`` or ``show`` start fast. ``group`` holds the group and the
options its commands share; each other module adds one family of commands to it.
"""

from mlflow_rag.cli import (  # noqa: F401  (registers the commands)
    answer_eval,
    answers,
    batch,
    exports,
    governance,
    ingest,
    maintain,
    models,
    query,
    report,
)
from mlflow_rag.cli.group import main

__all__ = ["main"]
