"""mlflow-rag: the metadata store and evaluation harness for RAG systems, on MLflow."""

__version__ = "0.1.0"
