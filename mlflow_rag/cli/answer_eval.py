"""``evaluate-answers``: every generator x prompt on a question/answer set, as MLflow runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlflow_rag.cli.answers import generators_help, parse_options
from mlflow_rag.cli.group import (
    EXPERIMENT_HELP,
    TRACKING_URI_HELP,
    HelpFrom,
    Names,
    check_tracking,
    echo_json,
    main,
    store_option,
)


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@main.command("evaluate-answers")
@click.option("--dataset", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Question/answer set: a .jsonl file, one {id, question, reference_answer, "
                   "relevant_ids} a line (evaluations/speakers_qa.jsonl).")
@store_option
@click.option("--generators", default="extractive", cls=HelpFrom,
              help_from=lambda: "Comma-separated generators, one variant each. "
                                + generators_help())
@click.option("--prompts", default=None,
              help="Comma-separated prompts from MLflow's Prompt Registry (prompts:/NAME@ALIAS, "
                   "prompts:/NAME/VERSION): each generator that reads a prompt is evaluated "
                   "with each [default: the shipped prompt].")
@click.option("--generator-option", "generator_options", multiple=True, metavar="KEY=VALUE",
              help="A generator option for every generator, VALUE as JSON (repeatable).")
@click.option("-k", "k", default=5, show_default=True, type=int,
              help="Chunks to answer from; retrieval recall and nDCG are at this k.")
@click.option("--mode", "modes", multiple=True, default=("hybrid",), show_default=True,
              type=Names("mlflow_rag.search.MODES"),
              help="Ranking of the retrieval; repeat it to compare modes (each a variant).")
@click.option("--judge", default=None,
              help="Also run MLflow's LLM judges (groundedness, relevance, sufficiency, "
                   "correctness) on this model, e.g. openai:/gpt-4o-mini [default: none].")
@click.option("--tracking-uri", default=None, help=TRACKING_URI_HELP)
@click.option("--experiment", default=None, help=EXPERIMENT_HELP)
@click.option("--run-name", default=None, help="The parent run's name.")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def evaluate_answers_command(
    dataset: Path, store_path: Path | str, generators: str, prompts: str | None,
    generator_options: tuple[str, ...], k: int, modes: tuple[str, ...], judge: str | None,
    tracking_uri: str | None, experiment: str | None, run_name: str | None, as_json: bool,
) -> None:
    """Answer every question of --dataset with every generator x prompt and score the answers.

    One MLflow parent run, one child run per variant, each an `mlflow.genai.evaluate` with a
    trace per question: exact match and token F1 against the reference answer, citation
    precision/recall against the relevant documents, retrieval recall@k and nDCG@k. Nothing
    is recorded in the store.
    """
    from mlflow_rag.evaluation.answer_set import load_qa_set
    from mlflow_rag.evaluation.answer_variants import answer_variants
    from mlflow_rag.generate.registry import check_option_names, generator_kind
    from mlflow_rag.search import SearchRequest
    from mlflow_rag.store.store import Store

    # Everything that can be refused is refused before a run starts.
    for mode in modes:
        SearchRequest.parse("probe", k=k, mode=mode)
    items = load_qa_set(dataset)
    options = parse_options(generator_options)
    names = _names(generators)
    for name in names:
        check_option_names(generator_kind(name), list(options))
    variants = answer_variants(names, _names(prompts) if prompts else [None], modes)
    check_tracking(tracking_uri)
    from mlflow_rag.answer_eval_tracking import evaluate_answers

    with Store.open(store_path, read_only=True) as store:
        outcome = evaluate_answers(store, items, variants, k=k, judge=judge,
                                   dataset=str(dataset), generator_options=options,
                                   tracking_uri=tracking_uri, experiment=experiment,
                                   run_name=run_name)
    rows = [{"variant": v.variant.name, "run_id": v.run_id,
             **{name.removesuffix("/mean"): round(value, 4)
                for name, value in v.metrics.items() if name.endswith("/mean")}}
            for v in outcome.variants]
    if as_json:
        echo_json({"run_id": outcome.run_id, "experiment_id": outcome.experiment_id,
                   "questions": len(items),
                   "variants": [{**row, "usage": {name: round(value, 6)
                                                  for name, value in v.usage.items()}}
                                for row, v in zip(rows, outcome.variants, strict=True)]})
        return
    _echo_scores(rows, k=k)
    for v in outcome.variants:
        usage = v.usage
        click.echo(f"{v.variant.name}: {usage.get('input_tokens/mean', 0):.0f} input and "
                   f"{usage.get('output_tokens/mean', 0):.0f} output tokens per question, "
                   f"${usage.get('cost_usd/sum', 0):.4f} in all, answer "
                   f"{usage.get('answer_ms/mean', 0):.1f} ms mean")
    click.echo(f"\n{len(items)} questions; parent run {outcome.run_id} "
               f"(experiment {outcome.experiment_id})")


def _echo_scores(rows: list[dict[str, Any]], *, k: int) -> None:
    from mlflow_rag.answer_eval_tracking import SCORES

    # The offline scores first, in a fixed order, then the judges' (with --judge).
    order = [*SCORES, f"recall_at_{k}", f"ndcg_at_{k}"]
    found = {c for row in rows for c in row} - {"variant", "run_id"}
    columns = [c for c in order if c in found] + sorted(found - set(order))
    width = max(len("variant"), *(len(str(row["variant"])) for row in rows)) + 2
    click.echo("variant".ljust(width) + "".join(c.rjust(len(c) + 2) for c in columns))
    for row in rows:
        click.echo(str(row["variant"]).ljust(width) + "".join(
            f"{row[c]:.4f}".rjust(len(c) + 2) if c in row else "-".rjust(len(c) + 2)
            for c in columns))
