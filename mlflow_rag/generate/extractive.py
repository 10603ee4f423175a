"""``extractive``: the offline answerer. It picks the sentences of the retrieved passages that
share the most (rarest) words with the question and cites each by its chunk id.

Deterministic: the same question and passages give the same answer byte for byte (ties go to
the better-ranked passage, then the earlier sentence). No model, no network, no cost.
"""

from __future__ import annotations

import math
import re
from typing import Any

from mlflow_rag.generate.base import Generation, Passage

NAME = "extractive"
NO_ANSWER = "No sentence of the retrieved passages answers the question."
_WORD = re.compile(r"\w+")
# Sentence ends: ., ! or ? followed by space, or a line break (CSV rows, lists).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Words that carry no topic: matching them says nothing about an answer.
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how i in is it its me my of on "
    "or our that the their there these this those to was we were what when where which who "
    "whom why will with you your about any".split()
)


def words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def count_tokens(text: str) -> int:
    """Words and punctuation marks: at least the tokens most tokenizers cut English into."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


class ExtractiveGenerator:
    """The best ``max_sentences`` sentences by idf-weighted overlap with the question."""

    name = NAME
    context_window: int | None = None
    uses_prompt = False

    def __init__(self, *, max_sentences: int = 3, max_output_tokens: int = 256) -> None:
        self.max_sentences = max_sentences
        self.max_output_tokens = max_output_tokens

    def count_tokens(self, text: str) -> int:
        return count_tokens(text)

    def params(self) -> dict[str, Any]:
        return {"max_sentences": self.max_sentences}

    def generate(self, *, question: str, prompt: str, passages: tuple[Passage, ...]) -> Generation:
        asked = set(words(question))
        candidates: list[tuple[int, int, str, str, set[str]]] = []
        for rank, passage in enumerate(passages):
            for position, sentence in enumerate(sentences(passage.text)):
                candidates.append((rank, position, passage.chunk_id, sentence, set(words(sentence))))
        # idf over the candidate sentences: a word every sentence has ranks nothing.
        total = len(candidates)
        frequency: dict[str, int] = {}
        for *_, terms in candidates:
            for term in terms & asked:
                frequency[term] = frequency.get(term, 0) + 1
        scored = []
        for rank, position, chunk_id, sentence, terms in candidates:
            shared = terms & asked
            if not shared:
                continue
            score = sum(math.log(1 + total / frequency[t]) for t in shared)
            score /= math.sqrt(max(len(terms), 1))  # a long sentence matches by volume alone
            scored.append((-score, rank, position, chunk_id, sentence))
        chosen = sorted(scored)[: self.max_sentences]
        input_tokens = sum(count_tokens(p.text) for p in passages) + count_tokens(question)
        if not chosen:
            return Generation(text=NO_ANSWER, citations=(), input_tokens=input_tokens,
                              output_tokens=count_tokens(NO_ANSWER), params=self.params())
        # In reading order: passage rank, then position, as the evidence was retrieved.
        chosen.sort(key=lambda item: (item[1], item[2]))
        text = " ".join(f"{sentence} [{chunk_id}]" for _, _, _, chunk_id, sentence in chosen)
        cited = tuple(dict.fromkeys(chunk_id for _, _, _, chunk_id, _ in chosen))
        return Generation(text=text, citations=cited, input_tokens=input_tokens,
                          output_tokens=count_tokens(text), params=self.params())
