"""IdNumbers: string ids to integer codes for filter masks, exact on every path (sorted
hashes confirmed by string compare; the dict fallback for NULs, hash ties and huge ids)."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_rag.store import filter_masks
from mlflow_rag.store.filter_masks import IdNumbers

KEYS = ["doc1", "doc2", "doc1", "é/ü", "a", "doc10", "x" * 40]
WANTED = ["doc10", "missing", "a", "doc1", "", "doc100", "x" * 41, "é/ü", "a\0"]


def expected(numbers: IdNumbers, wanted: list[str]) -> list[bool]:
    known = set(KEYS)
    return [w in known for w in wanted]


def check(numbers: IdNumbers) -> None:
    assert numbers.size == len(set(KEYS))
    codes = numbers.codes.tolist()
    assert sorted(set(codes)) == list(range(numbers.size))
    by_id = dict(zip(KEYS, codes, strict=True))
    assert len(set(by_id.values())) == len(by_id)  # one code per distinct id
    got = numbers.lookup(WANTED).tolist()
    assert [g >= 0 for g in got] == expected(numbers, WANTED)
    assert [g for g, w in zip(got, WANTED, strict=True) if g >= 0] == [
        by_id[w] for w in WANTED if w in by_id]
    assert numbers.lookup([]).tolist() == []


def test_sorted_hashes_number_ids_exactly() -> None:
    numbers = IdNumbers(KEYS)
    assert numbers._numbers is None  # the array path
    check(numbers)


def test_ids_with_a_nul_take_the_dict() -> None:
    keys = ["a", "a\0"]
    numbers = IdNumbers(keys)
    assert numbers._numbers is not None
    assert numbers.lookup(["a\0", "a", "a\0\0"]).tolist()[2] == -1
    assert len(set(numbers.lookup(["a\0", "a"]).tolist())) == 2


def test_a_hash_tie_or_a_huge_array_takes_the_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filter_masks, "_hashes",
                        lambda strings: np.zeros(len(strings), dtype=np.uint64))
    check(IdNumbers(KEYS))
    monkeypatch.undo()
    monkeypatch.setattr(filter_masks, "MAX_ARRAY_BYTES", 16)
    numbers = IdNumbers(KEYS)
    assert numbers._numbers is not None
    check(numbers)


def test_no_ids() -> None:
    numbers = IdNumbers([])
    assert numbers.size == 0
    assert numbers.lookup(["a"]).tolist() == [-1]
