"""A writer for the kill tests: writes, replaces, deletes and flushes until it is killed.

Usage: python -m tests.kill_writer STORE SEED. Prints ``ack B`` after batch B is committed.
Batch B's documents are ``s{SEED}-b{B}-{i}`` with vectors derived from (SEED, B, i), so the
test can check that every acknowledged batch is present and correct after a SIGKILL.
"""

from __future__ import annotations

import sys

import numpy as np

from mlflow_rag.store.store import Store
from tests.conftest import make_record

DIM = 16
DOCS_PER_BATCH = 10


def batch_vectors(seed: int, batch: int) -> np.ndarray:
    return np.random.default_rng([seed, batch]).normal(size=(DOCS_PER_BATCH, 2, DIM))


def batch_records(seed: int, batch: int, *, version: int = 0) -> list:
    vectors = batch_vectors(seed, batch) * (1 + version)
    return [
        make_record(f"s{seed}-b{batch}-{i}",
                    [f"seed {seed} batch {batch} doc {i} part a v{version}",
                     f"seed {seed} batch {batch} doc {i} part b v{version}"],
                    vectors=vectors[i] if version == 0 else vectors[i][::-1].copy())
        for i in range(DOCS_PER_BATCH)
    ]


def main(store_path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    store = Store.open(store_path, create=True)
    store.ensure_model("m", DIM, index_type=["flat", "flat", "hnsw", "ivf"][seed % 4])
    batch = 0
    while True:
        store.write(batch_records(seed, batch))
        if batch >= 2 and rng.random() < 0.5:  # replace an older batch's documents
            store.write(batch_records(seed, batch - 2, version=1))
        if batch >= 1 and rng.random() < 0.3:
            store.delete(f"s{seed}-b{batch - 1}-0")
        print(f"ack {batch}", flush=True)
        if rng.random() < 0.4:  # persisting index files is a moment to be killed at, too
            store.flush()
        batch += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
