"""The variants of an answer evaluation: every retrieval mode (or retrieval variant of a grid
file, ``evaluation/variants.py``) x generator x prompt (a generator that reads no prompt,
like ``extractive``, takes no prompt axis, as a grid drops the axes that do not apply)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mlflow_rag.errors import InvalidInput
from mlflow_rag.evaluation.variants import Variant
from mlflow_rag.generate.registry import get_generator


@dataclass(frozen=True)
class AnswerVariant:
    """``prompt`` None: the shipped template (or none, for a generator that reads none)."""

    generator: str
    prompt: str | None = None
    mode: str = "hybrid"
    # Whether the name shows the mode: only when the evaluation compares modes.
    named_mode: bool = field(default=False, compare=False)
    # The retrieval variant of a grid file (chunking, embedder, index type, mode), if any.
    retrieval: Variant | None = None

    @property
    def name(self) -> str:
        """The child run's name: ``extractive``, ``openai:gpt-4o-mini prompts:/qa@prod``,
        ``extractive bm25`` (the mode when several are compared), ``extractive
        [tfidf/hybrid]`` (a grid's retrieval variant, by its label)."""
        parts = [self.generator, self.prompt or "", self.mode if self.named_mode else "",
                 f"[{self.retrieval.label or self.retrieval.key}]" if self.retrieval else ""]
        return " ".join(part for part in parts if part)


def answer_variants(generators: Sequence[str], prompts: Sequence[str | None] = (None,),
                    modes: Sequence[str] = ("hybrid",)) -> tuple[AnswerVariant, ...]:
    """mode x generator x prompt, in the order given, without repeats; an unknown generator
    is one error listing the valid ones (before anything runs)."""
    if not generators:
        raise InvalidInput("no generator to evaluate; give at least one")
    prompts = list(prompts) or [None]
    modes = list(dict.fromkeys(modes)) or ["hybrid"]
    out: list[AnswerVariant] = []
    for mode in modes:
        for spec in generators:
            reads_prompt = get_generator(spec).uses_prompt
            for prompt in prompts if reads_prompt else [None]:
                variant = AnswerVariant(generator=spec, prompt=prompt, mode=mode,
                                        named_mode=len(modes) > 1)
                if variant not in out:
                    out.append(variant)
    return tuple(out)


def answer_retrievals(retrieval: Sequence[Variant]) -> tuple[Variant, ...]:
    """The grid's retrieval variants without those that differ from an earlier one only in
    ``k``: an answer reads the evaluation's own ``k`` chunks, so they would answer alike."""
    seen: set[Variant] = set()
    out: list[Variant] = []
    for variant in retrieval:
        identity = replace(variant, k=0)
        if identity not in seen:
            seen.add(identity)
            out.append(variant)
    return tuple(out)


def grid_answer_variants(retrieval: Sequence[Variant], generators: Sequence[str],
                         prompts: Sequence[str | None] = (None,)) -> tuple[AnswerVariant, ...]:
    """Each retrieval variant of a grid (``answer_retrievals``) x generator x prompt, in that
    order."""
    return tuple(
        AnswerVariant(generator=v.generator, prompt=v.prompt, mode=grid_variant.mode,
                      retrieval=grid_variant)
        for grid_variant in answer_retrievals(retrieval)
        for v in answer_variants(generators, prompts, (grid_variant.mode,)))
