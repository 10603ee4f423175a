"""``ask`` and ``feedback``: answers from a store, and what users say of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mlflow_rag.cli.group import (
    HelpFrom,
    Names,
    check_tracking,
    echo_json,
    main,
    query_log_option,
    store_option,
    tracking_options,
)


def generators_help() -> str:
    from mlflow_rag.generate.registry import DEFAULT_GENERATOR, GENERATORS

    return (f"Answer generator: one of {', '.join(GENERATORS)} (any OpenAI-compatible chat API "
            f"through OPENAI_BASE_URL / OPENAI_API_KEY) [default: {DEFAULT_GENERATOR}].")


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """KEY=VALUE pairs, each VALUE read as JSON (a bare word stays text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}",
                                     param_hint="--generator-option")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@main.command()
@click.argument("question")
@store_option
@click.option("--generator", default="extractive", cls=HelpFrom, help_from=generators_help)
@click.option("--generator-option", "generator_options", multiple=True, metavar="KEY=VALUE",
              help="A generator option, VALUE as JSON (repeatable): extractive takes "
                   "max_sentences; openai:MODEL takes temperature, max_output_tokens, "
                   "context_window, max_retries, timeout, price_per_million=[IN,OUT].")
@click.option("--prompt", default=None,
              help="Prompt template from MLflow's Prompt Registry: prompts:/NAME@ALIAS or "
                   "prompts:/NAME/VERSION [default: the shipped one, registered on first use].")
@click.option("-k", "k", default=5, show_default=True, type=int, help="Chunks to answer from.")
@click.option("--mode", default="hybrid", show_default=True,
              type=Names("mlflow_rag.search.MODES"), help="Ranking of the retrieval.")
@click.option("--filter", "filter_json", default=None, help="JSON filter as in search.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the answer, its citations and the recorded ids as JSON.")
@click.option("--keep-answer-text", is_flag=True,
              help="Store the answer text too (redacted like the question).")
@click.option("--session-id", default=None, help="A conversation id recorded with the answer.")
@click.option("--user-id", default=None, help="A user id recorded with the answer.")
@click.option("--no-record", is_flag=True, help="Record nothing in the store.")
@tracking_options
def ask(
    question: str, store_path: Path | str, generator: str, generator_options: tuple[str, ...],
    prompt: str | None, k: int,
    mode: str, filter_json: str | None, as_json: bool, keep_answer_text: bool,
    session_id: str | None, user_id: str | None, no_record: bool, tracking_uri: str | None,
    no_track: bool, experiment: str | None,
) -> None:
    """Answer QUESTION from the store, citing the chunks it used.

    Each answer is recorded (query, retrievals, prompt, generator, tokens, cost, latency per
    stage) and, unless --no-track, is one MLflow trace. Give feedback on it with
    `mlflow-rag feedback OUTPUT_ID`.
    """
    from mlflow_rag.answer import answer
    from mlflow_rag.generate.registry import check_option_names, generator_kind, get_generator
    from mlflow_rag.search import SearchRequest
    from mlflow_rag.store.store import Store

    # Everything that can be refused is refused before the store is opened.
    SearchRequest.parse(question, k=k, mode=mode, filters=filter_json)
    options = parse_options(generator_options)
    check_option_names(generator_kind(generator), list(options))
    gen = get_generator(generator, **options)
    if not no_track:
        check_tracking(tracking_uri)
    with Store.open(store_path, read_only=no_record, mmap=no_record) as store:
        result = answer(store, question, generator=gen, prompt=prompt, k=k, mode=mode,
                        filters=filter_json, record=not no_record,
                        keep_answer_text=keep_answer_text, session_id=session_id,
                        user_id=user_id, track=not no_track, tracking_uri=tracking_uri,
                        experiment=experiment)
    if not no_track:
        from mlflow_rag.genai_tracking import flush_traces

        flush_traces()  # the trace is in the tracking store before the command returns
    if result.truncation:
        cut = result.truncation
        click.echo(f"note: the passages {', '.join(cut['dropped'])} were left out to fit the "
                   f"generator's window of {cut['window']} tokens (prompt "
                   f"{cut['prompt_tokens_before']} -> {cut['prompt_tokens_after']} tokens)",
                   err=True)
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(result.text)
    if result.citations:
        click.echo("\nSources:")
        for number, citation in enumerate(result.citations, start=1):
            title = f"  {citation.title}" if citation.title else ""
            click.echo(f"  [{number}] {citation.chunk_id}  {citation.document_id}{title}  "
                       f"{citation.source_path}")
    click.echo(f"\noutput id: {result.output_id}")


@main.command("feedback")
@click.argument("output_id")
@store_option
@click.option("--score", type=float, default=None, help="A score for the answer.")
@click.option("--thumbs", type=click.Choice(["up", "down"]), default=None,
              help="Thumbs up or down.")
@click.option("--comment", default=None, help="A comment (redacted like questions).")
@click.option("--user-id", default=None, help="Who gives the feedback.")
@query_log_option
@tracking_options
def feedback_command(
    output_id: str, store_path: Path | str, score: float | None, thumbs: str | None,
    comment: str | None, user_id: str | None, query_log: Path | None,
    tracking_uri: str | None, no_track: bool, experiment: str | None,
) -> None:
    """Record feedback on the answer OUTPUT_ID (printed by `ask`, or a served answer's
    output_id): --score or --thumbs.

    Stored in the store (in the query-log file with --query-log), and logged on the answer's
    MLflow trace unless --no-track.
    """
    from mlflow_rag.answer import feedback
    from mlflow_rag.store.store import Store

    if (score is None) == (thumbs is None):
        raise click.UsageError("give exactly one of --score or --thumbs")
    if query_log is not None:
        traced = _served_feedback(query_log, output_id, score=score, thumbs=thumbs,
                                  comment=comment, user_id=user_id, track=not no_track,
                                  tracking_uri=tracking_uri, experiment=experiment)
        click.echo(f"recorded feedback on {output_id} in {query_log}"
                   + (" (and on its trace)" if traced else ""))
        return
    with Store.open(store_path) as store:
        traced = feedback(store, output_id, score=score, thumbs=thumbs, comment=comment,
                          user_id=user_id, track=not no_track, tracking_uri=tracking_uri,
                          experiment=experiment)
    click.echo(f"recorded feedback on {output_id}" + (" (and on its trace)" if traced else ""))


def _served_feedback(query_log: Path, output_id: str, *, score: float | None,
                     thumbs: str | None, comment: str | None, user_id: str | None, track: bool,
                     tracking_uri: str | None, experiment: str | None) -> bool:
    """Feedback stored in a served model's query-log file; logged on the answer's trace too
    (when it has one and ``track``); returns whether it was."""
    from mlflow_rag.serving_log import feedback_in_file

    kind, value = ("thumbs", 1.0 if thumbs == "up" else 0.0) if thumbs else ("score", score)
    stored, trace_id = feedback_in_file(query_log, output_id, kind=kind, value=float(value or 0),
                                        comment=comment, user_id=user_id)
    if not (track and trace_id):
        return False
    from mlflow_rag.genai_tracking import log_trace_feedback

    log_trace_feedback(trace_id, value=(thumbs == "up") if thumbs else stored.value,
                       comment=stored.comment, user_id=user_id, tracking_uri=tracking_uri,
                       experiment=experiment)
    return True
