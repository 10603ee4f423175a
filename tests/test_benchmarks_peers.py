"""benchmarks/peers.py runs end to end on 300 chunks with whichever peers are installed (the
``bench`` extra; CI installs it): a row per store in both tables, positive rates, exact
searches finding the exact top-10. The figures themselves are in benchmarks/RESULTS.md."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from benchmarks import peers


def installed() -> list[str]:
    names = []
    for name, peer in peers.PEERS.items():
        try:
            for module in peer.modules:
                importlib.import_module(module)
        except ImportError:
            continue
        names.append(name)
    return names


def table_rows(out: str, header: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow  # ~7 s, most of it importing lancedb and chromadb
def test_peers_benchmark_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    peers.main(["--n", "300", "--chroma-n", "200", "--queries", "5", "--reps", "1"])
    out = capsys.readouterr().out
    names = installed()
    assert {"raw", "store"} <= set(names)
    ingest = table_rows(out, "| store | chunks |")
    assert [row[0] for row in ingest] == names
    for row in ingest:
        assert float(row[3].replace(",", "")) > 0 and float(row[4]) > 0, row
    if "chroma" in names:
        assert ingest[names.index("chroma")][1] == "200 (capped: --chroma-n)"
    search = table_rows(out, "| store | search |")
    for name in names:
        kinds = {row[1] for row in search if row[0] == name}
        assert kinds == {"dense", "filtered"}, name
    for row in search:
        assert float(row[3]) > 0, row
        if row[2].startswith("exact"):
            assert float(row[6]) == 1.0, row
    last = out.splitlines()[-1]
    assert "store_ingest_ratio=" in last and "store_dense_p50_ratio=" in last


def test_a_missing_peer_is_skipped_with_the_extra_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(peers.PEERS, "lancedb",
                        dataclasses.replace(peers.PEERS["lancedb"], modules=("no_such_module_xyz",)))
    peers.main(["--n", "200", "--queries", "3", "--reps", "1", "--only", "lancedb"])
    out = capsys.readouterr().out
    assert "skipped lancedb: no_such_module_xyz not installed (pip install -e '.[bench]')" in out
    assert [row[0] for row in table_rows(out, "| store | chunks |")] == ["raw"]


def test_an_unknown_peer_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        peers.parse_args(["--only", "store,pinecone"])
    err = capsys.readouterr().err
    assert "unknown peer pinecone" in err and "lancedb" in err
