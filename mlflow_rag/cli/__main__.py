"""``python -m mlflow_rag.cli``."""

from mlflow_rag.cli import main

main()
