"""The opt-in audit log through the CLI on a store that already holds data (issue 15): who,
what and when of deletes, erasures, purges, exports and principal searches, on both backends."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from click.testing import CliRunner

from mlflow_rag.cli import main
from tests.test_governance_cli import write_root


def run(*args: str, ok: bool = True, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    if ok:
        assert result.exit_code == 0, result.output
        return result.exit_code, result.stdout
    return result.exit_code, result.output


def entries(store: str, *extra: str) -> list[dict[str, object]]:
    _, out = run("audit", "--store", store, "--json", *extra)
    return list(json.loads(out))


def test_the_audit_log_records_who_did_what_when_only_once_enabled(store_location: str,
                                                                   tmp_path: Path) -> None:
    root = write_root(tmp_path / "docs", "t", 6)
    store = store_location
    run("ingest", str(root), "--store", store, "--embedder", "tfidf", "--no-track")
    _, out = run("audit", "--store", store)
    assert "the audit log is off" in out
    run("delete", "t0.txt", "--store", store)  # off: not recorded
    assert entries(store) == []

    _, out = run("audit", "--store", store, "--enable")
    assert "turned on" in out
    run("--user", "alice", "delete", "t1.txt", "--store", store)
    code, _ = run("--user", "alice", "delete", "nope.txt", "--store", store, ok=False)
    assert code == 1  # rolled back with its entry
    run("forget", "t2.txt", "--store", store, env={"MLFLOW_RAG_USER": "bob"})
    run("search", "payroll review", "--store", store, "--principal", "carol", "--groups",
        "hr", "--json")
    run("search", "payroll review", "--store", store, "--json")  # no principal: not audited
    run("--user", "dave", "export", str(tmp_path / "out"), "--store", store, "--format", "jsonl")
    run("--user", "erin", "purge-queries", "--store", store, "--older-than-days", "30")

    log = entries(store)
    assert [(e["user"], e["action"]) for e in log][1:] == [
        ("alice", "delete"), ("bob", "forget"), (getpass.getuser(), "search"),
        ("dave", "export"), ("erin", "purge-queries")]
    assert log[0]["action"] == "audit-on"
    assert log[1]["detail"] == {"document_id": "t1.txt"}
    assert "t2.txt" not in json.dumps(log[2]) and log[2]["detail"]["documents"] == 1
    search = log[3]["detail"]
    assert search["principal"] == "carol" and search["groups"] == ["hr"]
    assert search["documents"] and "payroll" not in json.dumps(log[3])
    assert log[4]["detail"]["rows"]["documents"] == 3
    assert [e["at"] for e in log] == sorted(e["at"] for e in log)
    _, text = run("audit", "--store", store)
    assert "alice delete" in text and "erin purge-queries" in text
    assert entries(store, "--since", "2999-01-01") == []
    assert len(entries(store, "--since", str(log[3]["at"]))) == 3
    code, out = run("audit", "--store", store, "--since", "yesterday", ok=False)
    assert code == 1 and "'yesterday'" in out and out.count("\n") == 1

    # retention: purge-queries leaves the audit alone unless --audit; the purge is an entry
    run("purge-queries", "--store", store, "--older-than-days", "0")
    assert len(entries(store)) == 7
    _, out = run("purge-queries", "--store", store, "--older-than-days", "0", "--audit")
    assert "and 8 audit entries" in out  # its own purge-queries entry too
    [purged] = entries(store)
    assert purged["action"] == "purge-audit" and purged["detail"]["deleted"] == 8

    run("--user", "frank", "audit", "--store", store, "--disable")
    run("delete", "t3.txt", "--store", store)
    log = entries(store)
    assert [(e["user"], e["action"]) for e in log][-1] == ("frank", "audit-off")
    _, out = run("stats", "--store", store, "--json")
    assert json.loads(out)["documents"] == 2
