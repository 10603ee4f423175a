"""The one table of generator names: ``--generator``, the API and the docs read it."""

from __future__ import annotations

from typing import Any

from mlflow_rag.errors import UnknownChoice
from mlflow_rag.generate.base import Generator

DEFAULT_GENERATOR = "extractive"
# Names as users write them; ``openai:<model>`` takes any model name after the prefix.
GENERATORS: tuple[str, ...] = ("extractive", "openai:<model>")


def get_generator(spec: str, **options: Any) -> Generator:
    """The generator ``spec`` names, built with ``options``; an unknown name is one error
    listing :data:`GENERATORS`."""
    from mlflow_rag.generate.openai_chat import PREFIX

    if spec == "extractive":
        from mlflow_rag.generate.extractive import ExtractiveGenerator

        return ExtractiveGenerator(**options)
    if isinstance(spec, str) and spec.startswith(PREFIX) and spec[len(PREFIX):].strip():
        from mlflow_rag.generate.openai_chat import OpenAIChatGenerator

        return OpenAIChatGenerator(spec[len(PREFIX):].strip(), **options)
    raise UnknownChoice("generator", spec, GENERATORS)
