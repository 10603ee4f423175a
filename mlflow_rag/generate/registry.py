"""The one table of generator names and their options: ``--generator``,
``--generator-option``, the API and the docs read it."""

from __future__ import annotations

import math
from typing import Any

from mlflow_rag.errors import InvalidInput, UnknownChoice
from mlflow_rag.generate.base import Generator

DEFAULT_GENERATOR = "extractive"
# Names as users write them; ``openai:<model>`` takes any model name after the prefix.
GENERATORS: tuple[str, ...] = ("extractive", "openai:<model>")
# The options each generator takes, with the kind of value each needs.
OPTIONS: dict[str, dict[str, str]] = {
    "extractive": {"max_sentences": "int", "max_output_tokens": "int"},
    "openai:<model>": {"temperature": "number", "max_output_tokens": "int",
                       "context_window": "int", "max_retries": "int", "timeout": "number",
                       "price_per_million": "pair"},
}


def _checked(generator: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options of the CLI and the API checked against :data:`OPTIONS` (a bad name or value
    is one error naming it); programmatic extras (``base_url``, ``sleep``...) pass through."""
    known = OPTIONS[generator]
    out = dict(options)
    for key, value in options.items():
        kind = known.get(key)
        if kind is None:
            continue
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        elif kind == "number":
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and value >= 0)
        else:
            ok = (isinstance(value, (list, tuple)) and len(value) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                          for v in value))
            value = tuple(float(v) for v in value) if ok else value
        if not ok:
            wanted = {"int": "a non-negative integer", "number": "a non-negative number",
                      "pair": "[input, output] USD per million tokens"}[kind]
            raise InvalidInput(f"generator option {key} must be {wanted}, got {value!r}")
        out[key] = value
    return out


def check_option_names(generator: str, names: list[str]) -> None:
    """Option names given on the command line must be the generator's."""
    known = OPTIONS[generator]
    for name in names:
        if name not in known:
            raise UnknownChoice(f"option of generator {generator}", name, known)


def get_generator(spec: str, **options: Any) -> Generator:
    """The generator ``spec`` names, built with ``options``; an unknown name is one error
    listing :data:`GENERATORS`."""
    from mlflow_rag.generate.openai_chat import PREFIX

    if spec == "extractive":
        from mlflow_rag.generate.extractive import ExtractiveGenerator

        return ExtractiveGenerator(**_checked("extractive", options))
    if isinstance(spec, str) and spec.startswith(PREFIX) and spec[len(PREFIX):].strip():
        from mlflow_rag.generate.openai_chat import OpenAIChatGenerator

        return OpenAIChatGenerator(spec[len(PREFIX):].strip(),
                                   **_checked("openai:<model>", options))
    raise UnknownChoice("generator", spec, GENERATORS)


def generator_kind(spec: str) -> str:
    """The :data:`GENERATORS` entry of a spec (``openai:gpt-4o`` -> ``openai:<model>``)."""
    if spec.startswith("openai:") and spec[len("openai:"):].strip():
        return "openai:<model>"
    if spec in GENERATORS:
        return spec
    raise UnknownChoice("generator", spec, GENERATORS)
