"""What every generator takes and returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk as a generator sees it: its ids and its text (no PII fields)."""

    chunk_id: str
    document_id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class Generation:
    """A generator's answer: the text, the chunk ids it cites (first cited first), tokens in
    and out, cost in USD, the parameters it ran with and how many requests it took."""

    text: str
    citations: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    cost_usd: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)
    attempts: int = 1


@runtime_checkable
class Generator(Protocol):
    """``name`` is what ``--generator`` takes; ``context_window`` is the tokens a prompt plus
    its answer may hold (None: no limit); ``uses_prompt`` says whether ``prompt`` is read."""

    name: str
    context_window: int | None
    max_output_tokens: int
    uses_prompt: bool

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as this generator's model counts them (or a safe estimate)."""
        ...

    def params(self) -> dict[str, Any]:
        """The parameters recorded with each generation (never a key)."""
        ...

    def generate(self, *, question: str, prompt: str, passages: tuple[Passage, ...]) -> Generation:
        """Answer ``question`` from ``passages``; ``prompt`` is the rendered template."""
        ...
