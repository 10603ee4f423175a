"""Index files whose counts disagree with the manifest or the file size never reach FAISS
(issue 16.7).

FAISS allocates what a length field claims before reading the data behind it, so one patched
field in a hash-consistent 2.5 MB index made a process reach 2.9-3.9 GB before FAISS refused
the file. ``index/layout.py`` walks the layouts the store writes first; these tests patch every
count and length field of flat, HNSW and IVF files, recompute the manifest's hashes, and open
each in a child process under a memory limit (RLIMIT_AS), so a regression fails instead of
eating the machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlflow_rag.errors import IndexCorrupt
from mlflow_rag.index.choose import choose_index
from mlflow_rag.index.layout import check_index_file
from mlflow_rag.index.vector_index import VectorIndex
from mlflow_rag.store.files import HASH_BLOCK_BYTES, block_sha256s
from mlflow_rag.store.store import Store
from tests.conftest import make_record

REPO = Path(__file__).resolve().parent.parent
DIM = 16
KINDS = {"flat": None, "hnsw": {"M": 8}, "ivf": {"nlist": 8, "nprobe": 2}}


def _built(kind: str, n: int, *, remove: np.ndarray | None = None) -> tuple[VectorIndex, bytes]:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.build(choose_index(kind, n, DIM, KINDS[kind]), DIM,
                              np.arange(1, n + 1, dtype=np.int64), vectors, generation=1)
    if remove is not None:
        index.remove(remove)
    return index, index.serialize()


def _check(index: VectorIndex, data: bytes | bytearray, **overrides: Any) -> Any:
    args: dict[str, Any] = {"kind": index.spec.kind, "dimension": DIM, "count": index.ntotal,
                            "nlist": index.spec.params.get("nlist")}
    args.update(overrides)
    return check_index_file(lambda offset, count: bytes(data[offset:offset + count]), len(data),
                            **args)


def _sparse_ivf() -> tuple[VectorIndex, bytes]:
    """An IVF index with most lists empty: FAISS writes its list sizes as sparse pairs."""
    import faiss

    index, _ = _built("ivf", 300)
    lists = faiss.extract_index_ivf(index.index).invlists
    first = np.array(faiss.rev_swig_ptr(lists.get_ids(0), lists.list_size(0)), dtype=np.int64)
    index.remove(np.setdiff1d(index.ids(), first))
    return index, index.serialize()


@pytest.mark.parametrize("case", ["flat", "hnsw", "ivf", "flat-empty", "hnsw-empty",
                                  "ivf-one", "ivf-sparse"])
def test_every_layout_the_store_writes_checks_out_and_any_patched_field_is_refused(
    case: str
) -> None:
    if case == "ivf-sparse":
        index, data = _sparse_ivf()
        assert data.count(b"sprs") >= 1
    else:
        kind, _, size = case.partition("-")
        index, data = _built(kind, {"": 300, "empty": 0, "one": 1}[size])
    layout = _check(index, data)
    assert layout.fields and all(0 <= at < len(data) for at, _ in layout.fields.values())
    for at, width in layout.fields.values():
        old = int.from_bytes(data[at:at + width], "little")
        for new in {old + 1, old ^ (1 << (8 * width - 2))}:
            patched = bytearray(data)
            patched[at:at + width] = (new % (1 << (8 * width))).to_bytes(width, "little")
            with pytest.raises(IndexCorrupt):
                _check(index, patched)
                print(f"not refused: field at {at} from {old} to {new}")  # shown on failure
    for bad in ({"count": index.ntotal + 1}, {"dimension": DIM + 1}):
        with pytest.raises(IndexCorrupt, match=r"manifest says|expected"):
            _check(index, data, **bad)
    with pytest.raises(IndexCorrupt):
        _check(index, data + b"\0")
    with pytest.raises(IndexCorrupt):
        _check(index, data[:-1])


CHILD = r"""
import json, os, resource, sys
import numpy as np
from mlflow_rag.store.store import Store

cases = json.loads(sys.argv[1])

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

def search(path, mmap):
    store = Store.open(path, read_only=True, mmap=mmap)
    try:
        hits = store.dense_search(np.ones(16), k=5)
        return [h.chunk_id for h in hits], list(store.events)
    finally:
        store.close()

for path in cases["controls"]:  # imports, BLAS and FAISS threads before the limit
    search(path, False)
    search(path, True)
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
limit = vm + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
out = {}
for label, path in cases["patched"]:
    for mmap in cases["modes"]:
        before = peak_mib()
        try:
            hits, events = search(path, mmap)
            error = None
        except BaseException as exc:
            hits, events, error = None, None, f"{type(exc).__name__}: {exc}"
        out[f"{label} mmap={mmap}"] = {"hits": hits, "events": events, "error": error,
                                       "grew_mib": peak_mib() - before}
