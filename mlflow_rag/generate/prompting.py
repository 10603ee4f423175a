"""Prompt templates: the shipped default, rendering with checked variables, and fitting the
retrieved passages into a generator's context window.

Templates use MLflow's Prompt Registry syntax, ``{{ variable }}``. Answering supplies exactly
:data:`VARIABLES`; a template that needs another variable, or leaves out the question or the
context, is refused before any request. A context larger than the window loses whole
passages from the end (the lowest ranked), and the cut is recorded with its token counts
(:class:`Truncation`): never a silent cut. PII-marked metadata never reaches a prompt: a
passage holds chunk text, which ingest builds without PII columns, and a title read from
metadata that search returned with PII hidden.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow_rag.errors import PromptError
from mlflow_rag.generate.base import Passage
from mlflow_rag.store.checks import PII_KEY
from mlflow_rag.types import Hit

DEFAULT_PROMPT_NAME = "mlflow-rag-answer"
DEFAULT_TEMPLATE = """Answer the question from the passages below. Cite every passage you use by \
its id in square brackets, e.g. [doc-1#0]. If the passages do not answer the question, say so.

Question: {{ question }}

Passages:
{{ context }}

Answer:"""
VARIABLES = ("context", "question")
_VARIABLE = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


@dataclass(frozen=True)
class PromptTemplate:
    """A template and where it came from: a Prompt Registry name and version, or the
    shipped default (version ``shipped``) when MLflow is not used."""

    name: str
    version: str
    template: str

    @property
    def uri(self) -> str:
        return f"prompts:/{self.name}/{self.version}"


SHIPPED = PromptTemplate(DEFAULT_PROMPT_NAME, "shipped", DEFAULT_TEMPLATE)


@dataclass(frozen=True)
class Truncation:
    """Passages left out so the prompt fits: tokens before and after, the window, the ids."""

    window: int
    reserved_for_answer: int
    prompt_tokens_before: int
    prompt_tokens_after: int
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "reserved_for_answer": self.reserved_for_answer,
                "prompt_tokens_before": self.prompt_tokens_before,
                "prompt_tokens_after": self.prompt_tokens_after, "dropped": list(self.dropped)}


def template_variables(template: str) -> set[str]:
    return set(_VARIABLE.findall(template))


def check_template(template: str, *, name: str) -> str:
    """The template if it uses exactly :data:`VARIABLES`; else one error naming the
    variables it lacks or answering cannot fill."""
    used = template_variables(template)
    unknown = sorted(used - set(VARIABLES))
    missing = sorted(set(VARIABLES) - used)
    if unknown:
        raise PromptError(f"prompt {name} uses variables {unknown} that answering does not "
                          f"fill; it fills {list(VARIABLES)}")
    if missing:
        raise PromptError(f"prompt {name} lacks the variables {missing}; a prompt for answers "
                          f"must use {list(VARIABLES)} as {{{{ name }}}}")
    return template


def render(template: str, values: dict[str, str]) -> str:
    """``{{ name }}`` -> value, in one pass (a value holding braces is not rendered again)."""
    return _VARIABLE.sub(lambda m: values[m.group(1)], template)


def passages_of(hits: Sequence[Hit]) -> tuple[Passage, ...]:
    """The passages a generator sees: chunk text and a title; nothing PII-marked, even from
    hits fetched with PII included."""
    out = []
    for hit in hits:
        metadata = {k: v for k, v in hit.document_metadata.items() if k != PII_KEY}
        title = metadata.get("title")
        out.append(Passage(chunk_id=hit.chunk_id, document_id=hit.document_id, text=hit.text,
                           title=title if isinstance(title, str) else ""))
    return tuple(out)


def format_context(passages: Sequence[Passage]) -> str:
    """One passage per block, its id first: ``[chunk id] (title) text``."""
    blocks = []
    for p in passages:
        title = f"({p.title}) " if p.title and p.title != p.document_id else ""
        blocks.append(f"[{p.chunk_id}] {title}{' '.join(p.text.split())}")
    return "\n\n".join(blocks)


def fit_prompt(
    template: str, *, question: str, passages: tuple[Passage, ...], window: int | None,
    reserved: int, count_tokens: Callable[[str], int],
) -> tuple[str, tuple[Passage, ...], Truncation | None]:
    """The rendered prompt, the passages in it and the truncation made (None: none). Without
    a window nothing is cut; if even the question alone does not fit, it is an error."""
    def build(kept: tuple[Passage, ...]) -> str:
        return render(template, {"question": question, "context": format_context(kept)})

    prompt = build(passages)
    if window is None:
        return prompt, passages, None
    budget = window - reserved
    before = count_tokens(prompt)
    if before <= budget:
        return prompt, passages, None
    kept = passages
    while kept:
        kept = kept[:-1]
        prompt = build(kept)
        after = count_tokens(prompt)
        if after <= budget:
            break
    else:
        raise PromptError(
            f"the prompt without any passage is {count_tokens(prompt)} tokens; the generator's "
            f"window of {window} tokens, less {reserved} for the answer, holds {budget}")
    dropped = tuple(p.chunk_id for p in passages[len(kept):])
    return prompt, kept, Truncation(window=window, reserved_for_answer=reserved,
                                    prompt_tokens_before=before, prompt_tokens_after=after,
                                    dropped=dropped)
