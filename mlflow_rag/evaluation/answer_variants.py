"""The variants of an answer evaluation: every generator with every prompt (a generator that
reads no prompt, like ``extractive``, is one variant whatever the prompts; the prompt axis
does not apply to it, as a grid drops the axes that do not apply)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlflow_rag.errors import InvalidInput
from mlflow_rag.generate.registry import get_generator


@dataclass(frozen=True)
class AnswerVariant:
    """``prompt`` None: the shipped template (or none, for a generator that reads none)."""

    generator: str
    prompt: str | None = None

    @property
    def name(self) -> str:
        """The child run's name: ``extractive``, ``openai:gpt-4o-mini``,
        ``openai:gpt-4o-mini prompts:/qa@prod``."""
        return self.generator if self.prompt is None else f"{self.generator} {self.prompt}"


def answer_variants(generators: Sequence[str], prompts: Sequence[str | None] = (None,),
                    ) -> tuple[AnswerVariant, ...]:
    """generator x prompt, in the order given, without repeats; an unknown generator is one
    error listing the valid ones (before anything runs)."""
    if not generators:
        raise InvalidInput("no generator to evaluate; give at least one")
    prompts = list(prompts) or [None]
    out: list[AnswerVariant] = []
    for spec in generators:
        reads_prompt = get_generator(spec).uses_prompt
        for prompt in prompts if reads_prompt else [None]:
            variant = AnswerVariant(generator=spec, prompt=prompt)
            if variant not in out:
                out.append(variant)
    return tuple(out)
