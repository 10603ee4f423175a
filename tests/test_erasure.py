"""``delete`` erases: a deleted document's words and vectors are on no byte of the store
(issue 16.10).

Deleting used to remove the rows, FTS matches and vectors while its terms stayed in the FTS5
segments (and in free pages and the WAL), so they shipped in every later bundle. The check
is on the bytes of every file under the store folder (database, WAL, shared memory, index
files, manifest, embedder state) and of a bundle made after the delete, as
tests/test_privacy.py does for query text.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.ingest import IngestOptions, ingest
from mlflow_rag.store.store import Store
from tests.hash_embedder import HashEmbedder

REPO = Path(__file__).resolve().parent.parent
SECRET_WORDS = ("quarxelbrandt", "vommitzdorfer")  # only in the document that is deleted
TARGET = "patient-0042.txt"
WORDS = ("retrieval vector index search ranking evaluation corpus chunk token embedding "
         "query store bundle model score filter document metadata").split()


def write_corpus(folder: Path, *, version: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(version)
    for i in range(40):
        words = rng.choice(WORDS, size=120)
        (folder / f"doc{i:03d}.txt").write_text(
            f"Document {i} version {version}. " + " ".join(words) + ".", encoding="utf-8")
    (folder / TARGET).write_text(
        "Confidential note. The patient " + SECRET_WORDS[0] + " was referred to doctor "
        + SECRET_WORDS[1] + " for a second opinion about the retrieval of records. "
        + " ".join(rng.choice(WORDS, size=80)) + f" {SECRET_WORDS[0]} again.",
        encoding="utf-8")
    return folder


def options(index_type: str | None = None) -> IngestOptions:
    params = {"nlist": 4, "nprobe": 2} if index_type == "ivf" else None
    return IngestOptions(embedder="hash-test", chunker="recursive", chunk_size=40,
                         chunk_overlap=0, index_type=index_type, index_params=params)


def build(root: Path, corpus: Path, index_type: str | None = None) -> str:
    """A store with some history: three ingests (FTS segments merged, pages freed and reused),
    the last re-writing changed documents. Returns the id of the document to delete."""
    with Store.open(root, create=True) as store:
        for version in (0, 1):
            write_corpus(corpus, version=version)
            ingest([str(corpus)], store, options=options(index_type), embedder=HashEmbedder(),
                   progress=False)
        docs = store.find_documents({"source_path": str(corpus / TARGET)})
        assert len(docs) == 1
        return docs[0].id


def secret_vectors(root: Path, doc_id: str) -> list[bytes]:
    with Store.open(root, read_only=True) as store:
        rows = store.backend.conn.execute(
            "SELECT e.vector FROM embeddings e JOIN chunks c ON c.id = e.chunk_id "
            "WHERE c.document_id = ?", (doc_id,)).fetchall()
    assert rows
    return [bytes(r[0]) for r in rows]


def leaks(root: Path, vectors: list[bytes]) -> list[str]:
    """Which files under ``root`` hold a secret word (UTF-8 or UTF-16) or a secret vector."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for word in SECRET_WORDS:
            for encoding in ("utf-8", "utf-16-le", "utf-16-be"):
                if word.encode(encoding) in data:
                    found.append(f"{path.relative_to(root)}: {word} ({encoding})")
        found += [f"{path.relative_to(root)}: vector {i}" for i, v in enumerate(vectors)
                  if v in data]
    return found


