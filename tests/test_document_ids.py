"""Document ids across sources: same-named files of different folders never replace each other
silently; the same folder or file re-ingested (from anywhere) is the same documents."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlflow_rag.errors import IdCollision, InvalidInput, LoaderError, RagError
from mlflow_rag.ingest import IngestOptions, ingest
from mlflow_rag.store.store import Store
from mlflow_rag.types import IngestReport
from tests.hash_embedder import HashEmbedder

REPO = Path(__file__).resolve().parent.parent


def folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text, encoding="utf-8")
    return path


def run_ingest(sources: list[str], store: Store, **options: Any) -> IngestReport:
    return ingest(sources, store, options=IngestOptions(**options), embedder=HashEmbedder(),
                  progress=False)


@pytest.fixture
def two_corpora(tmp_path: Path) -> tuple[Path, Path]:
    first = folder(tmp_path / "corpus", {"notes.txt": "Bees make honey in the spring.",
                                         "other.txt": "Cats sleep all afternoon."})
    second = folder(tmp_path / "corpus2", {"notes.txt": "Whales sing in the cold ocean.",
                                           "more.txt": "Dogs fetch sticks by the lake."})
    return first, second


def test_same_named_file_from_another_folder_is_refused_and_nothing_is_written(
    tmp_path: Path, two_corpora: tuple[Path, Path]
) -> None:
    first, second = two_corpora
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest([str(first)], store)
        generation = store.stats().generation
        with pytest.raises(IdCollision) as caught:
            run_ingest([str(second)], store)
        message = str(caught.value)
        # names the id, both files and both ways out
        assert "'notes.txt'" in message
        assert str(first / "notes.txt") in message and str(second / "notes.txt") in message
        assert "--id-prefix corpus2/" in message and "--overwrite" in message
        assert store.get_document("notes.txt").raw_text == "Bees make honey in the spring."
        assert store.stats().generation == generation  # not even more.txt landed
        assert store.stats().documents == 2


def test_id_prefix_keeps_both_documents(tmp_path: Path, two_corpora: tuple[Path, Path]) -> None:
    first, second = two_corpora
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest([str(first)], store)
        report = run_ingest([str(second)], store, id_prefix="corpus2/")
        assert (report.documents_new, report.documents_updated) == (2, 0)
        assert (store.get_document("notes.txt").raw_text or "").startswith("Bees")
        assert (store.get_document("corpus2/notes.txt").raw_text or "").startswith("Whales")
        assert store.get_document("corpus2/notes.txt").chunks[0].id == "corpus2/notes.txt#0"
        again = run_ingest([str(second)], store, id_prefix="corpus2/")
        assert (again.documents_new, again.documents_unchanged) == (0, 2)


def test_overwrite_says_they_are_the_same_documents(tmp_path: Path, two_corpora: tuple[Path, Path]) -> None:
    first, second = two_corpora
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest([str(first)], store)
        report = run_ingest([str(second)], store, overwrite=True)
        assert (report.documents_new, report.documents_updated) == (1, 1)
        doc = store.get_document("notes.txt")
        assert (doc.raw_text or "").startswith("Whales")
        assert doc.source_path == str(second / "notes.txt")


@pytest.mark.parametrize("prefix", ["   ", "a\x00b", "a\nb"])
def test_bad_id_prefix_is_a_clear_error(tmp_path: Path, two_corpora: tuple[Path, Path], prefix: str) -> None:
    with Store.open(tmp_path / "s", create=True) as store, pytest.raises(InvalidInput, match="id prefix"):
        run_ingest([str(two_corpora[0])], store, id_prefix=prefix)


def test_same_folder_from_another_working_directory_is_the_same_documents(
    tmp_path: Path, two_corpora: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = two_corpora
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    with Store.open(tmp_path / "s", create=True) as store:
        monkeypatch.chdir(tmp_path)
        run_ingest(["corpus"], store)
        assert store.get_document("notes.txt").source_path == str(first / "notes.txt")  # absolute
        monkeypatch.chdir(tmp_path / "elsewhere" / "deeper")
        again = run_ingest(["../../corpus/"], store)
        assert (again.documents_new, again.documents_unchanged) == (0, 2)
        (first / "notes.txt").write_text("Bees make honey in the spring and summer.")
        changed = run_ingest([os.path.relpath(first)], store)
        assert (changed.documents_new, changed.documents_updated, changed.documents_unchanged) == (0, 1, 1)


def test_one_file_named_by_two_paths_is_one_document(
    tmp_path: Path, two_corpora: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = two_corpora
    monkeypatch.chdir(first)
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest(["notes.txt"], store)
        monkeypatch.chdir(tmp_path)
        again = run_ingest(["corpus/./notes.txt"], store)
        assert (again.documents_new, again.documents_unchanged) == (0, 1)
        # the folder and the file inside it in one command: the file is not a duplicate
        both = run_ingest(["corpus", "corpus/notes.txt"], store)
        assert (both.documents_new, both.documents_unchanged, both.documents_failed) == (1, 1, 0)
        assert store.stats().documents == 2


def test_two_folders_in_one_command_report_the_clash_with_the_way_out(
    tmp_path: Path, two_corpora: tuple[Path, Path]
) -> None:
    first, second = two_corpora
    with Store.open(tmp_path / "s", create=True) as store:
        report = run_ingest([str(first), str(second)], store)
    assert report.documents_failed == 1
    reason = report.failures[0].reason
    assert "'notes.txt'" in reason and str(first / "notes.txt") in reason and "--id-prefix" in reason


def test_moved_folder_with_unchanged_files_stays_unchanged(
    tmp_path: Path, two_corpora: tuple[Path, Path]
) -> None:
    first, _ = two_corpora
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest([str(first)], store)
        moved = first.rename(tmp_path / "renamed")
        report = run_ingest([str(moved)], store)
        assert (report.documents_new, report.documents_unchanged) == (0, 2)
        (moved / "notes.txt").write_text("A changed text after the move.")
        with pytest.raises(IdCollision, match="--overwrite"):
            run_ingest([str(moved)], store)
        assert run_ingest([str(moved)], store, overwrite=True).documents_updated == 1


def test_a_file_already_stored_under_another_id_is_reported_not_duplicated(
    tmp_path: Path, two_corpora: tuple[Path, Path]
) -> None:
    first, _ = two_corpora
    folder(first / "sub", {"deep.txt": "Owls hunt at night."})
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest([str(first)], store)  # ids notes.txt, other.txt, sub/deep.txt
        folder(first / "sub", {"new.txt": "Moles dig tunnels."})
        report = run_ingest([str(first / "sub")], store)  # would be deep.txt and new.txt
        assert (report.documents_new, report.documents_failed) == (1, 1)
        reason = report.failures[0].reason
        assert "already stored as document 'sub/deep.txt'" in reason and "mlflow-rag delete" in reason
        with pytest.raises(LoaderError, match="already stored as document"):
            run_ingest([str(first)], store, id_prefix="again/")
        assert store.stats().documents == 4


def _make_source_paths_relative(store_path: Path, base: Path) -> None:
    """What stores written before absolute source paths hold: the path as the user typed it."""
    with sqlite3.connect(store_path / "metadata.db") as conn:
        for doc_id, source_path in conn.execute("SELECT id, source_path FROM documents").fetchall():
            conn.execute("UPDATE documents SET source_path = ? WHERE id = ?",
                         (os.path.relpath(source_path, base), doc_id))


def test_a_store_written_before_keeps_its_ids_and_finds_its_documents(
    tmp_path: Path, two_corpora: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = two_corpora
    with Store.open(tmp_path / "s", create=True) as store:
        run_ingest([str(first)], store)
    _make_source_paths_relative(tmp_path / "s", tmp_path)
    monkeypatch.chdir(tmp_path)
    with Store.open(tmp_path / "s") as store:
        assert store.get_document("notes.txt").source_path == "corpus/notes.txt"
        assert run_ingest(["corpus"], store).documents_unchanged == 2
        (first / "other.txt").write_text("Cats sleep all afternoon and all night.")
        assert run_ingest(["corpus"], store).documents_updated == 1  # same file: no refusal
        with pytest.raises(IdCollision):
            run_ingest(["corpus2"], store)
        # from another folder, an unchanged old document is still unchanged
        monkeypatch.chdir(second)
        assert run_ingest([str(first)], store).documents_unchanged == 2


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_second_folder_with_the_same_file_names_is_refused_then_kept_with_a_prefix(
    tmp_path: Path, two_corpora: tuple[Path, Path]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    common = ["--store", "store", "--embedder", "tfidf", "--no-track"]
    first = _cli("ingest", "../corpus", *common, cwd=work)
    assert first.returncode == 0, first.stderr
    assert "2 new" in first.stdout
    refused = _cli("ingest", "../corpus2", *common, cwd=work)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr
    assert "notes.txt" in refused.stderr and "--id-prefix corpus2/" in refused.stderr
    shown = _cli("show", "notes.txt", "--store", "store", cwd=work)
    assert "Bees make honey" in shown.stdout  # the first folder's document is still there
    kept = _cli("ingest", "../corpus2", *common, "--id-prefix", "corpus2/", cwd=work)
    assert kept.returncode == 0, kept.stderr
    assert "2 new, 0 updated" in kept.stdout
    assert "Whales" in _cli("show", "corpus2/notes.txt", "--store", "store", cwd=work).stdout
    # the same folder named from another working directory: unchanged, no duplicates
    again = _cli("ingest", "corpus", "--store", "work/store", "--embedder", "tfidf", "--no-track",
                 cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "0 new, 0 updated, 2 unchanged" in again.stdout


def test_id_collision_is_a_rag_error() -> None:
    assert issubclass(IdCollision, RagError)


def test_a_clash_committed_while_an_ingest_waits_for_the_lock_is_still_refused(
    tmp_path: Path, two_corpora: tuple[Path, Path]
) -> None:
    """The id checks read the store under the writer lock: an ingest that waited for another
    writer sees what that writer committed (here corpus/notes.txt) and refuses to replace
    it, instead of having checked the store before the other writer landed."""
    first, second = two_corpora
    store_path = tmp_path / "s"
    with Store.open(store_path, create=True) as store:
        run_ingest([str(first / "other.txt")], store, embedder="tfidf")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with Store.open(store_path) as holder, holder.writer_lock():
        waiting = subprocess.Popen(
            [sys.executable, "-m", "mlflow_rag.cli", "ingest", str(second), "--store",
             str(store_path), "--embedder", "tfidf", "--no-track"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        line = waiting.stderr.readline() if waiting.stderr else ""
        assert "is writing to" in line  # it planned nothing yet: it waits for the lock
        run_ingest([str(first / "notes.txt")], holder, embedder="tfidf")
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 1, out
    assert err.strip().splitlines()[-1].startswith("error: 1 document id(s) already belong")
    with Store.open(store_path) as store:
        assert store.get_document("notes.txt").raw_text == "Bees make honey in the spring."
        assert store.find_documents({"source_path": str(second / "more.txt")}) == []
