"""``lineage``: where a document, chunk, logged query or answer came from and where it went;
``audit``: the opt-in audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlflow_rag.cli.group import (
    TRACKING_URI_HELP,
    echo_json,
    main,
    query_log_option,
    store_option,
)


@main.command()
@click.argument("item_id", metavar="ID")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the chain as a JSON object.")
@click.option("--runs/--no-runs", default=False, show_default=True,
              help="Also look up the MLflow runs of the ingest runs (tag mlflow_rag.ingest_id) "
                   "on the tracking server.")
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@query_log_option
def lineage(item_id: str, store_path: Path | str, as_json: bool, runs: bool,
            tracking_uri: str | None, query_log: Path | None) -> None:
    """The chain of a document, chunk, logged query or answer (output) ID: source -> document
    versions (and the ingest runs that wrote and replaced them) -> chunks -> embeddings
    (model, version) -> logged queries that retrieved them -> answers that cited them
    (generator, prompt version, trace) -> MLflow runs (with --runs).

    For whoever holds the store: lineage is not filtered by principal.
    """
    from mlflow_rag.store.store import Store

    with Store.open(store_path, read_only=True) as store:
        if query_log is not None:
            store.logs.read_from_file(query_log)
        chain = store.governance.lineage(item_id)
    if runs:
        from mlflow_rag.tracking import runs_of_ingests

        found = runs_of_ingests([r["id"] for r in chain["ingest_runs"]], tracking_uri=tracking_uri)
        for entry in chain["ingest_runs"]:
            entry["mlflow_runs"] = found.get(entry["id"], [])
    if as_json:
        echo_json(chain)
        return
    click.echo("\n".join(format_lineage(chain)))


def format_lineage(chain: dict[str, Any]) -> list[str]:
    """The chain as indented text, source first."""
    lines = [f"{chain['kind']} {chain['id']}"]
    if chain["kind"] == "answer":
        answer = chain["answer"]
        prompt = (f", prompt {answer['prompt_name']}/{answer['prompt_version']}"
                  if answer["prompt_name"] else "")
        lines.append(f"answer at {answer['timestamp']} by {answer['generator']}{prompt}, trace "
                     f"{answer['trace_id'] or 'none'}, to query {answer['query_id']}; cites "
                     + (", ".join(c["chunk_id"] for c in answer["citations"]) or "nothing"))
    if chain["kind"] in ("query", "answer"):
        query = chain["query"]
        lines.append(f"query at {query['timestamp']} (model {query['model'] or 'none: bm25'}), "
                     f"{len(query['hits'])} hit(s): "
                     + ", ".join(f"#{h['rank']} {h['chunk_id']}" for h in query["hits"][:10]))
    for doc in chain["documents"]:
        state = "" if doc["exists"] else " (deleted)"
        source = doc["source_path"] or (doc["versions"][-1]["source_path"] if doc["versions"] else "?")
        lines.append(f"source {source}")
        lines.append(f"  document {doc['id']}{state}")
        for v in doc["versions"]:
            ended = f", {v['ended_by']} {v['replaced_at']} by {v['replaced_by'] or 'the API'}" \
                if v["replaced_at"] else ", current"
            lines.append(f"    v{v['version']} {v['content_hash']} written {v['written_at']} "
                         f"by {v['written_by'] or 'the API'}{ended}")
        for chunk in doc["chunks"]:
            models = ", ".join(f"{e['model']}@{e['model_version']} (vector {e['vector_id']})"
                               for e in chunk["embeddings"]) or "no vectors"
            lines.append(f"    chunk {chunk['id']}: {models}")
        for q in doc["queries"]:
            lines.append(f"      retrieved by query {q['query_id']} at {q['timestamp']} "
                         f"(chunk {q['chunk_id']}, rank {q['rank']}, score {q['score']:.4f})")
        for a in doc["answers"]:
            lines.append(f"      cited by answer {a['answer_id']} at {a['timestamp']} "
                         f"({a['generator']}, chunk {a['chunk_id']}, trace {a['trace_id'] or 'none'})")
    for run in chain["ingest_runs"]:
        lines.append(f"ingest {run['id']} at {run['started_at']}: {run['embedder']}@"
                     f"{run['embedder_version']}, sources {', '.join(run['sources'])}")
        for mlflow_run in run.get("mlflow_runs", []):
            lines.append(f"  MLflow run {mlflow_run['run_id']} (experiment "
                         f"{mlflow_run['experiment_id']}) {mlflow_run['run_name']}")
    return lines


@main.command("audit")
@store_option
@click.option("--enable/--disable", "enable", default=None,
              help="Turn the store's audit log on or off (off by default). Once on, every "
                   "process that deletes, forgets, purges, exports or searches as a principal "
                   "records who, what and when.")
@click.option("--since", default=None, metavar="ISO",
              help="List entries at or after this UTC date or time (2026-12-01, "
                   "2026-12-01T09:30:00+00:00).")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as a JSON list.")
def audit_command(store_path: Path | str, enable: bool | None, since: str | None,
                  as_json: bool) -> None:
    """List the audit log of the store (who, what, when), oldest first; or turn it on or off
    with --enable/--disable (each is an entry itself). Retention: purge-queries --audit."""
    from mlflow_rag.store import audit
    from mlflow_rag.store.store import Store

    if enable is not None:
        with Store.open(store_path) as store:
            changed = audit.set_enabled(store.backend, enable)
        state = "on" if enable else "off"
        click.echo(f"audit log {'turned' if changed else 'was already'} {state} for {store_path}")
        return
    start = audit.parse_since(since) if since else None  # a bad --since before the store opens
    with Store.open(store_path, read_only=True) as store:
        enabled = audit.is_enabled(store.backend)
        rows = audit.entries(store.backend, since=start)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no audit entries" + ("" if enabled else " (the audit log is off: "
                                         "mlflow-rag audit --enable)"))
    for row in rows:
        click.echo(f"{row['at']} {row['user']} {row['action']} {codec_text(row['detail'])}")


def codec_text(detail: dict[str, Any]) -> str:
    from mlflow_rag import codec

    return codec.dumps(detail)