def test_cli_delete_leaves_no_byte_of_the_document_in_the_store_or_a_later_bundle(
    tmp_path: Path
) -> None:
    root = tmp_path / "store"
    doc_id = build(root, tmp_path / "corpus")
    vectors = secret_vectors(root, doc_id)
    assert leaks(root, vectors)  # control: the check sees the document before the delete
    proc = subprocess.run([sys.executable, "-m", "mlflow_rag.cli", "delete", doc_id, "--store",
                           str(root)], capture_output=True, text=True, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert leaks(root, vectors) == []
    with Store.open(root) as store:
        bundle = store.snapshot(tmp_path / "bundle")
        assert store.verify()["integrity_check"] == "ok"
        assert store.stats().documents == 40
        hits = store.lexical_search(f"{SECRET_WORDS[0]} retrieval", k=100)
        assert hits and doc_id not in {h.document_id for h in hits}
    assert leaks(bundle, vectors) == []
    with Store.open(bundle, immutable=True, verify_files=True) as copy:
        assert copy.stats().documents == 40


@pytest.mark.parametrize("index_type", ["flat", "hnsw", "ivf"])
def test_delete_erases_while_the_store_stays_open(tmp_path: Path, index_type: str) -> None:
    root = tmp_path / "store"
    doc_id = build(root, tmp_path / "corpus", index_type)
    vectors = secret_vectors(root, doc_id)
    with Store.open(root) as store:
        # set explicitly: SQLite's default depends on how it was built (macOS: off)
        assert store.backend.conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
        query = HashEmbedder().embed_query("retrieval ranking")
        before = [h.document_id for h in store.dense_search(query, k=10)]
        store.delete(doc_id)
        assert leaks(root, vectors) == []  # WAL checkpointed and truncated, index rewritten
        after = [h.document_id for h in store.dense_search(query, k=10)]
        assert [d for d in before if d != doc_id] == after[: len(before) - (doc_id in before)]
        report = store.verify()
        assert report["integrity_check"] == "ok" and report["models"]["hash-test"]["ids_equal"]
    assert leaks(root, vectors) == []


def test_delete_erases_the_document_from_a_fitted_tfidf_state(tmp_path: Path) -> None:
    """The TF-IDF state (vocabulary, idf) holds the deleted document's terms until the model
    is refitted: `mlflow-rag delete` refits it (the Python API: ``refit_corpus_models``)."""
    root = tmp_path / "store"
    corpus = write_corpus(tmp_path / "corpus")
    with Store.open(root, create=True) as store:
        ingest([str(corpus)], store, options=IngestOptions(embedder="tfidf"), progress=False)
        doc_id = store.find_documents({"source_path": str(corpus / TARGET)})[0].id
    assert leaks(root, []) != []  # the check can fail: the words are there before the delete
    done = subprocess.run([sys.executable, "-m", "mlflow_rag.cli", "delete", doc_id, "--store",
                           str(root)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert leaks(root, []) == []


def test_a_store_written_before_secure_delete_is_vacuumed_on_its_first_erase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages freed without secure_delete (older versions) still hold what was on them: the
    first erase of such a store (no ``free_pages_zeroed`` mark) VACUUMs it once."""
    import shutil
    import sqlite3

    from mlflow_rag.store.sqlite import connection

    def legacy_writer(conn: sqlite3.Connection) -> None:
        # as before, on an SQLite built without SQLITE_SECURE_DELETE (Debian's has it on)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA secure_delete = OFF")

    monkeypatch.setattr(connection, "configure_writer", legacy_writer)
    legacy = tmp_path / "legacy"
    doc_id = build(legacy, tmp_path / "corpus")
    drafts = tmp_path / "drafts"  # an earlier draft of the note, deleted by an older version
    drafts.mkdir()
    (drafts / "draft.txt").write_text(
        " ".join(f"{SECRET_WORDS[i % 2]} draft line {i}." for i in range(2000)), encoding="utf-8")
    with Store.open(legacy) as store:
        ingest([str(drafts)], store, options=options(), embedder=HashEmbedder(), progress=False)
        draft = store.find_documents({"source_path": str(drafts / "draft.txt")})[0].id
        with store.backend.write_transaction():  # what delete did before erasure existed
            store.backend.delete_document(draft)
    monkeypatch.undo()
    conn = sqlite3.connect(legacy / "metadata.db")
    with conn:
        conn.execute("DELETE FROM store_meta WHERE key = ?", (connection.FREE_PAGES_ZEROED,))
    conn.close()
    marked = tmp_path / "marked"  # the same store claiming its free pages are clean
    shutil.copytree(legacy, marked)
    conn = sqlite3.connect(marked / "metadata.db")
    with conn:
        conn.execute("INSERT OR REPLACE INTO store_meta(key, value) VALUES (?, ?)",
                     (connection.FREE_PAGES_ZEROED, "1"))
    conn.close()
    vectors = secret_vectors(legacy, doc_id)
    for root in (legacy, marked):
        with Store.open(root) as store:
            store.delete(doc_id)
    assert leaks(marked, vectors)  # old free pages: what the one VACUUM is for
    assert leaks(legacy, vectors) == []
    with Store.open(legacy, read_only=True) as store:
        assert store.backend.get_meta(connection.FREE_PAGES_ZEROED) == "1"


def test_a_reader_holding_a_snapshot_defers_the_wal_truncation_and_says_so(
    tmp_path: Path
) -> None:
    root = tmp_path / "store"
    doc_id = build(root, tmp_path / "corpus")
    vectors = secret_vectors(root, doc_id)
    reader = Store.open(root, read_only=True)
    try:
        reader.backend.conn.execute("BEGIN")
        reader.backend.conn.execute("SELECT count(*) FROM chunks").fetchone()  # pins a snapshot
        with Store.open(root) as store:
            store.delete(doc_id)
            assert any("erasure incomplete" in e and "read snapshot" in e for e in store.events)
            assert leaks(root, vectors)  # still in the WAL while the snapshot is held
            reader.backend.conn.execute("COMMIT")
            store.erase_deleted()  # the next erase finishes the job
            assert leaks(root, vectors) == []
    finally:
        reader.close()
