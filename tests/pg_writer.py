"""A writer for the PostgreSQL kill and concurrency tests: follows a plan of steps on a
``postgresql://`` store through the public API, one transaction a step, until it has done
``STEPS`` of them (then exits 0) or is killed.

Usage: python -m tests.pg_writer LOCATION SEED STEPS. Prints ``begin N`` before step N and
``ack N`` after it is committed. The plan is a pure function of the seed (:func:`plan`), so
a test replays it to know what each acknowledged step left in the store, and what the step in flight at a kill
may have added: every step is one transaction, so the store must hold the state after the
last acknowledged step or after the one following it, nothing between.

A writer's documents are ``w{SEED}-b{BATCH}-{I}`` (two chunks, each vector derived from the
document, the chunk and the version), so writers of different seeds never touch each
other's documents and each vector says whose it is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np

from mlflow_rag.store.store import Store
from mlflow_rag.types import DocumentRecord
from tests.conftest import make_record

DIM = 16
DOCS_PER_BATCH = 4
MODEL = "m"

# A step: ("write", (doc ids...)) new documents at version 0; ("replace", (doc id,)) its
# next version; ("delete", (doc id,)).
Step = tuple[str, tuple[str, ...]]


def plan(seed: int) -> Iterator[Step]:
    """The writer's steps, forever: mostly new batches, some replacements and deletions."""
    rng = np.random.default_rng(seed)
    live: list[str] = []
    batch = 0
    while True:
        roll = rng.random()
        if len(live) > 2 and roll < 0.15:
            doc = live.pop(int(rng.integers(len(live))))
            yield "delete", (doc,)
        elif live and roll < 0.35:
            yield "replace", (live[int(rng.integers(len(live)))],)
        else:
            ids = tuple(f"w{seed}-b{batch}-{i}" for i in range(DOCS_PER_BATCH))
            live.extend(ids)
            batch += 1
            yield "write", ids


def apply(state: dict[str, int], step: Step) -> dict[str, int]:
    """The documents (id -> version) after ``step``."""
    kind, ids = step
    after = dict(state)
    for doc in ids:
        if kind == "write":
            after[doc] = 0
        elif kind == "replace":
            after[doc] += 1
        else:
            del after[doc]
    return after


def states(seed: int, steps: int) -> list[dict[str, int]]:
    """The state before any step, then after each of the first ``steps`` steps."""
    result: list[dict[str, int]] = [{}]
    for step, _ in zip(plan(seed), range(steps), strict=False):
        result.append(apply(result[-1], step))
    return result


def vectors(doc: str, version: int) -> np.ndarray:
    """The two chunk vectors of ``doc`` at ``version`` (unit length: exact self-match)."""
    seed = [int(part) for part in doc[1:].replace("-b", " ").replace("-", " ").split()]
    raw = np.random.default_rng([*seed, version]).normal(size=(2, DIM))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)


def texts(doc: str, version: int) -> list[str]:
    return [f"{doc} part a version {version}", f"{doc} part b version {version}"]


def record(doc: str, version: int) -> DocumentRecord:
    return make_record(doc, texts(doc, version), vectors=vectors(doc, version), model=MODEL)


def main(location: str, seed: int, steps: int) -> None:
    store = Store.open(location, create=True)
    store.ensure_model(MODEL, DIM, embedder=None, index_type="flat")
    state: dict[str, int] = {}
    flushes = np.random.default_rng([seed, 99])
    for number, step in zip(range(1, steps + 1), plan(seed), strict=False):
        kind, ids = step
        state = apply(state, step)
        print(f"begin {number}", flush=True)
        if kind == "delete":
            store.delete(ids[0], erase=False)
        else:
            store.write([record(doc, state[doc]) for doc in ids])
        print(f"ack {number}", flush=True)
        if flushes.random() < 0.3:  # persisting the cached index is a moment to die at, too
            store.flush()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
