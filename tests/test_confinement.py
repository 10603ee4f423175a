"""Paths taken from stored data stay inside the store or bundle (issue 16.6).

A model's slug (database), a manifest's ``index_file`` and a bundle's folders used to become
file names unchecked: a slug of ``../../x/pwn`` made ``mlflow-rag check`` write outside the
store, a manifest naming an outside file had it opened, hashed and handed to FAISS, and a
bundle whose ``index/`` was a symlink out passed ``verify_files``. Every such path now goes
through ``store.files.confined`` and resolves inside, or the open is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mlflow_rag.errors import BundleCorrupt, RagError
from mlflow_rag.store.files import HASH_BLOCK_BYTES, block_sha256s
from mlflow_rag.store.store import Store
from tests.conftest import make_record

REPO = Path(__file__).resolve().parent.parent

_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class opened_paths:
    """Every path this process opens (builtins.open, os.open) inside the block."""

    def __enter__(self) -> list[str]:
        global _opened
        _opened = []
        return _opened

    def __exit__(self, *exc: object) -> None:
        global _opened
        _opened = None


def build_store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with Store.open(path, create=True) as store:
        store.ensure_model("m", 8)
        store.write([make_record(f"d{i}", [f"document {i} about retrieval"],
                                 vectors=rng.normal(size=(1, 8))) for i in range(20)])
    return path


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlflow_rag.cli", *args], capture_output=True,
                          text=True, check=False, cwd=REPO)


@pytest.fixture
def store_path(tmp_path: Path) -> Iterator[Path]:
    yield build_store(tmp_path / "deep" / "store")


def _set_slug(store: Path, slug: str) -> None:
    conn = sqlite3.connect(store / "metadata.db")
    with conn:
        conn.execute("UPDATE models SET slug = ?", (slug,))
    conn.close()  # the last connection checkpoints and removes the WAL


@pytest.mark.parametrize("slug", ["../../x/pwn", "../pwn", "/tmp/pwn-abs", "a/b", "..", "."])
def test_a_tampered_model_slug_is_refused_and_nothing_is_written_outside(
    store_path: Path, tmp_path: Path, slug: str
) -> None:
    _set_slug(store_path, slug)
    (store_path / "manifest.json").unlink()  # forces check to rebuild and flush the index
    before = files_of(store_path)
    outside_before = {p for p in tmp_path.rglob("*") if store_path not in (p, *p.parents)}
    commands = [["check"], ["search", "retrieval", "--mode", "bm25"], ["stats"]]
    # every command for the slug; the others through check only (CI time)
    for args in commands if slug == "../../x/pwn" else commands[:1]:
        proc = cli(*args, "--store", str(store_path))
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "slug" in proc.stderr and repr(slug) in proc.stderr, proc.stderr
    outside_after = {p for p in tmp_path.rglob("*") if store_path not in (p, *p.parents)}
    assert outside_after == outside_before  # no x/pwn.faiss next to the store
    assert not Path("/tmp/pwn-abs.faiss").exists()
    after = files_of(store_path)
    assert {k: v for k, v in after.items() if k in before} == before
    with pytest.raises(RagError, match="slug"):
        Store.open(store_path, read_only=True)


def _point_manifest_at(store: Path, index_file: str, data: bytes) -> None:
    """A hash-consistent manifest naming ``index_file`` (whose bytes are ``data``)."""
    manifest = json.loads((store / "manifest.json").read_text())
    for entry in manifest["models"].values():
        entry.update(index_file=index_file, sha256=hashlib.sha256(data).hexdigest(),
                     bytes=len(data), block_sha256=block_sha256s(data, block=HASH_BLOCK_BYTES),
                     block_bytes=HASH_BLOCK_BYTES)
    (store / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "inside-but-another-name"])
def test_a_manifest_index_file_that_is_not_the_models_file_is_never_opened(
    store_path: Path, tmp_path: Path, how: str
) -> None:
    data = (store_path / "index" / "m.faiss").read_bytes()
    if how == "inside-but-another-name":
        target = store_path / "index" / "other.faiss"
        name = "index/other.faiss"
    else:
        target = tmp_path / "deep" / "outside.faiss"  # the store's own index: FAISS loads it
        name = str(target) if how == "absolute" else "../outside.faiss"
    target.write_bytes(data)
    _point_manifest_at(store_path, name, data)
    with opened_paths() as paths:
        store = Store.open(store_path, read_only=True)
        try:
            hits = store.dense_search(np.ones(8), k=3)
        finally:
            store.close()
    assert len(hits) == 3
    assert not [p for p in paths if Path(p).name == target.name], paths
    assert any("names the index file" in e for e in store.events), store.events


def _bundle(store_path: Path, tmp_path: Path) -> Path:
    with Store.open(store_path) as store:
        return store.snapshot(tmp_path / "bundle")


def _rehash_bundle(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {
        str(p.relative_to(bundle)): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                     "bytes": p.stat().st_size}
        for p in sorted(bundle.rglob("*")) if p.is_file() and p.name != "manifest.json"
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_bundle_whose_index_folder_links_outside_is_refused(
    store_path: Path, tmp_path: Path
) -> None:
    bundle = _bundle(store_path, tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.move(bundle / "index", outside)  # same bytes, so every recorded hash still matches
    (bundle / "index").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleCorrupt, match="leads outside"):
        Store.open(bundle, immutable=True, verify_files=True)


def test_a_bundle_naming_a_system_file_as_its_index_is_refused(
    store_path: Path, tmp_path: Path
) -> None:
    """The issue's case: ``index -> /etc`` and the manifest naming ``index/hostname``."""
    bundle = _bundle(store_path, tmp_path)
    system = tmp_path / "etc"
    system.mkdir()
    (system / "hostname").write_text("host\n")
    shutil.rmtree(bundle / "index")
    (bundle / "index").symlink_to(system, target_is_directory=True)
    data = (system / "hostname").read_bytes()
    _point_manifest_at(bundle, "index/hostname", data)
    _rehash_bundle(bundle)
    with opened_paths() as paths, pytest.raises(BundleCorrupt, match="outside"):
        Store.open(bundle, immutable=True, verify_files=True)
    assert str(system / "hostname") not in paths and "index/hostname" not in " ".join(paths)


def test_a_symlink_out_of_a_bundles_models_folder_is_refused(
    store_path: Path, tmp_path: Path
) -> None:
    bundle = _bundle(store_path, tmp_path)
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "s3cr3t"}')
    (bundle / "models" / "m").mkdir(parents=True)
    (bundle / "models" / "m" / "state.json").symlink_to(secret)
    with pytest.raises(BundleCorrupt, match="leads outside"):
        Store.open(bundle, immutable=True, verify_files=True)


@pytest.mark.parametrize("folder", ["index", "models"])
def test_a_live_store_whose_folders_link_outside_is_refused_in_one_line(
    store_path: Path, tmp_path: Path, folder: str
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if (store_path / folder).exists():
        shutil.rmtree(store_path / folder)
    (store_path / folder).symlink_to(outside, target_is_directory=True)
    (outside / ".m.faiss.1.tmp").write_bytes(b"not ours")  # a flush would delete "stale" temps
    proc = cli("check", "--store", str(store_path))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "leads outside" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in outside.iterdir()) == [".m.faiss.1.tmp"]
