"""The CLI contract: JSON shapes, exit codes and one-line errors (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlflow_rag.cli import main
from mlflow_rag.store.store import Store
from tests.conftest import make_record

HIT_KEYS = {"rank", "score", "chunk_id", "document_id", "chunk_type", "text", "source_path",
            "document_metadata", "chunk_metadata"}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with Store.open(path, create=True) as store:
        store.ensure_model("m", 4)
        store.write([
            make_record("talk", ["legacy modernization with CodeConcise", "the speaker bio"],
                        vectors=np.eye(4)[:2], metadata={"country": "UK", "_pii": {"mail": "a@b.c"}}),
            make_record("other", ["vector databases at scale"], vectors=np.eye(4)[2:3],
                        metadata={"country": "Germany"}),
        ])
    return path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_search_json_has_the_contract_keys_and_hides_pii(store_dir: Path) -> None:
    code, out = run("search", "legacy modernization", "--store", str(store_dir), "--mode", "bm25",
                    "--json")
    assert code == 0, out
    hits = json.loads(out)
    assert hits[0]["document_id"] == "talk" and set(hits[0]) == HIT_KEYS
    assert "_pii" not in hits[0]["document_metadata"]
    code, out = run("search", "legacy", "--store", str(store_dir), "--mode", "bm25", "--json",
                    "--include-pii")
    assert json.loads(out)[0]["document_metadata"]["_pii"] == {"mail": "a@b.c"}


def test_search_filter_restricts_results(store_dir: Path) -> None:
    code, out = run("search", "vector legacy", "--store", str(store_dir), "--mode", "bm25", "--json",
                    "--filter", '{"country": "Germany"}')
    assert code == 0 and {h["document_id"] for h in json.loads(out)} == {"other"}


def test_list_json_hides_pii_unless_asked(store_dir: Path) -> None:
    result = CliRunner().invoke(main, ["list", "--store", str(store_dir), "--json"])
    docs = {d["id"]: d for d in json.loads(result.stdout)}
    assert result.exit_code == 0 and set(docs) == {"talk", "other"}
    assert "_pii" not in docs["talk"]["metadata"] and "a@b.c" not in result.output
    result = CliRunner().invoke(main, ["list", "--store", str(store_dir), "--json",
                                       "--include-pii"])
    assert "a@b.c" in result.stdout


def test_stats_json_has_counts_and_models(store_dir: Path) -> None:
    code, out = run("stats", "--store", str(store_dir), "--json")
    stats = json.loads(out)
    assert code == 0 and (stats["documents"], stats["chunks"], stats["embeddings"]) == (2, 3, 3)
    assert stats["models"]["m"] == {**stats["models"]["m"], "dimension": 4, "index_type": "flat",
                                    "vector_count": 3}


def test_show_then_delete_then_show_again(store_dir: Path) -> None:
    code, out = run("show", "talk", "--store", str(store_dir))
    assert code == 0 and "legacy modernization" in out and "chunk 1" in out
    assert run("delete", "talk", "--store", str(store_dir)) == (0, "deleted talk\n")
    code, out = run("show", "talk", "--store", str(store_dir))
    assert code == 1 and out.strip() == "error: no document or chunk with id 'talk' in " + str(store_dir)


def test_check_reports_a_consistent_store(store_dir: Path) -> None:
    code, out = run("check", "--store", str(store_dir))
    report = json.loads(out)
    assert code == 0 and report["integrity_check"] == "ok" and report["models"]["m"]["ids_equal"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stats", "--store", "{missing}"], "no store at"),
        (["search", "x", "--store", "{store}", "--filter", "{bad"], "filter is not valid JSON"),
        (["search", "x", "--store", "{store}", "--filter", '{"a": {"$regex": 1}}'],
         "Unknown filter operator '$regex'"),
        (["search", "x", "--store", "{store}", "--embedder", "nope"], "no embedding model 'nope'"),
        (["search", "x", "--store", "{store}", "-k", "0"], "k must be an integer"),
        (["delete", "ghost", "--store", "{store}"], "no document with id 'ghost'"),
        (["search", "x", "--store", "{foreign}"], "not a mlflow-rag store"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(store_dir: Path, tmp_path: Path, args: list[str],
                                               message: str) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("x")
    places = {"{missing}": str(tmp_path / "nope"), "{store}": str(store_dir), "{foreign}": str(foreign)}
    argv = [places.get(a, a) for a in args]
    code, out = run(*argv)
    assert code == 1
    assert out.count("\n") == 1 and out.startswith("error: ") and message in out
    assert "Traceback" not in out


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mlflow_rag.cli", "stats", "--store",
                           str(tmp_path / "nope")], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no store at") and "Traceback" not in proc.stderr


def test_choices_and_embedder_help_are_the_registries_and_help_loads_no_layer() -> None:
    from mlflow_rag.chunk.registry import CHUNKERS
    from mlflow_rag.embed.registry import DEFAULT_EMBEDDER, KINDS
    from mlflow_rag.index.choose import INDEX_TYPES
    from mlflow_rag.ingest import REFITS, IngestOptions
    from mlflow_rag.search import MODES

    ingest = {p.name: p for p in main.commands["ingest"].params}
    search = {p.name: p for p in main.commands["search"].params}
    assert ingest["chunker"].type.choices == CHUNKERS
    assert ingest["index_type"].type.choices == INDEX_TYPES
    assert ingest["refit"].type.choices == REFITS
    assert search["mode"].type.choices == MODES
    assert ingest["embedder"].default == DEFAULT_EMBEDDER == IngestOptions().embedder
    shown = CliRunner().invoke(main, ["ingest", "--help"], terminal_width=200).output
    for kind in KINDS:  # every embedder the registry knows is offered, with its note
        assert f"{kind.spec.replace('<model>', 'MODEL')} ({kind.help})" in " ".join(shown.split())
    # the choices are read when used: the bare command line imports none of the layers below
    code = ("import sys; from mlflow_rag.cli import main\n"
            "sys.argv = ['mlflow-rag', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('loaded:', [m for m in ('numpy', 'faiss') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "loaded: []" in proc.stdout


def test_search_and_stats_do_not_import_mlflow_or_torch(store_dir: Path) -> None:
    code = (
        "import sys; from mlflow_rag.cli import main\n"
        f"sys.argv = ['mlflow-rag', 'search', 'legacy', '--store', {str(store_dir)!r}, '--mode', 'bm25']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('mlflow', 'torch', 'sentence_transformers') if m in sys.modules]\n"
        "print('heavy:', bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heavy: []" in proc.stdout