print(json.dumps(out))
"""


def _store(root: Path, kind: str) -> Path:
    rng = np.random.default_rng(2)
    with Store.open(root, create=True) as store:
        store.ensure_model("m", DIM, index_type=kind, index_params=KINDS[kind])
        store.write([make_record(f"d{i}", [f"document {i}"], vectors=rng.normal(size=(1, DIM)))
                     for i in range(300)])
    return root


def _patch(store: Path, at: int, width: int, value: int) -> None:
    path = store / "index" / "m.faiss"
    data = bytearray(path.read_bytes())
    data[at:at + width] = value.to_bytes(width, "little")
    path.write_bytes(bytes(data))
    manifest = json.loads((store / "manifest.json").read_text())
    entry = manifest["models"]["m"]  # hash-consistent: the manifest vouches for the patch
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data),
                 block_sha256=block_sha256s(data, block=HASH_BLOCK_BYTES),
                 block_bytes=HASH_BLOCK_BYTES)
    (store / "manifest.json").write_text(json.dumps(manifest))


# A length field set to claim ~256 MiB (under the child's limit: old code touched it all) or
# ~8 GiB (over it: old code failed with a memory error, or would eat a machine without one).
PATCHES: dict[int, tuple[int, ...]] = {8: (1 << 25, 1 << 30), 4: (1 << 20, 1 << 29), 1: (2, 255)}


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, count: data[offset:offset + count]


def check_patched_fields(tmp_path: Path, *, values: slice, modes: list[bool]) -> str:
    controls: dict[str, Path] = {}
    patched: list[tuple[str, str]] = []
    for kind in KINDS:
        control = controls[kind] = _store(tmp_path / f"{kind}-control", kind)
        entry = json.loads((control / "manifest.json").read_text())["models"]["m"]
        data = (control / "index" / "m.faiss").read_bytes()
        layout = check_index_file(_reader(data), len(data), kind=kind, dimension=DIM,
                                  count=300, nlist=entry["index_params"].get("nlist"))
        for name, (at, width) in layout.fields.items():
            for value in PATCHES[width][values]:
                if int.from_bytes(data[at:at + width], "little") == value:
                    continue
                label = f"{kind}: {name} = {value}"
                copy = tmp_path / f"case{len(patched)}"
                shutil.copytree(control, copy)
                _patch(copy, at, width, value)
                patched.append((label, str(copy)))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD,
         json.dumps({"controls": [str(p) for p in controls.values()], "patched": patched,
                     "modes": modes})],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {}
    for kind, control in controls.items():
        with Store.open(control, read_only=True) as store:
            expected[kind] = [h.chunk_id for h in store.dense_search(np.ones(DIM), k=5)]
    assert len(results) == len(modes) * len(patched) >= len(modes) * 38
    for label, result in results.items():
        kind = label.split(":")[0]
        assert result["error"] is None, (label, result)
        events = " ".join(result["events"])
        # refused by the layout check (it names the file), not by FAISS running out of memory
        assert "index file:" in events, (label, events)
        assert "alloc" not in events.lower() and "memory" not in events.lower(), (label, events)
        assert result["grew_mib"] < 64, (label, result)
        if kind != "hnsw":  # HNSW search is approximate; flat and IVF rebuilt are the same
            assert result["hits"] == expected[kind], label
    return (f"{len(patched)} patched fields x {len(modes)} (read{', mmap' * (len(modes) > 1)}): "
            "all refused before FAISS read them; largest peak RSS growth "
            f"{max(r['grew_mib'] for r in results.values())} MiB")


def test_a_patched_count_or_length_never_makes_faiss_allocate(tmp_path: Path) -> None:
    """Each field set to claim ~256 MiB (old code: +116-129 MiB of RSS for the flat codes and
    id map) or, for 1- and 4-byte fields, the other value of PATCHES."""
    check_patched_fields(tmp_path, values=slice(0, 1), modes=[False])


@pytest.mark.slow
def test_every_patched_count_or_length_in_read_and_mmap_opens(tmp_path: Path) -> None:
    """Both values of every field (the ~8 GiB claims hit std::bad_alloc under the child's
    limit before the fix), read and memory-mapped."""
    print(check_patched_fields(tmp_path, values=slice(None), modes=[False, True]))


def test_the_layout_check_reads_through_the_store_on_every_open(tmp_path: Path) -> None:
    """The ordinary path: an undamaged file of each kind loads without a rebuild."""
    for kind in KINDS:
        root = _store(tmp_path / kind, kind)
        with Store.open(root, read_only=True) as store:
            assert store.dense_search(np.ones(DIM), k=3) and store.events == []

